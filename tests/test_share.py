"""Members with the same backbone: computed once, and only when it is the same function.

Members are built like Teachable Machine exports (a frozen nested MobileNet-like
backbone, different Dense heads) and like a Sequential with identical first layers.
Every merged file is checked against the members' own predictions, loaded apart.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import (
    head_weights,
    load,
    mobilenet_like,
    predict,
    provenance_of,
    set_head_weights,
    tm_member,
    validated,
)
from typer.testing import CliRunner

from fuse_cli.choices import ExportFormat, InputsMode, Mode
from fuse_cli.cli import app
from fuse_cli.ensemble import build_ensemble
from fuse_cli.export import export_file
from fuse_cli.formats import load_model, save_model
from fuse_cli.merge import MergeOptions, merge_files
from fuse_cli.sharing import canonical_config, find_sharing

X = np.random.default_rng(5).random((6, 16, 16, 3), dtype=np.float32)


def _save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def prefix_member(head_seed: int, name: str = "sequential") -> keras.Model:
    """A flat Sequential: the same first layers (seed 0), then a head of its own."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name=name,
    )
    set_head_weights(model.layers[-2:], head_seed)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("share")
    ulp = mobilenet_like(0)
    kernel = ulp.layers[1].get_weights()[0]
    kernel.flat[7] = np.nextafter(kernel.flat[7], np.float32(np.inf))
    ulp.layers[1].set_weights([kernel])
    models = {
        "tm_a.keras": tm_member(1),
        "tm_b.h5": tm_member(2, name="tm_b"),
        "tm_c.keras": tm_member(3),
        "tm_d.keras": tm_member(4),
        "tm_other.keras": tm_member(5, backbone=mobilenet_like(1)),
        "tm_other2.keras": tm_member(6, backbone=mobilenet_like(1)),
        "tm_ulp.keras": tm_member(7, backbone=ulp),
        "tm_trainable.keras": tm_member(8, backbone=mobilenet_like(0, trainable=True)),
        "tm_24.keras": tm_member(9, backbone=mobilenet_like(0, (24, 24, 3))),
        "prefix_a.keras": prefix_member(11),
        "prefix_b.keras": prefix_member(12),
    }
    return {name: _save(model, folder / name) for name, model in models.items()}


def _expected(paths: list[Path], weights: list[float], x: np.ndarray = X) -> np.ndarray:
    """The weighted sum from each member file's own predictions, in float64."""
    outputs = [predict(load(p), x)[0].astype(np.float64) for p in paths]
    return sum(w * y for w, y in zip(weights, outputs, strict=True))


def _layer_names(path: Path) -> list[str]:
    return [layer.name for layer in load(path).layers]


def _params(path: Path) -> int:
    return int(load(path).count_params())


# --- sharing happens for identical backbones -------------------------------------------


def test_identical_nested_backbone_is_computed_once(files: dict[str, Path], tmp_path: Path) -> None:
    paths = [files["tm_a.keras"], files["tm_b.h5"]]
    out = tmp_path / "ens.keras"
    report = merge_files(paths, out, MergeOptions(weight=0.3))

    np.testing.assert_allclose(
        predict(load(out), X)[0], _expected(paths, [0.3, 0.7]), rtol=1e-5, atol=1e-6
    )
    assert _layer_names(out) == ["input", "shared_0", "member_0_sequential", "member_1_tm_b",
                                 "combine_weight_0", "combine_weight_1", "combine"]
    backbone = int(mobilenet_like(0).count_params())
    assert backbone == 8 * 27 + 4 * 8 + 8 * 9 + 4 * 8  # conv, BN, depthwise, BN
    assert _params(out) == sum(_params(p) for p in paths) - backbone
    assert report.sharing is not None
    (segment,) = report.sharing["segments"]
    assert segment["members"] == [0, 1]
    assert segment["params"] == backbone
    assert segment["layers"] == ["features (Sequential)"]
    assert report.sharing["params_saved"] == backbone
    assert report.sharing["bytes_saved"] == backbone * 4
    assert report.verified and report.max_abs_error is not None


def test_identical_sequential_prefix_is_computed_once(
    files: dict[str, Path], tmp_path: Path
) -> None:
    paths = [files["prefix_a.keras"], files["prefix_b.keras"]]
    out = tmp_path / "ens.keras"
    report = merge_files(paths, out)
    np.testing.assert_allclose(
        predict(load(out), X)[0], _expected(paths, [0.5, 0.5]), rtol=1e-5, atol=1e-6
    )
    assert report.sharing is not None
    (segment,) = report.sharing["segments"]
    # Rescaling, two convolutions and the pooling; the Dense layers differ.
    assert [name.split(" ")[1] for name in segment["layers"]] == [
        "(Rescaling)", "(Conv2D)", "(Conv2D)", "(GlobalAveragePooling2D)"
    ]
    assert segment["params"] == (27 * 8 + 8) + (72 * 8 + 8)
    merged = load(out)
    assert [layer.name for layer in merged.get_layer("member_0_sequential").layers][1:] == [
        layer.name for layer in load(paths[0]).layers[-2:]
    ]


def test_four_members_two_backbones_two_segments(files: dict[str, Path], tmp_path: Path) -> None:
    paths = [files[n] for n in ("tm_a.keras", "tm_other.keras", "tm_c.keras", "tm_other2.keras")]
    out = tmp_path / "ens.keras"
    report = merge_files(paths, out, MergeOptions(mode=Mode.PRODUCT, weights=[1, 2, 3, 4]))
    assert report.sharing is not None
    assert [s["members"] for s in report.sharing["segments"]] == [[0, 2], [1, 3]]
    outputs = [predict(load(p), X)[0].astype(np.float64) for p in paths]
    expected = np.prod([y ** (w / 10) for w, y in zip([1, 2, 3, 4], outputs, strict=True)], axis=0)
    np.testing.assert_allclose(predict(load(out), X)[0], expected, rtol=1e-5, atol=1e-6)


def test_functional_member_calling_the_backbone_with_training_false() -> None:
    """The transfer-learning guide's shape: `base(inputs, training=False)`."""

    def member(seed: int) -> keras.Model:
        inputs = keras.Input((16, 16, 3))
        x = mobilenet_like(0)(inputs, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(3, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        set_head_weights(model.layers[-1:], seed)
        return model

    a, b = member(1), member(2)
    expected = 0.5 * predict(a, X)[0] + 0.5 * predict(b, X)[0]
    plan = find_sharing([a, b])
    assert [(s.members, s.start, s.end) for s in plan.segments] == [([0, 1], 0, 2)]
    merged = build_ensemble([a, b], [0.5, 0.5])
    np.testing.assert_allclose(predict(merged, X)[0], expected, rtol=1e-5, atol=1e-6)
    # Called with training=True instead, the backbone is another computation.
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(mobilenet_like(0)(inputs, training=True))
    c = keras.Model(inputs, keras.layers.Dense(3)(x))
    assert find_sharing([member(1), c]).segments == []


# --- and never for what is merely similar ----------------------------------------------


@pytest.mark.parametrize(
    "other",
    ["tm_ulp.keras", "tm_trainable.keras", "tm_other.keras"],
    ids=["one-weight-one-ulp-apart", "trainable-differs", "other-weights"],
)
def test_near_identical_backbones_stay_separate(
    files: dict[str, Path], tmp_path: Path, other: str
) -> None:
    paths = [files["tm_a.keras"], files[other]]
    out = tmp_path / "ens.keras"
    report = merge_files(paths, out)
    assert report.sharing is not None and report.sharing["segments"] == []
    assert _layer_names(out) == ["input", "member_0_sequential", "member_1_sequential",
                                 "combine_weight_0", "combine_weight_1", "combine"]
    assert _params(out) == sum(_params(p) for p in paths)
    np.testing.assert_allclose(
        predict(load(out), X)[0], _expected(paths, [0.5, 0.5]), rtol=1e-5, atol=1e-6
    )


def test_different_preprocessing_before_the_backbone_stays_separate() -> None:
    a = tm_member(1)
    keras.utils.set_random_seed(0)
    b = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(0.5), tm_member(1)])
    assert find_sharing([a, b]).segments == []


def test_a_different_input_shape_is_never_shared(files: dict[str, Path], tmp_path: Path) -> None:
    """The same backbone at 24x24 cannot take the 16x16 input: separate inputs, no sharing."""
    paths = [files["tm_a.keras"], files["tm_24.keras"]]
    out = tmp_path / "ens.keras"
    report = merge_files(paths, out)
    assert report.inputs == "separate"
    assert report.sharing is not None and report.sharing["segments"] == []
    x24 = np.random.default_rng(6).random((6, 24, 24, 3), dtype=np.float32)
    expected = 0.5 * predict(load(paths[0]), X)[0] + 0.5 * predict(load(paths[1]), x24)[0]
    np.testing.assert_allclose(predict(load(out), [X, x24])[0], expected, rtol=1e-5, atol=1e-6)


def test_inputs_separate_never_shares(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    report = merge_files([files["tm_a.keras"], files["tm_c.keras"]], out,
                         MergeOptions(inputs=InputsMode.SEPARATE))
    assert report.sharing is not None and report.sharing["segments"] == []
    assert "shared_0" not in _layer_names(out)
    assert len(load(out).inputs) == 2


def test_canonical_config_ignores_layer_names_but_not_dtype_policies() -> None:
    a, b = mobilenet_like(0), mobilenet_like(0)
    assert [x.name for x in a.layers] != [x.name for x in b.layers]
    assert canonical_config(a.get_config()) == canonical_config(b.get_config())
    mixed = keras.layers.Dense(3, dtype="mixed_float16").get_config()
    plain = keras.layers.Dense(3).get_config()
    assert canonical_config(mixed) != canonical_config(plain)


# --- --no-share, provenance, inspect, verify, export -----------------------------------


def test_no_share_keeps_members_whole_and_is_bigger(
    files: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    paths = [str(files["tm_a.keras"]), str(files["tm_c.keras"])]
    results = {}
    for flag in ("", "--no-share"):
        out = tmp_path / f"ens{flag}.keras"
        args = ["merge", *paths, "-o", str(out), "--json", *([flag] if flag else [])]
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        results[flag] = (out, validated(result.stdout))
    shared_out, shared = results[""]
    whole_out, whole = results["--no-share"]
    assert whole["sharing"] == {"enabled": False, "segments": [], "params_saved": 0,
                                "bytes_saved": 0}
    assert [s["members"] for s in shared["sharing"]["segments"]] == [[0, 1]]
    assert "shared_0" not in _layer_names(whole_out)
    assert _params(whole_out) - _params(shared_out) == shared["sharing"]["params_saved"] > 0
    assert shared_out.stat().st_size < whole_out.stat().st_size
    np.testing.assert_allclose(predict(load(shared_out), X)[0], predict(load(whole_out), X)[0],
                               rtol=1e-6, atol=1e-7)


def test_sharing_is_recorded_and_shown_by_inspect_and_merge(
    files: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "ens.keras"
    result = runner.invoke(app, ["merge", str(files["tm_a.keras"]), str(files["tm_b.h5"]),
                                 "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "shared:   shared_0 = features (Sequential) (7 layers, 352 params) computed " \
           "once for tm_a.keras, tm_b.h5" in result.stdout
    recorded = provenance_of(out)["sharing"]
    assert recorded["enabled"] is True
    assert [(s["name"], s["members"], s["params"]) for s in recorded["segments"]] == [
        ("shared_0", [0, 1], 352)
    ]

    shown = runner.invoke(app, ["inspect", str(out), "--json"], catch_exceptions=False)
    sharing = validated(shown.stdout)["models"][0]["ensemble"]["sharing"]
    assert sharing["segments"][0]["members"] == [0, 1]
    assert sharing["params_saved"] == 352
    text = runner.invoke(app, ["inspect", str(out)], catch_exceptions=False).stdout
    assert "shared:     shared_0 = features (Sequential)" in text
    assert "computed once for member 0, member 1" in text


def test_verify_checks_a_shared_file_through_its_segments(
    files: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    paths = [files["tm_a.keras"], files["tm_b.h5"], files["tm_c.keras"]]
    out = tmp_path / "ens.keras"
    merge_files(paths, out, MergeOptions(weights=[1, 2, 3]))
    result = runner.invoke(app, ["verify", str(out), *map(str, paths), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert report["shared"] == [{"name": "shared_0", "members": [0, 1, 2]}]
    assert all(m["max_abs_error"] <= 1e-6 for m in report["members"])

    # A member file that differs only in its backbone is caught: it is not the
    # function the shared segment plus the member's own part computes.
    wrong = runner.invoke(app, ["verify", str(out), str(paths[0]), str(files["tm_ulp.keras"]),
                                str(paths[2])])
    assert wrong.exit_code == 6


def test_verify_refuses_a_record_that_disagrees_with_the_graph(
    files: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    models = [load(files["tm_a.keras"]), load(files["tm_c.keras"])]
    forged = {"sharing": {"enabled": True, "segments": [], "params_saved": 0, "bytes_saved": 0}}
    out = tmp_path / "forged.keras"
    save_model(build_ensemble(models, [0.5, 0.5]), out, provenance=forged)
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 6
    assert "the graph has {'shared_0': [0, 1]}" in result.stderr


def test_export_of_a_shared_file_keeps_parity(files: dict[str, Path], tmp_path: Path) -> None:
    paths = [files["tm_a.keras"], files["tm_b.h5"]]
    out = tmp_path / "ens.keras"
    merge_files(paths, out)
    run = export_file(out, [(ExportFormat.SAVED_MODEL, tmp_path / "sm")])
    (item,) = run.exports
    assert item.verified and item.max_abs_error is not None and item.max_abs_error <= 1e-5

    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    actual: Any = serve(input=tf.constant(X))["output_0"].numpy()
    np.testing.assert_allclose(actual, _expected(paths, [0.5, 0.5]), rtol=1e-5, atol=1e-5)


def test_h5_output_with_a_shared_backbone(files: dict[str, Path], tmp_path: Path) -> None:
    paths = [files["tm_a.keras"], files["tm_c.keras"]]
    out = tmp_path / "ens.h5"
    merge_files(paths, out, MergeOptions(weight=0.25))
    assert "shared_0" in _layer_names(out)
    np.testing.assert_allclose(
        predict(load(out), X)[0], _expected(paths, [0.25, 0.75]), rtol=1e-5, atol=1e-6
    )


def test_nested_groups_share_a_segment_after_a_segment(
    files: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    """Three members share the convolutions; two of them also their first Dense layer."""
    twin = prefix_member(11)
    set_head_weights(twin.layers[-1:], 99)  # only the last layer differs from prefix_a
    paths = [files["prefix_a.keras"], _save(twin, tmp_path / "twin.keras"),
             files["prefix_b.keras"]]
    out = tmp_path / "ens.keras"
    report = merge_files(paths, out, MergeOptions(weights=[1, 1, 2]))
    assert report.sharing is not None
    segments = [(s["name"], s["members"], s["after"]) for s in report.sharing["segments"]]
    assert segments == [("shared_0", [0, 1, 2], None), ("shared_1", [0, 1], "shared_0")]
    np.testing.assert_allclose(
        predict(load(out), X)[0], _expected(paths, [0.25, 0.25, 0.5]), rtol=1e-5, atol=1e-6
    )
    result = runner.invoke(app, ["verify", str(out), *map(str, paths), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert validated(result.stdout)["shared"] == [
        {"name": "shared_0", "members": [0, 1, 2]}, {"name": "shared_1", "members": [0, 1]}
    ]


def test_tune_shares_by_default_and_not_with_no_share(
    files: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    data = tmp_path / "val.npz"
    x = np.random.default_rng(8).random((40, 16, 16, 3), dtype=np.float32)
    np.savez(data, x=x, y=np.arange(40) % 3)
    paths = [files["tm_a.keras"], files["tm_c.keras"]]
    for flag, shared in (("", True), ("--no-share", False)):
        out = tmp_path / f"tuned{flag}.keras"
        args = ["tune", *map(str, paths), "--data", str(data), "-o", str(out), "--json"]
        result = runner.invoke(app, [*args, *([flag] if flag else [])], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        assert ("shared_0" in _layer_names(out)) is shared
        assert provenance_of(out)["sharing"]["enabled"] is shared
        a, b = head_weights(load(out))
        np.testing.assert_allclose(predict(load(out), X)[0], _expected(paths, [a, b]),
                                   rtol=1e-5, atol=1e-6)


def _teachable_machine_copy(out: Path, head_seed: int | None, backbone_ulp: bool = False) -> Path:
    """The Keras 2.4.0 Teachable Machine fixture with another head (and backbone) written
    into the HDF5 file itself, as another export of the same MobileNet would have."""
    source = Path(__file__).parent / "fixtures" / "legacy" / "teachable_machine_240.h5"
    shutil.copyfile(source, out)
    rng = np.random.default_rng(head_seed)
    with h5py.File(out, "r+") as f:
        weights = f["model_weights"]
        if head_seed is not None:
            for name in ("dense_Dense1/kernel:0", "dense_Dense2/kernel:0"):
                data = weights["sequential_3"][name]
                data[...] = rng.normal(0, 0.5, data.shape).astype(np.float32)
        if backbone_ulp:
            data = weights["sequential_1"]["Conv1/kernel:0"]
            values = data[...]
            values.flat[0] = np.nextafter(values.flat[0], np.float32(np.inf))
            data[...] = values
    return out


def test_teachable_machine_exports_share_their_backbone(tmp_path: Path) -> None:
    """Real legacy files (Keras 2.4.0 form), loaded through the legacy rules."""
    paths = [_teachable_machine_copy(tmp_path / "a.h5", None),
             _teachable_machine_copy(tmp_path / "b.h5", 3),
             _teachable_machine_copy(tmp_path / "ulp.h5", 4, backbone_ulp=True)]
    report = merge_files(paths, tmp_path / "ens.keras")
    assert report.sharing is not None
    (segment,) = report.sharing["segments"]
    assert segment["members"] == [0, 1]  # the third backbone is one ulp apart
    assert segment["layers"] == ["sequential_1 (Sequential)"]
    x = np.random.default_rng(7).random((4, *load_model(paths[0]).model.inputs[0].shape[1:]),
                                        dtype=np.float32)
    outputs = [predict(load_model(p).model, x)[0].astype(np.float64) for p in paths]
    assert not np.allclose(outputs[0], outputs[1])  # the heads do differ
    np.testing.assert_allclose(predict(load(tmp_path / "ens.keras"), x)[0],
                               sum(outputs) / 3, rtol=1e-5, atol=1e-6)


def test_share_benchmark_script_runs_on_tiny_members(tmp_path: Path) -> None:
    """Smoke test of benchmarks/share_bench.py: the shape of its results, no timings."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "share_bench.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--json",
                           str(tmp_path / "share.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tiny CNN (--quick) | 2 |" in proc.stdout
    (row,) = json.loads((tmp_path / "share.json").read_text())["rows"]
    assert [s["members"] for s in row["shared"]["sharing"]["segments"]] == [[0, 1]]
    assert row["no_share"]["sharing"]["enabled"] is False
    assert row["shared"]["size"] < row["no_share"]["size"]
    assert all(np.isfinite(v) and v > 0 for v in row["ratios"].values())


def test_nothing_shared_prints_no_sharing_line(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """Members with other weights share nothing: the report says nothing of sharing, and
    the JSON records an empty list of segments."""
    out = tmp_path / "e.keras"
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["c.h5"]), "-o", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "shared:" not in result.stdout and "saves" not in result.stdout
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["c.h5"]), "-o", str(out),
                                 "--force", "--json"], catch_exceptions=False)
    assert json.loads(result.stdout)["sharing"]["segments"] == []
