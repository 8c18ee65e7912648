"""`fuse evaluate` and `fuse tune`: scores against numpy, the weight search against brute
force, a useless member, the written file, and one test per exit code."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import load, predict, provenance_of, validated
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.data import stratified_folds
from fuse_cli.ensemble import Mode
from fuse_cli.errors import DataError
from fuse_cli.search import Ensembler, cross_validate, greedy_search, grid_search

EPS = 1e-7
CLASSES = 3


def blobs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping Gaussian classes in 4-D: learnable to about 95%, not perfectly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, rows)
    x = rng.normal(size=(rows, 4)) + 3.0 * np.eye(4)[y]
    return x.astype(np.float32), y


def mlp(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
         keras.layers.Dense(CLASSES, activation="softmax")],
        name=f"mlp_{seed}",
    )


@pytest.fixture(scope="session")
def trio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two trained members, an untrained one, and the data to tune them on."""
    folder = tmp_path_factory.mktemp("tune")
    x_val, y_val = blobs(400, seed=1)
    paths = {}
    # The two trained members see different samples, so their errors differ.
    for name, seed, train_seed in (("strong", 1, 0), ("other", 2, 5), ("untrained", 3, None)):
        model = mlp(seed)
        if train_seed is not None:
            model.compile(optimizer=keras.optimizers.Adam(0.01),
                          loss="sparse_categorical_crossentropy")
            model.fit(*blobs(600, seed=train_seed), epochs=5, batch_size=64, verbose=0)
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])
    paths["val"] = folder / "val.npz"
    np.savez(paths["val"], x=x_val, y=y_val)
    paths["val_onehot"] = folder / "val_onehot.npz"
    np.savez(paths["val_onehot"], x=x_val, y=np.eye(CLASSES)[y_val])
    return paths


def run(runner: CliRunner, *args: str | Path, ok: bool = False):  # noqa: ANN201
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=not ok)
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def tune_json(runner: CliRunner, *args: str | Path) -> dict:
    return validated(run(runner, "tune", *args, "--json", ok=True).stdout)


def numpy_scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and log-loss as documented: argmax; row / row sum, clipped, -log."""
    accuracy = float(np.mean(np.argmax(p, axis=1) == y))
    q = p[np.arange(len(y)), y] / p.sum(axis=1)
    return accuracy, float(np.mean(-np.log(np.clip(q, EPS, 1 - EPS))))


def val_data(trio: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(trio["val"]) as d:
        return d["x"], d["y"]


# --- the search against brute force ---


def constructed_case() -> tuple[list[np.ndarray], np.ndarray]:
    """Two members with different, partly overlapping errors: the best mix is inside."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 300)

    def member(noise: float, signal: float) -> np.ndarray:
        z = rng.normal(scale=noise, size=(300, 4)) + signal * np.eye(4)[y]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    return [member(1.0, 1.5), member(2.0, 2.5)], y


def brute_force(members: list[np.ndarray], y: np.ndarray, mode: Mode, metric: str) -> float:
    """Every grid weight, scored one by one with the formula written out in float64 numpy.

    The documented choice: the best metric (log-losses within 1e-6 are equal), then the
    better other metric, then the weight closest to 0.5.
    """
    a, b = (m.astype(np.float64) for m in members)
    rows = []
    for i in range(101):
        w = i / 100
        p = w * a + (1 - w) * b if mode is Mode.SUM else a**w * b ** (1 - w)
        rows.append((w, *numpy_scores(p, y)))
    if metric == "accuracy":
        best = max(r[1] for r in rows)
        rows = [r for r in rows if r[1] == best]
        lowest = min(r[2] for r in rows)
        rows = [r for r in rows if r[2] <= lowest + 1e-6]
    else:
        lowest = min(r[2] for r in rows)
        rows = [r for r in rows if r[2] <= lowest + 1e-6]
        best = max(r[1] for r in rows)
        rows = [r for r in rows if r[1] == best]
    return min(rows, key=lambda r: abs(r[0] - 0.5))[0]


def test_identical_members_get_equal_weights(trio: dict[str, Path]) -> None:
    """Nothing in the data tells them apart, so the tie goes to (0.5, 0.5)."""
    x, y = val_data(trio)
    (p,) = predict(load(trio["strong"]), x)
    for metric in ("accuracy", "log_loss"):
        assert grid_search(Ensembler([p, p], y, Mode.SUM), metric).weights == [0.5, 0.5]


@pytest.mark.parametrize("mode", [Mode.SUM, Mode.PRODUCT])
@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_grid_finds_the_brute_force_weight(mode: Mode, metric: str) -> None:
    members, y = constructed_case()
    found = grid_search(Ensembler(members, y, mode), metric)  # type: ignore[arg-type]
    expected = brute_force(members, y, mode, metric)
    assert found.weights == [expected, pytest.approx(1 - expected)]
    assert 0 < expected < 1  # the case is built so that mixing pays
    assert len(found.path) == 101


def test_greedy_selection_matches_caruana_by_hand() -> None:
    """Each round adds the member that makes the running average's log-loss lowest."""
    members, y = constructed_case()
    members.append(np.full_like(members[0], 0.25))  # a constant, useless member
    result = greedy_search(Ensembler(members, y, Mode.SUM), "log_loss", rounds=10)
    counts = np.zeros(3)
    for r in range(1, 11):
        losses = []
        for k in range(3):
            w = (counts + np.eye(3)[k]) / r
            p = sum(wi * m.astype(np.float64) for wi, m in zip(w, members, strict=True))
            losses.append(numpy_scores(p, y)[1])
        counts[int(np.argmin(losses))] += 1
        np.testing.assert_allclose(result.path[r - 1], counts / r)
    assert result.weights[2] == 0


def test_scores_follow_argmax_on_ties() -> None:
    """A constant member ties every class: argmax, like Keras, picks the first."""
    y = np.array([0, 1, 2, 3, 0, 1])
    flat = np.full((6, 4), 0.25, dtype=np.float32)
    half = np.array([[0.5, 0.5, 0, 0]] * 6, dtype=np.float32)
    for p in (flat, half):
        accuracy, log_loss = Ensembler([p], y, Mode.SUM).scores([[1.0]])
        expected = numpy_scores(p.astype(np.float64), y)
        assert accuracy[0] == expected[0]
        assert log_loss[0] == pytest.approx(expected[1], rel=1e-6)


# --- cross-validation against brute force ---


def test_folds_are_disjoint_covering_fixed_and_stratified() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    folds = stratified_folds(labels, 5)
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(100))
    assert [len(f) for f in folds] == [20] * 5
    for fold in folds:
        for c, count in enumerate([50, 30, 15, 5]):
            assert abs(np.sum(labels[fold] == c) - count / 5) <= 1
    for a, b in zip(folds, stratified_folds(labels, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="--cv 5 needs at least 5 rows"):
        stratified_folds(labels[:4], 5)


@pytest.mark.parametrize("mode", [Mode.SUM, Mode.PRODUCT])
def test_cross_validation_matches_brute_force(mode: Mode) -> None:
    """Each fold: the brute-force weight on the other folds, scored in numpy on it."""
    members, y = constructed_case()
    folds = stratified_folds(y, 4)
    cv = cross_validate(members, y, folds, mode, "log_loss")
    everything = np.arange(len(y))
    found = []
    for fold, result in zip(folds, cv.folds, strict=True):
        train = np.setdiff1d(everything, fold)
        w = brute_force([m[train] for m in members], y[train], mode, "log_loss")
        a, b = (m[fold].astype(np.float64) for m in members)
        p = w * a + (1 - w) * b if mode is Mode.SUM else a**w * b ** (1 - w)
        accuracy, log_loss = numpy_scores(p, y[fold])
        assert result.weights == [pytest.approx(w), pytest.approx(1 - w)]
        assert result.rows == len(fold)
        assert result.scores.accuracy == pytest.approx(accuracy, abs=1e-12)
        assert result.scores.log_loss == pytest.approx(log_loss, rel=1e-6)
        found.append((w, log_loss))
    weights, losses = np.array(found).T
    assert cv.weights == [pytest.approx(weights.mean()), pytest.approx(1 - weights.mean())]
    assert cv.summary("log_loss") == (pytest.approx(losses.mean()), pytest.approx(losses.std()))
    assert len(set(weights)) > 1  # the folds disagree: the case tests the averaging


def test_tune_cv_report_on_real_members(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    """The default (--cv 5, every row): fold weights as brute force, held out by fold."""
    report = tune_json(runner, trio["strong"], trio["other"], "--data", trio["val"],
                       "-o", tmp_path / "e.keras")
    x, y = val_data(trio)
    members = [predict(load(trio[name]), x)[0] for name in ("strong", "other")]
    folds = stratified_folds(y, 5)
    assert report["heldout"] is None and report["cv"]["k"] == 5
    expected = []
    for fold, found in zip(folds, report["cv"]["folds"], strict=True):
        train = np.setdiff1d(np.arange(len(y)), fold)
        w = brute_force([m[train] for m in members], y[train], Mode.SUM, "log_loss")
        assert found["weights"][0] == pytest.approx(w) and found["rows"] == 80
        expected.append(w)
    assert report["weights"][0] == pytest.approx(np.mean(expected))
    losses = [f["log_loss"] for f in report["cv"]["folds"]]
    assert report["cv"]["log_loss"]["std"] == pytest.approx(np.std(losses))


# --- evaluate against numpy ---


def test_evaluate_matches_numpy(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    merged = tmp_path / "merged.keras"
    run(runner, "merge", trio["strong"], trio["untrained"], "-w", "0.3", "-o", merged, ok=True)
    x, y = val_data(trio)
    for data in (trio["val"], trio["val_onehot"]):
        result = run(runner, "evaluate", trio["strong"], trio["untrained"], merged,
                     "--data", data, "--json", ok=True)
        report = validated(result.stdout)
        assert report["rows"] == 400
        p_strong = predict(load(trio["strong"]), x)[0]
        p_untrained = predict(load(trio["untrained"]), x)[0]
        expected = [p_strong, p_untrained, 0.3 * p_strong + 0.7 * p_untrained]
        for model, p in zip(report["models"], expected, strict=True):
            accuracy, log_loss = numpy_scores(p.astype(np.float64), y)
            assert model["accuracy"] == pytest.approx(accuracy, abs=1e-12)
            assert model["log_loss"] == pytest.approx(log_loss, rel=1e-5)
    table = run(runner, "evaluate", trio["strong"], "--data", trio["val"], ok=True).stdout
    assert "strong.keras" in table and "accuracy" in table and "log-loss" in table


def test_evaluate_has_no_log_loss_for_non_probabilities(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.random((20, 5), dtype=np.float32), y=rng.integers(0, 10, 20))
    result = run(runner, "evaluate", zoo["linear.keras"], "--data", data, "--json", ok=True)
    assert validated(result.stdout)["models"][0]["log_loss"] is None
    assert "linear.keras: outputs are not probabilities" in result.stderr


def test_evaluate_sigmoid_column_matches_numpy(runner: CliRunner, tmp_path: Path) -> None:
    """One sigmoid column p is read as the classes (1 - p, p), as binary cross-entropy."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "binary.keras")
    x, y = blobs(50, seed=2)
    np.savez(tmp_path / "d.npz", x=x, y=(y == 1).astype(np.float32)[:, None])
    result = run(runner, "evaluate", tmp_path / "binary.keras", "--data", tmp_path / "d.npz",
                 "--json", ok=True)
    found = validated(result.stdout)["models"][0]
    p = predict(model, x)[0][:, 0].astype(np.float64)
    truth = y == 1
    assert found["accuracy"] == pytest.approx(np.mean((p > 0.5) == truth), abs=1e-12)
    expected = np.mean(-np.log(np.clip(np.where(truth, p, 1 - p), EPS, 1 - EPS)))
    assert found["log_loss"] == pytest.approx(expected, rel=1e-5)


# --- tune ---


def test_tune_members_with_two_inputs(runner: CliRunner, tmp_path: Path) -> None:
    """Members with several inputs take x0, x1, ... in input order."""
    paths = []
    for seed in (5, 6):
        keras.utils.set_random_seed(seed)
        wide, narrow = keras.Input((3,)), keras.Input((2,))
        joined = keras.layers.Concatenate()([wide, narrow])
        outputs = keras.layers.Dense(CLASSES, activation="softmax")(joined)
        paths.append(tmp_path / f"two_inputs_{seed}.keras")
        keras.Model([wide, narrow], outputs).save(paths[-1])
    x, y = blobs(60, seed=3)
    np.savez(tmp_path / "d.npz", x0=x[:, :3], x1=x[:, 3:4].repeat(2, axis=1), y=y)
    report = tune_json(runner, *paths, "--data", tmp_path / "d.npz", "--holdout", "0.3",
                       "-o", tmp_path / "e.keras")
    assert report["merge"]["inputs"] == "shared" and report["heldout"]["rows"] == 18
    np.savez(tmp_path / "swapped.npz", x0=x[:, 3:4].repeat(2, axis=1), x1=x[:, :3], y=y)
    result = run(runner, "tune", *paths, "--data", tmp_path / "swapped.npz",
                 "-o", tmp_path / "f.keras")
    assert result.exit_code == 2
    assert "input expects shape (None, 3), but 'x0' in swapped.npz has shape (60, 2)" in (
        result.stderr)


def test_tune_weight_matches_brute_force_on_real_members(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    """--cv 0 (--holdout is 0 by default) fits on every row, as the brute force does."""
    report = tune_json(runner, trio["strong"], trio["other"], "--data", trio["val"],
                       "--cv", "0", "-o", tmp_path / "e.keras")
    x, y = val_data(trio)
    members = [predict(load(trio[name]), x)[0] for name in ("strong", "other")]
    assert report["method"] == "grid" and report["heldout"] is None
    assert report["weights"][0] == pytest.approx(brute_force(members, y, Mode.SUM, "log_loss"))


def test_useless_member_gets_weight_near_zero(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    for names in (("strong", "untrained"), ("strong", "other", "untrained")):
        report = tune_json(runner, *(trio[n] for n in names), "--data", trio["val"],
                           "--holdout", "0.3", "-o", tmp_path / f"e{len(names)}.keras")
        assert report["method"] == ("grid" if len(names) == 2 else "greedy")
        assert report["weights"][-1] <= 0.02, report["weights"]
        held = report["heldout"]
        assert held["rows"] == 120 and report["fit"]["rows"] == 280
        best_loss = min(m["log_loss"] for m in held["members"])
        best_accuracy = max(m["accuracy"] for m in held["members"])
        assert held["ensemble"]["log_loss"] <= best_loss + 1e-9
        assert held["ensemble"]["accuracy"] >= best_accuracy


def test_tune_writes_a_verified_model_recording_the_tuning(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "tuned.h5", tmp_path / "search.png"
    result = run(runner, "tune", trio["strong"], trio["other"], "--data", trio["val"],
                 "--holdout", "0.3", "--mode", "product", "-o", out, "--plot", plot, ok=True)
    for text in ("120 held out", "exact grid", "tuned ensemble", "equal weights",
                 "verified: reloaded"):
        assert text in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")

    model = load(out)
    combine = model.get_layer("combine")
    tuning = provenance_of(out)["tuning"]
    assert tuning["metric"] == "log_loss" and tuning["method"] == "cv5-grid"
    assert tuning["cv"]["k"] == 5 and len(tuning["cv"]["folds"]) == 5
    assert tuning["data"]["file"] == "val.npz" and len(tuning["data"]["sha256"]) == 64
    assert tuning["heldout"]["rows"] == 120
    assert provenance_of(out)["weights"] == combine.coefficients
    x, _ = val_data(trio)
    members = [predict(load(trio[n]), x)[0] for n in ("strong", "other")]
    (c0, c1), (m0, m1) = combine.coefficients, (m.astype(np.float64) for m in members)
    expected = m0**c0 * m1**c1
    np.testing.assert_allclose(predict(model, x)[0], expected, rtol=1e-5, atol=1e-6)

    inspected = run(runner, "inspect", out, ok=True)
    assert "tuned:      cv5-grid on log_loss, data val.npz" in inspected.stdout
    shown = validated(run(runner, "inspect", out, "--json", ok=True).stdout)
    assert shown["models"][0]["ensemble"]["tuning"] == tuning


def test_tune_plots_the_greedy_search(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "search.svg"
    report = tune_json(runner, trio["strong"], trio["other"], trio["untrained"], "--data",
                       trio["val"], "--metric", "accuracy", "-o", tmp_path / "e.keras",
                       "--plot", plot)
    assert report["method"] == "greedy" and len(report["path"]) == 100
    assert report["plot"] == str(plot) and b"<svg" in plot.read_bytes()[:500]
    assert sum(report["weights"]) == pytest.approx(1)


# --- exit codes ---


def bad_npz(tmp_path: Path, **arrays: object) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_exit_2_data_without_labels_is_found_before_loading_models(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    data = bad_npz(tmp_path, x=np.zeros((5, 4)), labels=np.zeros(5))
    result = run(runner, "tune", trio["strong"], tmp_path / "missing.keras", "--data", data,
                 "-o", tmp_path / "e.keras")
    assert result.exit_code == 2
    assert "bad.npz: no 'y' array (the labels); found 'labels', 'x'" in result.stderr


def test_exit_2_data_shape_does_not_fit(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    data = bad_npz(tmp_path, x=np.zeros((5, 6)), y=np.zeros(5))
    for command in (["evaluate", trio["strong"]],
                    ["tune", trio["strong"], trio["other"], "-o", tmp_path / "e.keras"]):
        result = run(runner, *command, "--data", data)
        assert result.exit_code == 2
        assert ("strong.keras: input expects shape (None, 4), but 'x' in bad.npz has shape "
                "(5, 6)") in result.stderr


def test_exit_2_mismatched_lengths(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    data = bad_npz(tmp_path, x=np.zeros((5, 4)), y=np.zeros(4))
    result = run(runner, "evaluate", trio["strong"], "--data", data)
    assert result.exit_code == 2
    assert "bad.npz: 'x' has 5 rows but 'y' has 4" in result.stderr


def test_exit_2_labels_beyond_the_classes(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    data = bad_npz(tmp_path, x=np.zeros((5, 4)), y=np.array([0, 1, 2, 7, 0]))
    result = run(runner, "tune", trio["strong"], trio["other"], "--data", data,
                 "-o", tmp_path / "e.keras")
    assert result.exit_code == 2
    assert ("'y' holds class index 7, but strong.keras outputs 3 classes (expected 0 to 2)"
            in result.stderr)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--holdout", "1"], "--holdout must be at least 0 and below 1; got 1.0"),
        (["--cv", "1"], "--cv must be 0 (one search) or at least 2 folds; got 1"),
        (["--plot", "search.txt"], "must end in .png, .svg, .pdf; got '.txt'"),
        (["--batch-size", "0"], "--batch-size must be at least 1; got 0"),
        (["--renormalize"], "--renormalize applies to --mode product only"),
    ],
)
def test_exit_2_bad_options(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path, options: list[str], message: str
) -> None:
    result = run(runner, "tune", trio["strong"], trio["other"], "--data", trio["val"],
                 "-o", tmp_path / "e.keras", *options)
    assert result.exit_code == 2
    assert message in result.stderr


def test_exit_2_one_model(runner: CliRunner, trio: dict[str, Path], tmp_path: Path) -> None:
    result = run(runner, "tune", trio["strong"], "--data", trio["val"], "-o", tmp_path / "e.keras")
    assert result.exit_code == 2
    assert "an ensemble needs at least 2 models; got 1" in result.stderr


def test_exit_2_log_loss_needs_probabilities(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    data = bad_npz(tmp_path, x=rng.random((20, 5), dtype=np.float32), y=rng.integers(0, 10, 20))
    result = run(runner, "tune", zoo["a.keras"], zoo["linear.keras"], "--data", data,
                 "--allow-mixed-outputs", "-o", tmp_path / "e.keras")
    assert result.exit_code == 2
    assert "linear.keras: --metric log_loss needs probabilities" in result.stderr
    assert "use --metric accuracy" in result.stderr
    accuracy = run(runner, "tune", zoo["a.keras"], zoo["linear.keras"], "--data", data,
                   "--allow-mixed-outputs", "--metric", "accuracy", "-o", tmp_path / "e.keras",
                   ok=True)
    assert "n/a" in accuracy.stdout


def test_exit_3_data_cannot_be_read(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    text = tmp_path / "data.npz"
    text.write_text("x,y\n")
    result = run(runner, "evaluate", trio["strong"], "--data", text)
    assert result.exit_code == 3
    assert "data.npz: not an .npz archive (numpy.savez); expected arrays 'x' and 'y'" in (
        result.stderr)


def test_exit_3_model_cannot_be_loaded(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    result = run(runner, "evaluate", trio["strong"], tmp_path / "nope.keras", "--data",
                 trio["val"])
    assert result.exit_code == 3
    assert "nope.keras: no such file" in result.stderr


def test_exit_4_members_disagree(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    data = bad_npz(tmp_path, x=np.zeros((6, 5), dtype=np.float32), y=np.zeros(6))
    result = run(runner, "tune", zoo["a.keras"], zoo["classes5.keras"], "--data", data,
                 "-o", tmp_path / "e.keras")
    assert result.exit_code == 4
    assert "classes5.keras: output shape (None, 5) does not match a.keras: (None, 10)" in (
        result.stderr)


def test_exit_5_output_is_checked_before_the_data(
    runner: CliRunner, trio: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "e.keras"
    out.write_bytes(b"old")
    result = run(runner, "tune", trio["strong"], trio["other"], "--data", tmp_path / "none.npz",
                 "-o", out, "--json")
    assert result.exit_code == 5
    assert "e.keras: already exists; pass --force to replace it" in result.stderr
    assert validated(result.stdout)["exit_code"] == 5
    assert out.read_bytes() == b"old"


# --- the file people receive: members of weight 0 are left out -----------------------------


def _crafted_predictions(zoo: dict[str, Path], path: Path) -> list[Path]:
    """Predictions of three real member files on 60 rows: the first two each right on half
    the rows (so both earn weight), the third confidently wrong everywhere (weight 0)."""
    from fuse_cli.formats import sha256_of
    from fuse_cli.predictions import Predictions, save_predictions

    files = [zoo["a.keras"], zoo["b.keras"], zoo["c.h5"]]
    n = 60
    y = np.random.default_rng(0).integers(0, 10, n)
    half = np.arange(n) % 2 == 0

    def onehot(labels: np.ndarray, confidence: float) -> np.ndarray:
        p = np.full((n, 10), (1 - confidence) / 9, dtype=np.float32)
        p[np.arange(n), labels] = confidence
        return p

    outputs = [onehot(np.where(half, y, (y + 1) % 10), 0.9),
               onehot(np.where(~half, y, (y + 2) % 10), 0.9),
               onehot((y + 3) % 10, 0.99)]
    save_predictions(Predictions(path=path, y=y, outputs=outputs,
                                 files=[f.name for f in files],
                                 sha256=[sha256_of(f) for f in files]), path)
    return files


def test_members_of_weight_zero_are_left_out_of_the_file(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    predictions = tmp_path / "p.npz"
    files = _crafted_predictions(zoo, predictions)
    out = tmp_path / "tuned.keras"
    result = runner.invoke(app, ["tune", *map(str, files), "--predictions", str(predictions),
                                 "--cv", "0", "-o", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert report["weights"][2] == 0 and report["weights"][0] > 0 and report["weights"][1] > 0
    assert [m["file"] for m in report["merge"]["members"]] == ["a.keras", "b.keras"]
    assert "c.h5: weight 0: left out of" in result.stderr
    model = load(out)
    assert sorted(layer.name for layer in model.layers if layer.name.startswith("member_")) == [
        "member_0_sequential", "member_1_sequential"]
    kept = report["weights"][:2]
    expected = [w / sum(kept) for w in kept]
    x = np.random.default_rng(1).random((5, 5), dtype=np.float32)
    a, b = (predict(load(f), x)[0] for f in files[:2])
    np.testing.assert_allclose(predict(model, x)[0], expected[0] * a + expected[1] * b,
                               rtol=1e-5, atol=1e-6)
    assert [m["file"] for m in provenance_of(out)["members"]] == ["a.keras", "b.keras"]
    verified = runner.invoke(app, ["verify", str(out), *map(str, files[:2])])
    assert verified.exit_code == 0, verified.stderr

    kept_all = tmp_path / "all.keras"
    result = runner.invoke(app, ["tune", *map(str, files), "--predictions", str(predictions),
                                 "--cv", "0", "-o", str(kept_all), "--keep-zero-weights",
                                 "--json"], catch_exceptions=False)
    assert len(validated(result.stdout)["merge"]["members"]) == 3
