"""What a CI job relies on: `merge --dry-run`, the output-kind guard, the `--json` contract."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import keras
import numpy as np
import pytest
from helpers import (
    JSON_VALIDATOR,
    dense_classifier,
    load,
    predict,
    provenance_of,
    validated,
    with_provenance,
)
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.schemas import load_schema, schema_path


def fuse(runner: CliRunner, *args: str | Path, ok: bool = False):  # noqa: ANN201
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=not ok)
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def numpy_softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y.astype(np.float64) - y.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-unit members: a sigmoid score and a raw (linear) score."""
    folder = tmp_path_factory.mktemp("single")
    paths = {}
    for file_name, activation, seed in (("sig.keras", "sigmoid", 11), ("raw1.keras", None, 12)):
        model = dense_classifier(5, classes=1, seed=seed, name=file_name.split(".")[0],
                                 activation=activation)
        model.save(folder / file_name)
        paths[file_name] = folder / file_name
    return paths


# --- mixed output kinds ---------------------------------------------------------------


def test_probabilities_plus_raw_scores_is_exit_4_naming_each_file(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.keras"
    result = fuse(runner, "merge", zoo["a.keras"], zoo["linear.keras"], "-o", out, "--json")
    assert result.exit_code == 4
    message = result.stderr.strip()
    assert len(message.splitlines()) <= 2
    assert "a.keras: softmax (probabilities)" in message
    assert "linear.keras: linear (raw scores)" in message
    assert "--to-probabilities" in message and "--allow-mixed-outputs" in message
    report = validated(result.stdout)
    assert report["ok"] is False and report["exit_code"] == 4
    assert not out.exists()


def test_allow_mixed_outputs_adds_them_as_they_are(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.keras"
    fuse(runner, "merge", zoo["a.keras"], zoo["linear.keras"], "-w", "0.3", "-o", out,
         "--allow-mixed-outputs", ok=True)
    x = np.random.default_rng(3).random((6, 5), dtype=np.float32)
    a, lin = predict(load(zoo["a.keras"]), x)[0], predict(load(zoo["linear.keras"]), x)[0]
    np.testing.assert_allclose(predict(load(out), x)[0], 0.3 * a + 0.7 * lin,
                               rtol=1e-5, atol=1e-6)


def test_to_probabilities_appends_softmax_to_raw_members(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.keras"
    result = fuse(runner, "merge", zoo["a.keras"], zoo["linear.keras"], "-w", "0.25", "-o", out,
                  "--to-probabilities", "--json", ok=True)
    report = validated(result.stdout)
    assert report["formula"] == "0.25 * a.keras + 0.75 * softmax(linear.keras)"
    assert [m["to_probabilities"] for m in report["members"]] == [[], ["softmax"]]
    assert [m["output_kinds"] for m in report["members"]] == [["probabilities"], ["raw scores"]]
    assert report["max_abs_error"] < 1e-6

    x = np.random.default_rng(4).random((6, 5), dtype=np.float32)
    a, lin = predict(load(zoo["a.keras"]), x)[0], predict(load(zoo["linear.keras"]), x)[0]
    merged = predict(load(out), x)[0]
    np.testing.assert_allclose(merged, 0.25 * a + 0.75 * numpy_softmax(lin), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(merged.sum(axis=-1), 1.0, rtol=1e-5)

    provenance = provenance_of(out)
    assert provenance["to_probabilities"] == [
        {"member": 1, "file": "linear.keras", "appended": ["softmax"]}
    ]
    verified = validated(fuse(runner, "verify", out, zoo["a.keras"], zoo["linear.keras"],
                              "--json", ok=True).stdout)
    assert verified["formula_max_abs_error"] < 1e-6
    inspected = validated(fuse(runner, "inspect", out, "--json", ok=True).stdout)
    members = inspected["models"][0]["ensemble"]["members"]
    assert [m["to_probabilities"] for m in members] == [[], ["softmax"]]


def test_to_probabilities_uses_sigmoid_for_one_unit(
    runner: CliRunner, single: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.keras"
    refused = fuse(runner, "merge", single["sig.keras"], single["raw1.keras"], "-o", out)
    assert refused.exit_code == 4 and "raw1.keras: linear (raw scores)" in refused.stderr
    result = fuse(runner, "merge", single["sig.keras"], single["raw1.keras"], "-o", out,
                  "--to-probabilities", ok=True)
    assert "0.5 * sig.keras + 0.5 * sigmoid(raw1.keras)" in result.stdout
    x = np.random.default_rng(5).random((6, 5), dtype=np.float32)
    sig, raw = predict(load(single["sig.keras"]), x)[0], predict(load(single["raw1.keras"]), x)[0]
    expected = 0.5 * sig + 0.5 / (1.0 + np.exp(-raw.astype(np.float64)))
    np.testing.assert_allclose(predict(load(out), x)[0], expected, rtol=1e-5, atol=1e-6)


def test_verify_catches_a_provenance_that_hides_to_probabilities(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """The graph appends softmax but the provenance says nothing was appended: exit 6."""
    from fuse_cli.merge import MergeOptions, merge_files

    out = tmp_path / "x.keras"
    merge_files([zoo["a.keras"], zoo["linear.keras"]], out,
                MergeOptions(to_probabilities=True))
    forged = with_provenance(out, tmp_path / "forged.keras", to_probabilities=[])
    result = fuse(runner, "verify", forged)
    assert result.exit_code == 6
    assert "the provenance records --to-probabilities on members {}" in result.stderr


def test_all_raw_and_all_probability_ensembles_are_unchanged(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    raw_b = tmp_path / "raw_b.keras"
    dense_classifier(5, seed=21, name="raw_b", activation="linear").save(raw_b)
    out = tmp_path / "raw.keras"
    result = fuse(runner, "merge", zoo["linear.keras"], raw_b, "-o", out, "--json", ok=True)
    report = validated(result.stdout)
    assert report["formula"] == "0.5 * linear.keras + 0.5 * raw_b.keras"
    assert all(m["to_probabilities"] == [] for m in report["members"])
    x = np.random.default_rng(6).random((4, 5), dtype=np.float32)
    expected = 0.5 * predict(load(zoo["linear.keras"]), x)[0] + 0.5 * predict(load(raw_b), x)[0]
    np.testing.assert_allclose(predict(load(out), x)[0], expected, rtol=1e-5, atol=1e-6)
    fuse(runner, "merge", zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "p.keras", ok=True)


def test_allow_mixed_outputs_is_for_sum_mode(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    result = fuse(runner, "merge", zoo["a.keras"], zoo["b.keras"], "-m", "product",
                  "--allow-mixed-outputs", "-o", tmp_path / "x.keras")
    assert result.exit_code == 2
    assert "--allow-mixed-outputs applies to --mode sum only" in result.stderr


def test_inspect_reports_the_mixed_kind_reason(runner: CliRunner, zoo: dict[str, Path]) -> None:
    result = fuse(runner, "inspect", zoo["a.keras"], zoo["linear.keras"], "--json", ok=True)
    compatibility = validated(result.stdout)["compatibility"]
    assert compatibility["mergeable"] is False
    assert compatibility["inputs"] == "shared"
    assert "linear.keras: linear (raw scores)" in compatibility["mixed_outputs"]
    assert compatibility["reason"] == compatibility["mixed_outputs"]
    text = fuse(runner, "inspect", zoo["a.keras"], zoo["linear.keras"], ok=True).stdout
    assert "can merge: no: mixed output kinds" in text


def test_tune_applies_the_same_guard(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.random((40, 5), dtype=np.float32), y=rng.integers(0, 10, 40))
    out = tmp_path / "t.keras"
    result = fuse(runner, "tune", zoo["a.keras"], zoo["linear.keras"], "--data", data, "-o", out)
    assert result.exit_code == 4 and "linear.keras: linear (raw scores)" in result.stderr
    assert not out.exists()
    tuned = validated(fuse(runner, "tune", zoo["a.keras"], zoo["linear.keras"], "--data", data,
                           "--to-probabilities", "-o", out, "--json", ok=True).stdout)
    weight = tuned["weights"][0]
    assert tuned["merge"]["formula"].endswith("softmax(linear.keras)")
    x = rng.random((5, 5), dtype=np.float32)
    a, lin = predict(load(zoo["a.keras"]), x)[0], predict(load(zoo["linear.keras"]), x)[0]
    expected = weight * a + (1 - weight) * numpy_softmax(lin)
    np.testing.assert_allclose(predict(load(out), x)[0], expected, rtol=1e-5, atol=1e-6)


# --- merge --dry-run ------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    result = fuse(runner, "merge", zoo["a.keras"], zoo["c.h5"], "-w", "0.3", "-o", out,
                  "--export", "saved_model", "--dry-run", ok=True)
    assert "formula:  0.3 * a.keras + 0.7 * c.h5" in result.stdout
    assert f"output:   {out}" in result.stdout
    assert f"export:   {tmp_path / 'ens_saved_model'} (saved_model)" in result.stdout
    assert "inputs:   shared: (None, 5)" in result.stdout
    assert "nothing was written" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_dry_run_json(runner: CliRunner, zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    result = fuse(runner, "merge", zoo["a.keras"], zoo["wide7.keras"], "-o", out, "--dry-run",
                  "--export", "litert", "--json", ok=True)
    plan = validated(result.stdout)
    assert plan["dry_run"] is True and plan["command"] == "merge"
    assert plan["inputs"] == "separate"
    assert plan["input_shapes"] == [["(None, 5)"], ["(None, 7)"]]
    assert plan["output_shapes"] == ["(None, 10)"]
    assert [m["input_shapes"] for m in plan["members"]] == [["(None, 5)"], ["(None, 7)"]]
    assert plan["exports"] == [
        {"format": "litert", "path": str(tmp_path / "ens.tflite"), "replaces": False}
    ]
    assert plan["output"] == str(out) and plan["replaces"] is False
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing", 3, "missing.keras"),
        ("shapes", 4, "classes5.keras: output shape (None, 5) does not match"),
        ("mixed", 4, "mixed output kinds"),
        ("exists", 5, "already exists; pass --force"),
        ("weights", 2, "--weights has 3 values for 2 models"),
    ],
)
def test_dry_run_exits_as_the_merge_would(
    case: str, code: int, message: str, runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    second = {"missing": tmp_path / "missing.keras", "shapes": zoo["classes5.keras"],
              "mixed": zoo["linear.keras"]}.get(case, zoo["b.keras"])
    extra = ["--weights", "1,2,3"] if case == "weights" else []
    if case == "exists":
        out.write_bytes(b"old")
    args = ["merge", zoo["a.keras"], second, "-o", out, *extra]
    dry = fuse(runner, *args, "--dry-run", "--json")
    assert dry.exit_code == code and message in dry.stderr
    assert validated(dry.stdout)["exit_code"] == code
    real = fuse(runner, *args)
    assert real.exit_code == code
    assert out.exists() == (case == "exists")


def test_dry_run_with_force_says_it_would_replace(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    out.write_bytes(b"old")
    result = fuse(runner, "merge", zoo["a.keras"], zoo["b.keras"], "-o", out, "--force",
                  "--dry-run", ok=True)
    assert "(replaces the existing file, --force)" in result.stdout
    assert out.read_bytes() == b"old"


# --- the --json contract ----------------------------------------------------------------


def test_the_schema_is_valid_and_ships_in_the_package() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema_path().is_file() and schema_path().parent.name == "schemas"
    assert schema["properties"]["schema"] == {"const": "fuse/1"}


def test_the_schema_rejects_what_breaks_the_contract(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """The validation the tests rely on can fail: renamed, retyped or missing fields."""
    good = validated(fuse(runner, "merge", zoo["a.keras"], zoo["b.keras"], "-o",
                          tmp_path / "e.keras", "--json", ok=True).stdout)
    broken = [
        {k: v for k, v in good.items() if k != "schema"},
        {**good, "schema": "fuse/2"},
        {k: v for k, v in good.items() if k != "max_abs_error"},
        {**good, "members": [{**good["members"][0], "sha256": 7}, good["members"][1]]},
        {"schema": "fuse/1", "command": "merge", "ok": False, "exit_code": 4},
    ]
    for data in broken:
        with pytest.raises(jsonschema.ValidationError):
            JSON_VALIDATOR.validate(json.loads(json.dumps(data)))


def test_every_command_json_validates(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """merge, export, inspect, verify, evaluate, tune: success and error objects."""
    out = tmp_path / "e.keras"
    commands: dict[str, list[str | Path]] = {
        "merge": ["merge", zoo["a.keras"], zoo["b.keras"], "-o", out],
        "inspect": ["inspect", out, zoo["a.keras"]],
        "verify": ["verify", out, zoo["a.keras"], zoo["b.keras"]],
        "export": ["export", out, "--format", "saved_model", "-o", tmp_path / "sm"],
    }
    rng = np.random.default_rng(1)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.random((30, 5), dtype=np.float32), y=rng.integers(0, 10, 30))
    commands["evaluate"] = ["evaluate", zoo["a.keras"], out, "--data", data]
    commands["tune"] = ["tune", zoo["a.keras"], zoo["b.keras"], "--data", data, "-o",
                        tmp_path / "t.keras"]
    absent = tmp_path / "absent.keras"
    errors: dict[str, list[str | Path]] = {
        "merge": ["merge", zoo["a.keras"], absent, "-o", tmp_path / "e2.keras"],
        "inspect": ["inspect", absent],
        "verify": ["verify", absent],
        "export": ["export", absent, "--format", "saved_model", "-o", tmp_path / "sm2"],
        "evaluate": ["evaluate", absent, "--data", data],
        "tune": ["tune", zoo["a.keras"], absent, "--data", data, "-o", tmp_path / "t2.keras"],
    }
    for name, args in commands.items():
        report = validated(fuse(runner, *args, "--json", ok=True).stdout)
        assert report["command"] == name and report["ok"] is True
        error = fuse(runner, *errors[name], "--json")
        failed = validated(error.stdout)
        assert failed["command"] == name and failed["ok"] is False
        assert failed["exit_code"] == error.exit_code == 3
        assert "absent.keras" in failed["error"]


def test_keras_sees_no_fuse_layer_for_to_probabilities(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """The appended activation is a plain Keras layer: the file needs nothing new to load."""
    from fuse_cli.merge import MergeOptions, merge_files

    out = tmp_path / "x.keras"
    merge_files([zoo["linear.keras"], zoo["a.keras"]], out, MergeOptions(to_probabilities=True))
    layer = load(out).get_layer("to_probabilities_0")
    assert isinstance(layer, keras.layers.Activation)


def test_to_probabilities_lets_raw_members_into_product_mode(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """A raw-score member fails product mode's sign check; with softmax appended it passes."""
    out = tmp_path / "x.keras"
    refused = fuse(runner, "merge", zoo["a.keras"], zoo["linear.keras"], "-m", "product",
                   "-o", out)
    assert refused.exit_code == 4 and "product mode needs outputs >= 0" in refused.stderr
    fuse(runner, "merge", zoo["a.keras"], zoo["linear.keras"], "-m", "product",
         "--to-probabilities", "-o", out, ok=True)
    x = np.random.default_rng(7).random((5, 5), dtype=np.float32)
    a, lin = predict(load(zoo["a.keras"]), x)[0], predict(load(zoo["linear.keras"]), x)[0]
    expected = a.astype(np.float64) ** 0.5 * numpy_softmax(lin) ** 0.5
    np.testing.assert_allclose(predict(load(out), x)[0], expected, rtol=1e-5, atol=1e-6)


def test_to_probabilities_with_a_shared_backbone(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Members sharing a frozen backbone (computed once), one head raw: softmax appended."""
    from helpers import tm_member

    probs, raw = tm_member(1), tm_member(2, name="raw")
    raw.get_layer("head").layers[-1].activation = keras.activations.linear
    probs.save(tmp_path / "probs.keras")
    raw.save(tmp_path / "raw.keras")
    out = tmp_path / "x.keras"
    report = validated(fuse(runner, "merge", tmp_path / "probs.keras", tmp_path / "raw.keras",
                            "-o", out, "--to-probabilities", "--json", ok=True).stdout)
    assert report["formula"] == "0.5 * probs.keras + 0.5 * softmax(raw.keras)"
    sharing = provenance_of(out)["sharing"]
    assert sharing["segments"], sharing  # the backbone really is shared
    x = np.random.default_rng(8).random((3, 16, 16, 3), dtype=np.float32)
    p = predict(load(tmp_path / "probs.keras"), x)[0]
    r = predict(load(tmp_path / "raw.keras"), x)[0]
    np.testing.assert_allclose(predict(load(out), x)[0], 0.5 * p + 0.5 * numpy_softmax(r),
                               rtol=1e-5, atol=1e-6)
    verified = validated(fuse(runner, "verify", out, tmp_path / "probs.keras",
                              tmp_path / "raw.keras", "--json", ok=True).stdout)
    assert verified["formula_max_abs_error"] < 1e-6
