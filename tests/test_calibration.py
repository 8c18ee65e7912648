"""`fuse tune --calibrate temperature`, and calibration scores in `fuse evaluate`.

Every number is checked against the test's own numpy: the members' predictions, their
weighted combination, softmax(log(p) / T), the Brier score and the ECE.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import dense_classifier, load, predict, validated
from typer.testing import CliRunner

from fuse_cli.calibration import apply_temperature, fit_temperature
from fuse_cli.cli import app

ROWS = 1500


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def logits_of(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The last Dense layer's pre-activation outputs, in numpy."""
    h = np.maximum(x @ model.layers[0].kernel.numpy() + model.layers[0].bias.numpy(), 0)
    return h @ model.layers[1].kernel.numpy() + model.layers[1].bias.numpy()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A classifier, the same made 3 times over-confident (its last Dense scaled by 3),
    and data whose labels are drawn from its probabilities softened twice."""
    folder = tmp_path_factory.mktemp("calibration")
    base = dense_classifier(6, classes=5, seed=3)
    base.save(folder / "base.keras")
    sharp = dense_classifier(6, classes=5, seed=3)
    kernel, bias = sharp.layers[1].get_weights()
    sharp.layers[1].set_weights([3 * kernel, 3 * bias])
    sharp.save(folder / "sharp.keras")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (ROWS, 6)).astype(np.float32)
    z = logits_of(base, x)
    truth = softmax(z / 2)
    y = np.array([rng.choice(5, p=row) for row in truth])
    np.savez(folder / "data.npz", x=x, y=y)
    return {"folder": folder, "x": x, "y": y}


def tune(setup: dict[str, Any], name: str, *args: Any) -> tuple[dict[str, Any], Path]:
    folder = setup["folder"]
    out = folder / f"{name}_tuned.keras"
    result = invoke("tune", folder / f"{name}.keras", folder / f"{name}.keras", "--data",
                    folder / "data.npz", "--calibrate", "temperature", "-o", out, "--force",
                    "--json", *args)
    assert result.exit_code == 0, result.stderr
    return validated(result.stdout), out


def test_a_k_times_over_confident_member_gets_k_times_the_temperature(
    setup: dict[str, Any]
) -> None:
    base, _ = tune(setup, "base")
    sharp, out = tune(setup, "sharp")
    t_base = base["calibration"]["temperatures"][0]
    t_sharp = sharp["calibration"]["temperatures"][0]
    assert t_base == pytest.approx(2.0, rel=0.15)  # the labels were drawn at T = 2
    assert t_sharp / t_base == pytest.approx(3.0, rel=0.03)
    # out of fold, as the search; ECE and log-loss fall
    cal = sharp["calibration"]
    assert cal["scored_on"] == "out of fold" and cal["rows"] == ROWS
    assert cal["after"]["log_loss"] < cal["before"]["log_loss"]
    assert cal["after"]["ece"] < cal["before"]["ece"]
    assert cal["after"]["accuracy"] == cal["before"]["accuracy"]
    assert sharp["merge"]["formula"].startswith("softmax(log(0.5 * sharp.keras#1")


def test_the_file_computes_the_calibrated_formula_and_keeps_the_argmax(
    setup: dict[str, Any]
) -> None:
    report, out = tune(setup, "sharp", "--cv", "0")
    temperature = report["calibration"]["temperatures"][0]
    x = setup["x"][:200]
    member = predict(load(setup["folder"] / "sharp.keras"), x)[0].astype(np.float64)
    ensemble = 0.5 * member + 0.5 * member
    expected = softmax(np.log(ensemble) / temperature)
    got = predict(load(out), x)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.array_equal(got.argmax(axis=1), member.argmax(axis=1))
    # plain Keras layers and ops, nothing of fuse; the record has T
    with zipfile.ZipFile(out) as zf:
        assert "fuse" not in zf.read("config.json").decode()
        record = json.loads(zf.read("fuse.json"))
    assert record["tuning"]["calibration"]["temperatures"] == [temperature]
    assert invoke("verify", out).exit_code == 0
    shown = invoke("inspect", out).stdout
    assert f"calibrated: temperature T = {temperature:.4g}" in shown


def test_a_wrong_recorded_temperature_fails_verify(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    _, out = tune(setup, "sharp", "--cv", "0")
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "fuse.json":
                record = json.loads(data)
                record["tuning"]["calibration"]["temperatures"] = [1.0]
                data = json.dumps(record).encode()
            dst.writestr(info, data)
    result = invoke("verify", bad)
    assert result.exit_code == 6


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (20000, 4))
    y = np.array([rng.choice(4, p=row) for row in softmax(z / 2.5)])
    assert fit_temperature(softmax(z), y) == pytest.approx(2.5, rel=0.05)
    # one sigmoid unit: sigmoid(logit(p) / T)
    s = rng.normal(0, 3, (20000, 1))
    p = 1 / (1 + np.exp(-s))
    labels = (rng.random(20000) < (1 / (1 + np.exp(-s[:, 0] / 0.5)))).astype(np.int64)
    found = fit_temperature(p, labels)
    assert found == pytest.approx(0.5, rel=0.05)
    np.testing.assert_allclose(apply_temperature(p, found), 1 / (1 + np.exp(-s / found)),
                               rtol=1e-9)


def test_evaluate_reports_brier_and_ece_as_numpy_computes_them(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    folder = setup["folder"]
    plot = tmp_path / "reliability.png"
    result = invoke("evaluate", folder / "sharp.keras", "--data", folder / "data.npz",
                    "--plot", plot, "--json")
    assert result.exit_code == 0, result.stderr
    model = validated(result.stdout)["models"][0]
    p = predict(load(folder / "sharp.keras"), setup["x"])[0].astype(np.float64)
    y = setup["y"]
    onehot = np.eye(5)[y]
    assert model["brier"] == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)),
                                           rel=1e-5)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        rows = (confidence >= lo) & ((confidence < hi) | (hi == 1.0))
        if rows.any():
            ece += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    assert model["ece"] == pytest.approx(ece, rel=1e-4, abs=1e-6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibration_that_makes_no_sense_is_exit_2(
    setup: dict[str, Any], zoo: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 5), dtype=np.float32),
             y=rng.integers(0, 10, 40))
    raw = invoke("tune", zoo["linear.keras"], zoo["linear.keras"], "--data",
                 tmp_path / "d.npz", "--metric", "accuracy", "--calibrate", "temperature",
                 "-o", tmp_path / "x.keras")
    assert raw.exit_code == 2 and "needs probabilities" in raw.stderr
    soup = invoke("tune", zoo["a.keras"], zoo["b.keras"], "--mode", "soup", "--data",
                  tmp_path / "d.npz", "--calibrate", "temperature", "-o", tmp_path / "x.keras")
    assert soup.exit_code == 2 and "--calibrate applies to output ensembles" in soup.stderr
