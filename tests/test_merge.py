"""The merged file computes the formula, checked against the members' own predictions."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import dense_classifier, load, predict, provenance_of

from fuse_cli.compatibility import last_activations
from fuse_cli.ensemble import InputsMode, Mode, build_ensemble
from fuse_cli.errors import IncompatibleModelsError, UsageError
from fuse_cli.layers import WeightedProduct, WeightedSum
from fuse_cli.merge import MergeOptions, merge_files

RNG = np.random.default_rng(0)
X5 = RNG.random((16, 5), dtype=np.float32)


def member_outputs(*paths: Path, x: np.ndarray | list[np.ndarray] = X5) -> list[np.ndarray]:
    return [predict(load(p), x)[0] for p in paths]


def test_seed_case_sum_before_and_after_reload(tmp_path: Path) -> None:
    """The Q&A seed: 0.1 * out1 + 0.9 * out2, in memory and from the file."""
    a, b = dense_classifier(5, seed=11), dense_classifier(5, seed=12)
    o1, o2 = predict(a, X5)[0], predict(b, X5)[0]
    merged = build_ensemble([a, b], [0.1, 0.9])
    np.testing.assert_allclose(predict(merged, X5)[0], 0.1 * o1 + 0.9 * o2, rtol=1e-5, atol=1e-6)

    merged.save(tmp_path / "seed.keras")
    reloaded = load(tmp_path / "seed.keras")
    np.testing.assert_allclose(predict(reloaded, X5)[0], 0.1 * o1 + 0.9 * o2, rtol=1e-5, atol=1e-6)


def test_merge_files_sum_with_weight(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    report = merge_files([zoo["a.keras"], zoo["c.h5"]], out, MergeOptions(weight=0.3))
    o1, o2 = member_outputs(zoo["a.keras"], zoo["c.h5"])
    np.testing.assert_allclose(predict(load(out), X5)[0], 0.3 * o1 + 0.7 * o2, rtol=1e-5, atol=1e-6)
    assert report.weights == pytest.approx([0.3, 0.7])
    assert report.max_abs_error is not None and report.max_abs_error < 1e-6
    assert report.size == out.stat().st_size


@pytest.mark.parametrize("renormalize", [False, True])
def test_product_against_numpy(zoo: dict[str, Path], tmp_path: Path, renormalize: bool) -> None:
    out = tmp_path / "prod.keras"
    options = MergeOptions(mode=Mode.PRODUCT, weight=0.25, renormalize=renormalize)
    merge_files([zoo["a.keras"], zoo["b.keras"]], out, options)
    o1, o2 = member_outputs(zoo["a.keras"], zoo["b.keras"])
    expected = o1.astype(np.float64) ** 0.25 * o2.astype(np.float64) ** 0.75
    if renormalize:
        expected = expected / expected.sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(predict(load(out), X5)[0].sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predict(load(out), X5)[0], expected, rtol=1e-5, atol=1e-6)


def test_three_members_with_weights(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "three.keras"
    paths = [zoo["a.keras"], zoo["b.keras"], zoo["c.h5"]]
    report = merge_files(paths, out, MergeOptions(mode=Mode.PRODUCT, weights=[1, 2, 5]))
    outs = member_outputs(*paths)
    expected = outs[0] ** (1 / 8) * outs[1] ** (2 / 8) * outs[2] ** (5 / 8)
    np.testing.assert_allclose(predict(load(out), X5)[0], expected, rtol=1e-5, atol=1e-6)
    assert [m.weight_given for m in report.members] == [1, 2, 5]
    assert report.weights == pytest.approx([0.125, 0.25, 0.625])


def test_same_file_twice_and_same_names(zoo: dict[str, Path], tmp_path: Path) -> None:
    """a.keras and b.keras are both called `sequential`; a.keras is also given twice."""
    assert load(zoo["a.keras"]).name == load(zoo["b.keras"]).name == "sequential"
    out = tmp_path / "twice.keras"
    paths = [zoo["a.keras"], zoo["a.keras"], zoo["b.keras"]]
    merge_files(paths, out, MergeOptions(weights=[1, 1, 2]))
    merged = load(out)
    names = [layer.name for layer in merged.layers if layer.name.startswith("member_")]
    assert names == ["member_0_sequential", "member_1_sequential", "member_2_sequential"]
    # The file given twice computes its first (hidden) layer once for both copies.
    assert merged.get_layer("shared_0").count_params() == 5 * 8 + 8
    o1, o3 = member_outputs(zoo["a.keras"], zoo["b.keras"])
    np.testing.assert_allclose(predict(merged, X5)[0], 0.5 * o1 + 0.5 * o3, rtol=1e-5, atol=1e-6)


def test_separate_inputs_widths_5_and_7(zoo: dict[str, Path], tmp_path: Path) -> None:
    """The seed's second case: inputs of width 5 and 7, output 10 each."""
    out = tmp_path / "sep.keras"
    report = merge_files([zoo["a.keras"], zoo["wide7.keras"]], out, MergeOptions(weight=0.4))
    assert report.inputs == "separate"
    x7 = RNG.random((16, 7), dtype=np.float32)
    merged = load(out)
    assert [tuple(t.shape) for t in merged.inputs] == [(None, 5), (None, 7)]
    o1 = predict(load(zoo["a.keras"]), X5)[0]
    o2 = predict(load(zoo["wide7.keras"]), x7)[0]
    np.testing.assert_allclose(
        predict(merged, [X5, x7])[0], 0.4 * o1 + 0.6 * o2, rtol=1e-5, atol=1e-6
    )


def test_separate_inputs_forced_for_compatible_members(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "forced.keras"
    options = MergeOptions(inputs=InputsMode.SEPARATE)
    report = merge_files([zoo["a.keras"], zoo["b.keras"]], out, options)
    assert report.inputs == "separate"
    assert len(load(out).inputs) == 2


def test_cnn_none_spatial_dims_shared_with_concrete(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cnn.keras"
    report = merge_files([zoo["cnn_any.keras"], zoo["cnn_16.keras"]], out)
    assert report.inputs == "shared"
    merged = load(out)
    assert tuple(merged.inputs[0].shape) == (None, 16, 16, 3)  # the concrete dims win
    x = RNG.random((4, 16, 16, 3), dtype=np.float32)
    o1, o2 = member_outputs(zoo["cnn_any.keras"], zoo["cnn_16.keras"], x=x)
    np.testing.assert_allclose(predict(merged, x)[0], (o1 + o2) / 2, rtol=1e-5, atol=1e-6)


def test_two_output_members_head_by_head(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "heads.keras"
    merge_files([zoo["heads_a.keras"], zoo["heads_b.keras"]], out, MergeOptions(weight=0.7))
    x = RNG.random((8, 6), dtype=np.float32)
    a = predict(load(zoo["heads_a.keras"]), x)
    b = predict(load(zoo["heads_b.keras"]), x)
    merged = predict(load(out), x)
    assert len(merged) == 2
    for head in range(2):
        np.testing.assert_allclose(
            merged[head], 0.7 * a[head] + 0.3 * b[head], rtol=1e-5, atol=1e-6
        )


def test_h5_output_reloads_without_custom_objects(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.h5"
    merge_files([zoo["a.keras"], zoo["c.h5"]], out, MergeOptions(mode=Mode.PRODUCT, weight=0.6))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"
    o1, o2 = member_outputs(zoo["a.keras"], zoo["c.h5"])
    np.testing.assert_allclose(predict(load(out), X5)[0], o1**0.6 * o2**0.4, rtol=1e-5, atol=1e-6)


def test_inputs_are_never_modified(zoo: dict[str, Path], tmp_path: Path) -> None:
    before = {name: path.read_bytes() for name, path in zoo.items()}
    merge_files([zoo["a.keras"], zoo["c.h5"]], tmp_path / "x.keras")
    assert {name: path.read_bytes() for name, path in zoo.items()} == before


def test_provenance_is_recorded_in_the_file(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "prov.keras"
    report = merge_files([zoo["a.keras"], zoo["c.h5"]], out, MergeOptions(weights=[2, 6]))
    provenance = provenance_of(out)
    assert provenance["mode"] == "sum"
    assert provenance["weights_given"] == [2, 6]
    assert provenance["weights"] == pytest.approx([0.25, 0.75])
    assert [m["file"] for m in provenance["members"]] == ["a.keras", "c.h5"]
    assert [m["sha256"] for m in provenance["members"]] == [m.sha256 for m in report.members]
    import hashlib

    assert (
        provenance["members"][1]["sha256"] == hashlib.sha256(zoo["c.h5"].read_bytes()).hexdigest()
    )


def test_last_activation_read_through_nested_sequential() -> None:
    head = keras.Sequential([keras.layers.Dense(3, activation="softmax")], name="head")
    body = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), head], name="outer")
    assert last_activations(body) == ["softmax"]
    softmax_layer = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Softmax()]
    )
    assert last_activations(softmax_layer) == ["softmax"]
    linear = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert last_activations(linear) == ["linear"]


def test_product_refuses_possibly_negative_outputs(zoo: dict[str, Path]) -> None:
    a, lin = load(zoo["a.keras"]), load(zoo["linear.keras"])
    with pytest.raises(IncompatibleModelsError, match="linear"):
        build_ensemble([a, lin], [0.5, 0.5], mode=Mode.PRODUCT, labels=["a", "linear"])
    merged = build_ensemble([a, lin], [0.5, 0.5], mode=Mode.PRODUCT, assume_nonnegative=True)
    assert merged.get_layer("combine").__class__ is WeightedProduct


def test_mismatched_outputs_name_both_shapes(zoo: dict[str, Path]) -> None:
    a, five = load(zoo["a.keras"]), load(zoo["classes5.keras"])
    with pytest.raises(IncompatibleModelsError) as info:
        build_ensemble([a, five], [0.5, 0.5], labels=["a.keras", "classes5.keras"])
    assert str(info.value) == (
        "classes5.keras: output shape (None, 5) does not match a.keras: (None, 10)"
    )


def test_layer_configs_round_trip() -> None:
    """get_config holds every argument (compared with literals), and from_config takes it."""
    expected = {
        "s": {"name": "s", "trainable": True, "coefficients": [0.2, 0.8],
              "provenance": {"mode": "sum"}},
        "p": {"name": "p", "trainable": True, "coefficients": [0.5, 0.25, 0.25],
              "provenance": None, "renormalize": True},
    }
    for layer in (
        WeightedSum([0.2, 0.8], provenance={"mode": "sum"}, name="s"),
        WeightedProduct([0.5, 0.25, 0.25], renormalize=True, name="p"),
    ):
        clone = type(layer).from_config(layer.get_config())
        for config in (layer.get_config(), clone.get_config()):
            assert keras.dtype_policies.deserialize(config.pop("dtype")).name == "float32"
            assert config == expected[layer.name]
    assert WeightedProduct.from_config(expected["p"]).renormalize is True
    x = [np.full((2, 3), 0.5, np.float32), np.full((2, 3), 0.25, np.float32)]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(WeightedSum([0.2, 0.8])(x)),
        0.2 * 0.5 + 0.8 * 0.25,
        rtol=1e-6,
    )


def test_product_with_zero_weight_ignores_that_member() -> None:
    """0 ** 0 is 1: a member with weight 0 drops out, even where it outputs 0."""
    x = [np.array([[0.0, 0.5]], np.float32), np.array([[0.3, 0.7]], np.float32)]
    y = keras.ops.convert_to_numpy(WeightedProduct([0.0, 1.0])(x))
    np.testing.assert_allclose(y, [[0.3, 0.7]], rtol=1e-6)


def test_build_ensemble_rejects_renormalize_in_sum_mode(zoo: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="--renormalize"):
        build_ensemble([load(zoo["a.keras"]), load(zoo["b.keras"])], [0.5, 0.5], renormalize=True)


def test_check_batch_shrinks_for_large_inputs() -> None:
    """Verification runs members eagerly: large images are checked a few at a time."""
    from fuse_cli.compatibility import TensorSpec
    from fuse_cli.formula import BATCH, batch_size, sample_batch

    small = [TensorSpec((5,), "float32")]
    image = [TensorSpec((224, 224, 3), "float32")]
    assert batch_size(small) == BATCH
    assert batch_size(image) == 1
    assert sample_batch(image)[0].shape == (1, 224, 224, 3)
    assert sample_batch([TensorSpec((None, None, 3), "float32")])[0].shape == (BATCH, 32, 32, 3)


def test_cached_skipsets_are_the_ones_keras_computes() -> None:
    """The skipset cache (a Keras key mix-up, see formats._keras_private) holds Keras's own
    sets and is hit."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    from fuse_cli.formats._keras_private import WALKED_TYPES as _WALKED_TYPES
    from fuse_cli.formats._keras_private import cache_keras_skipsets

    for obj_type in _WALKED_TYPES:  # start from Keras's own state: nothing cached
        for key in ("skiplist", "skipset"):
            global_state.set_global_attribute(f"saving_attr_{key}_{obj_type}", None)
    fresh = {t: saving_lib.get_attr_skipset(t) for t in _WALKED_TYPES}
    cache_keras_skipsets()
    for obj_type in _WALKED_TYPES:
        cached = saving_lib.get_attr_skipset(obj_type)
        assert cached == fresh[obj_type]
        assert "_self_unconditional_dependency_names" in cached
        assert cached is saving_lib.get_attr_skipset(obj_type)  # served from the cache


def test_skipset_cache_steps_aside_when_keras_internals_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It only saves time: without `get_attr_skipset` it does nothing instead of failing."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    from fuse_cli.formats._keras_private import cache_keras_skipsets

    monkeypatch.delattr(saving_lib, "get_attr_skipset")
    global_state.set_global_attribute("saving_attr_skiplist_Layer", None)
    cache_keras_skipsets()
    assert global_state.get_global_attribute("saving_attr_skiplist_Layer") is None
