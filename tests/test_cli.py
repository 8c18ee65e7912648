"""`fuse merge` end to end in-process: one test per exit code, message on stderr."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import dense_classifier, load, predict, validated
from typer.testing import CliRunner

from fuse_cli.cli import app


def merge(runner: CliRunner, *args: str | Path, ok: bool = False):  # noqa: ANN201
    result = runner.invoke(app, ["merge", *map(str, args)], catch_exceptions=not ok)
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def one_or_two_lines(text: str) -> bool:
    return 1 <= len(text.strip().splitlines()) <= 2


def test_exit_0_prints_the_report(runner: CliRunner, zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    result = merge(runner, zoo["a.keras"], zoo["c.h5"], "-w", "0.3", "-o", out, ok=True)
    assert "0.3 * a.keras + 0.7 * c.h5" in result.stdout
    assert "verified" in result.stdout and "max abs error" in result.stdout
    assert "│    138 │" in result.stdout  # 5*8+8 + 8*10+10 parameters per member
    assert out.is_file()


def test_json_is_one_object_on_stdout(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    result = merge(
        runner, zoo["a.keras"], zoo["b.keras"], "--weights", "1,3", "--json", "-o", out, ok=True
    )
    report = validated(result.stdout)
    assert report["ok"] is True
    assert report["weights_given"] == [1.0, 3.0]
    assert report["weights"] == pytest.approx([0.25, 0.75])
    assert [m["file"] for m in report["members"]] == ["a.keras", "b.keras"]
    assert report["members"][0]["output_shapes"] == ["(None, 10)"]
    assert report["max_abs_error"] < 1e-6
    assert report["size"] == out.stat().st_size


def test_exit_1_internal_error_without_traceback(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("fuse_cli.ensemble.build", broken)
    result = merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "x.keras")
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "--debug" in result.stderr and "Traceback" not in result.stderr
    debug = merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "x.keras", "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr
    assert not (tmp_path / "x.keras").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "0.3", "--weights", "1,2"], "either --weight or --weights"),
        (["-w", "1.5"], "--weight must be between 0 and 1; got 1.5"),
        (["--weights", "1,2,3"], "--weights has 3 values for 2 models"),
        (["--weights", "1,-2"], "--weights must be finite and >= 0; got -2.0"),
        (["--weights", "1,nan"], "--weights must be finite and >= 0; got nan"),
        (["--weights", "0,0"], "weights must not all be zero"),
        (["--weights", "1,x"], "--weights: 'x' is not a number"),
        (["--renormalize"], "--renormalize applies to --mode product only"),
        (["--name", "a/b"], "--name 'a/b'"),
    ],
)
def test_exit_2_bad_weights_and_options(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x.keras"
    result = merge(runner, zoo["a.keras"], zoo["b.keras"], *args, "-o", out)
    assert result.exit_code == 2
    assert message in result.stderr
    assert one_or_two_lines(result.stderr)
    assert not out.exists()


def test_exit_2_bad_extension_single_model_and_weight_for_three(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    result = merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "must end in .keras" in result.stderr
    result = merge(runner, zoo["a.keras"], "-o", tmp_path / "x.keras")
    assert result.exit_code == 2 and "at least 2 models; got 1" in result.stderr
    result = merge(
        runner, zoo["a.keras"], zoo["b.keras"], zoo["c.h5"], "-w", "0.5", "-o", tmp_path / "x.keras"
    )
    assert result.exit_code == 2 and "--weight A is for two models; got 3" in result.stderr
    result = merge(
        runner, zoo["a.keras"], zoo["b.keras"], "--mode", "median", "-o", tmp_path / "x.keras"
    )
    assert result.exit_code == 2


def test_exit_2_legacy_keras_selected(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    result = merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "x.keras")
    assert result.exit_code == 2
    assert "TF_USE_LEGACY_KERAS is set: fuse needs Keras 3; unset it" in result.stderr


def test_exit_3_missing_and_not_a_model(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.keras"
    result = merge(runner, zoo["a.keras"], missing, "-o", tmp_path / "x.keras")
    assert result.exit_code == 3
    assert f"{missing}: no such file" in result.stderr
    text = tmp_path / "notes.keras"
    text.write_text("not a model\n")
    result = merge(runner, zoo["a.keras"], text, "-o", tmp_path / "x.keras")
    assert result.exit_code == 3
    assert f"{text}: not a Keras model" in result.stderr
    assert one_or_two_lines(result.stderr)
    assert not (tmp_path / "x.keras").exists()


def test_exit_4_shapes_products_and_shared_inputs(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.keras"
    result = merge(runner, zoo["a.keras"], zoo["classes5.keras"], "-o", out)
    assert result.exit_code == 4
    assert "classes5.keras: output shape (None, 5) does not match a.keras: (None, 10)" in (
        result.stderr
    )
    result = merge(runner, zoo["a.keras"], zoo["linear.keras"], "-m", "product", "-o", out)
    assert result.exit_code == 4
    assert "linear.keras: product mode needs outputs >= 0" in result.stderr
    assert "'linear'" in result.stderr and "--assume-nonnegative" in result.stderr
    result = merge(runner, zoo["a.keras"], zoo["wide7.keras"], "--inputs", "shared", "-o", out)
    assert result.exit_code == 4
    assert "a.keras: (None, 5); wide7.keras: (None, 7)" in result.stderr
    result = merge(runner, zoo["a.keras"], zoo["heads_a.keras"], "-o", out)
    assert result.exit_code == 4 and "heads_a.keras: has 2 outputs" in result.stderr
    assert not out.exists()


def test_assume_nonnegative_accepts_linear_member(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """A linear layer whose outputs happen to be positive: the user vouches for it."""
    positive = keras.Sequential([keras.Input((5,)), keras.layers.Dense(10)], name="positive")
    positive.layers[0].kernel.assign(np.zeros((5, 10), np.float32))
    positive.layers[0].bias.assign(np.linspace(0.1, 1.0, 10).astype(np.float32))
    positive.save(tmp_path / "positive.keras")
    out = tmp_path / "x.keras"
    refused = merge(runner, zoo["a.keras"], tmp_path / "positive.keras", "-m", "product", "-o", out)
    assert refused.exit_code == 4
    merge(
        runner,
        zoo["a.keras"],
        tmp_path / "positive.keras",
        "-m",
        "product",
        "--assume-nonnegative",
        "-o",
        out,
        ok=True,
    )
    x = np.random.default_rng(5).random((3, 5), dtype=np.float32)
    a = predict(load(zoo["a.keras"]), x)[0]
    expected = a**0.5 * np.linspace(0.1, 1.0, 10) ** 0.5
    np.testing.assert_allclose(predict(load(out), x)[0], expected, rtol=1e-5, atol=1e-6)


def test_exit_6_assumed_nonnegative_but_negative(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """--assume-nonnegative on a member that does output negatives: x ** 0.5 is NaN."""
    linear = predict(load(zoo["linear.keras"]), np.random.default_rng(1234).random((4, 5)))[0]
    assert (linear < 0).any()  # the premise: this member's outputs go negative
    out = tmp_path / "x.keras"
    result = merge(
        runner,
        zoo["a.keras"],
        zoo["linear.keras"],
        "-m",
        "product",
        "--assume-nonnegative",
        "-o",
        out,
    )
    assert result.exit_code == 6 and "NaN" in result.stderr
    assert not out.exists()


def test_exit_5_output_rules_checked_before_loading(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    existing = tmp_path / "old.keras"
    existing.write_bytes(b"old")
    missing = tmp_path / "missing.keras"
    # The output is checked first: a missing input is not even looked at.
    result = merge(runner, zoo["a.keras"], missing, "-o", existing)
    assert result.exit_code == 5
    assert f"{existing}: already exists; pass --force to replace it" in result.stderr
    assert existing.read_bytes() == b"old"

    result = merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "no" / "x.keras")
    assert result.exit_code == 5 and "does not exist" in result.stderr

    copy = tmp_path / "a.keras"
    shutil.copy(zoo["a.keras"], copy)
    before = copy.read_bytes()
    result = merge(runner, copy, zoo["b.keras"], "-o", copy, "--force")
    assert result.exit_code == 5 and "is also the input" in result.stderr
    assert copy.read_bytes() == before


def test_force_replaces_existing_output(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    out.write_bytes(b"old")
    merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", out, "--force", ok=True)
    assert out.read_bytes()[:4] == b"PK\x03\x04"
    assert [p.name for p in tmp_path.iterdir()] == ["ens.keras"]  # no temp files left


def test_exit_6_member_yields_nan(runner: CliRunner, zoo: dict[str, Path], tmp_path: Path) -> None:
    broken = dense_classifier(5, seed=3, name="broken")
    kernel = broken.layers[0].kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    broken.save(tmp_path / "broken.keras")
    out = tmp_path / "x.keras"
    result = merge(runner, zoo["a.keras"], tmp_path / "broken.keras", "-o", out)
    assert result.exit_code == 6
    assert "NaN or inf" in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.keras"]


def test_exit_6_written_file_differs_keeps_old_output(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weighting layer that saves the wrong weight is caught by the reload."""
    original = keras.layers.Rescaling.get_config

    def wrong_config(self: keras.layers.Rescaling) -> dict:
        config = original(self)
        config["scale"] = 1.0 - config["scale"]  # 0.2 <-> 0.8: the weights swapped
        return config

    monkeypatch.setattr(keras.layers.Rescaling, "get_config", wrong_config)
    out = tmp_path / "ens.keras"
    out.write_bytes(b"previous ensemble")
    result = merge(runner, zoo["a.keras"], zoo["b.keras"], "-w", "0.2", "-o", out, "--force")
    assert result.exit_code == 6
    assert "differs from the formula by up to" in result.stderr
    assert out.read_bytes() == b"previous ensemble"  # never replaced by an unverified file
    assert [p.name for p in tmp_path.iterdir()] == ["ens.keras"]


def test_no_verify_skips_the_check(runner: CliRunner, zoo: dict[str, Path], tmp_path: Path) -> None:
    result = merge(
        runner,
        zoo["a.keras"],
        zoo["b.keras"],
        "--no-verify",
        "--json",
        "-o",
        tmp_path / "x.keras",
        ok=True,
    )
    report = validated(result.stdout)
    assert report["verified"] is False and report["max_abs_error"] is None


def test_error_json_goes_to_stdout_too(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    result = merge(
        runner, zoo["a.keras"], zoo["classes5.keras"], "--json", "-o", tmp_path / "x.keras"
    )
    assert result.exit_code == 4
    assert validated(result.stdout) == {
        "schema": "fuse/1",
        "command": "merge",
        "ok": False,
        "exit_code": 4,
        "error": "classes5.keras: output shape (None, 5) does not match a.keras: (None, 10)",
    }


def test_version(runner: CliRunner) -> None:
    from fuse_cli import __version__

    result = runner.invoke(app, ["--version"], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout.strip() == f"fuse {__version__}"


def test_merged_model_usable_after_import_only(
    zoo: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "ens.keras"
    merge(runner, zoo["a.keras"], zoo["b.keras"], "-o", out, ok=True)
    model = keras.saving.load_model(out)  # fuse_cli.layers is imported: no custom_objects
    assert model.name == "ensemble"
