"""Legacy `.h5` files: each Keras 2 form loads in safe mode and computes what its writer did.

The fixtures in tests/fixtures/legacy were written by a real Keras 2 writer (tf-keras;
see the README there and scripts/make_legacy_fixtures.py), each with the writer's own
predictions on a fixed input.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import json
import marshal
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import provenance_of, validated  # noqa: E402

from fuse_cli.errors import ModelLoadError  # noqa: E402
from fuse_cli.formats import hdf5, legacy_refusals, legacy_rules  # noqa: E402
from fuse_cli.formats.hdf5 import load_legacy_h5  # noqa: E402
from fuse_cli.formats.legacy_rules import migrate_config  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
SENTINEL = "FUSE_LEGACY_LAMBDA_RAN"

# fixture -> the rules its migration needs.
EXPECTED_RULES = {
    "teachable_machine": ["keras2_module_paths", "conv_groups", "nested_functional_single_io"],
    "conv_variants": [
        "conv_groups",
        "separable_conv_kernel_arguments",
        "spatial_dropout_arguments",
    ],
    "rnn_time_major": ["rnn_time_major"],
    "keras22_sequential": ["sequential_input_layer"],
    "keras20_list": ["sequential_list_config", "sequential_input_layer"],
    # Failure class (a): Teachable Machine's Keras 2.4.0 export.
    "teachable_machine_240": ["conv_groups", "nested_functional_single_io"],
    # Failure class (b): silent semantic drift (and the old GRU).
    "hard_sigmoid_dense": ["keras2_hard_sigmoid"],
    "keras20_gru": [
        "sequential_list_config",
        "sequential_input_layer",
        "gru_reset_after",
        "keras2_hard_sigmoid",
    ],
    # Failure class (c): wrapped layers in the old form (and LSTM initial_state nodes).
    "keras22_seq2seq": ["wrapped_layer_module", "rnn_initial_state_nodes", "keras2_hard_sigmoid"],
    # Found in the corpus: a LeakyReLU layer as a Dense activation (tf.keras 2.11).
    "keras211_layer_activation": ["layer_activation_module"],
}
# Refused before anything is built: no rule can make them exact.
REFUSED = ["keras22_upsampling_bilinear"]
LAMBDA_FIXTURES = ["lambda_tfkeras", "lambda_keras20_list"]
MIGRATIONS = {
    **EXPECTED_RULES,
    "lambda_tfkeras": [],
    "lambda_keras20_list": ["sequential_list_config", "sequential_input_layer"],
    "keras22_upsampling_bilinear": [],
}

# What plain Keras 3.15.1 says about each file before any migration (the README's claims).
KERAS_3_15_1_PLAIN = {
    "teachable_machine": "Could not locate class 'Functional'",
    "conv_variants": "Error when deserializing class 'DepthwiseConv2D'",
    "rnn_time_major": "Unrecognized keyword arguments passed to LSTM: {'time_major': False}",
    "keras22_sequential": "input of shape (None, None, 60, 60, 1)",
    "keras20_list": "pop expected at most 1 argument, got 2",
    "lambda_tfkeras": "safe_mode=False",
    "lambda_keras20_list": "pop expected at most 1 argument, got 2",
    "teachable_machine_240": "Error when deserializing class 'DepthwiseConv2D'",
    "keras20_gru": "pop expected at most 1 argument, got 2",
    "keras22_seq2seq": "Could not locate class 'Dense'",
    "keras211_layer_activation": "Could not locate class 'LeakyReLU'",
}


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.h5"


def writer_data(name: str) -> tuple[Any, np.ndarray]:
    """The fixed input (a list for several inputs: `x`, `x1`, ...) and the writer's `y`."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        more = sorted((k for k in data.files if k.startswith("x") and k != "x"), key=len)
        if more:
            return [data["x"], *(data[k] for k in more)], data["y"]
        return data["x"], data["y"]


def predict(model: keras.Model, x: Any) -> np.ndarray:
    return np.asarray(model(x, training=False))


def read_config(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def text_list(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def write_config(path: Path, config: Any) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode("utf8")


@pytest.fixture(scope="session")
def loaded() -> Callable[[str], tuple[keras.Model, list[str]]]:
    """Each fixture loaded once through fuse's legacy loader, in safe mode."""
    cache: dict[str, tuple[keras.Model, list[str]]] = {}

    def load(name: str) -> tuple[keras.Model, list[str]]:
        if name not in cache:
            cache[name] = load_legacy_h5(fixture_path(name), safe_mode=True)
        return cache[name]

    return load


@pytest.fixture
def no_lambda_code(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail if Keras is asked to unmarshal a Lambda's code; yields the calls refused."""
    from keras.src.utils import python_utils

    calls: list[str] = []

    def refuse(code: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(code)[:40])
        raise AssertionError("func_load called: Lambda code was about to be unmarshalled")

    monkeypatch.setattr(python_utils, "func_load", refuse)
    monkeypatch.delenv(SENTINEL, raising=False)
    yield calls
    assert SENTINEL not in os.environ, "the Lambda's code ran"
    assert calls == []


# --- every legacy form loads, safely and exactly --------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_RULES))
def test_fixture_predictions_equal_the_writers(
    name: str, loaded: Callable[[str], tuple[keras.Model, list[str]]]
) -> None:
    model, _ = loaded(name)
    x, y = writer_data(name)
    np.testing.assert_allclose(predict(model, x), y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(EXPECTED_RULES))
def test_fixture_applies_the_expected_rules(
    name: str, loaded: Callable[[str], tuple[keras.Model, list[str]]]
) -> None:
    _, rules = loaded(name)
    assert rules == EXPECTED_RULES[name]


# What plain Keras says about each fixture, for each Keras release it is recorded for.
PLAIN_KERAS = {"3.15.1": KERAS_3_15_1_PLAIN}


@pytest.mark.parametrize("name", sorted(KERAS_3_15_1_PLAIN))
def test_plain_keras_refuses_each_fixture(name: str, no_lambda_code: list[str]) -> None:
    """Whatever Keras is installed still refuses each file without the rules, saying what
    is recorded for it; a release with nothing recorded fails, showing what it says."""
    with pytest.raises((TypeError, ValueError)) as info:
        hdf5._plain_load(fixture_path(name), safe_mode=True)
    recorded = PLAIN_KERAS.get(keras.__version__)
    if recorded is None:
        pytest.fail(
            f"plain Keras {keras.__version__} is not recorded; on {name} it says: "
            f"{str(info.value).strip().splitlines()[0][:300]!r}. Record it in PLAIN_KERAS."
        )
    assert recorded[name] in str(info.value)


def test_fixtures_are_small_and_recorded() -> None:
    assert MANIFEST["writer"]["tf_keras"].startswith("2.")
    assert sorted(MANIFEST["fixtures"]) == sorted(MIGRATIONS)
    for name, info in MANIFEST["fixtures"].items():
        data = fixture_path(name).read_bytes()
        assert len(data) == info["bytes"] < 300 * 1024
        assert hashlib.sha256(data).hexdigest() == info["sha256"], "regenerate, don't edit"
        assert info["rules"] == MIGRATIONS[name]
        x, y = writer_data(name)
        first = x[0] if isinstance(x, list) else x
        assert list(first.shape) == info["input_shape"] and list(y.shape) == info["output_shape"]


def test_teachable_machine_shape(loaded: Callable[[str], tuple[keras.Model, list[str]]]) -> None:
    model, _ = loaded("teachable_machine")
    features, head = model.layers
    assert isinstance(features, keras.Sequential) and isinstance(head, keras.Sequential)
    inner = [type(layer).__name__ for layer in features.layers[0].layers]
    assert "DepthwiseConv2D" in inner
    assert head.layers[-1].get_config()["activation"] == "softmax"
    # the frozen first block stays frozen, so a merged model keeps it out of training
    assert not features.layers[0].get_layer("Conv1").trainable


def test_migrated_keras22_model_has_the_writers_input_shape(
    loaded: Callable[[str], tuple[keras.Model, list[str]]],
) -> None:
    model, _ = loaded("keras22_sequential")
    assert model.input_shape == (None, 60, 60, 1)
    assert model.output_shape == (None, 3)


def test_plain_keras3_file_needs_no_rules(tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(3, activation="softmax")], name="plain"
    )
    path = tmp_path / "plain.h5"
    model.save(path)
    x = np.random.default_rng(0).random((2, 5), dtype=np.float32)
    loaded_model, rules = load_legacy_h5(path, safe_mode=True)
    assert rules == []
    np.testing.assert_allclose(predict(loaded_model, x), predict(model, x), atol=1e-6)


def test_the_extension_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    shutil.copy(fixture_path("keras20_list"), path)
    model, rules = load_legacy_h5(path, safe_mode=True)
    x, y = writer_data("keras20_list")
    assert rules == EXPECTED_RULES["keras20_list"]
    np.testing.assert_allclose(predict(model, x), y, atol=1e-5)


# --- weights are matched by name ----------------------------------------------------


def test_nested_weights_are_matched_by_owning_layer_not_position(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.h5"
    shutil.copy(fixture_path("teachable_machine"), path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/sequential_1"]
        names = text_list(group.attrs["weight_names"])
        # Move whole layers around (each layer keeps its own weight order).
        owners = list(dict.fromkeys(n.split("/")[0] for n in names))
        shuffled = [n for owner in reversed(owners) for n in names if n.startswith(owner + "/")]
        assert shuffled != names
        group.attrs["weight_names"] = [n.encode() for n in shuffled]
    model, _ = load_legacy_h5(path, safe_mode=True)
    x, y = writer_data("teachable_machine")
    np.testing.assert_allclose(predict(model, x), y, atol=1e-5)


def test_unnamed_nested_weights_fall_back_to_keras_order(tmp_path: Path) -> None:
    path = tmp_path / "renamed.h5"
    shutil.copy(fixture_path("teachable_machine"), path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/sequential_1"]
        names = text_list(group.attrs["weight_names"])
        renamed = [f"param_{i}" for i in range(len(names))]
        for old, new in zip(names, renamed, strict=True):
            group.move(old, new)
        group.attrs["weight_names"] = [n.encode() for n in renamed]
    model, _ = load_legacy_h5(path, safe_mode=True)
    x, y = writer_data("teachable_machine")
    np.testing.assert_allclose(predict(model, x), y, atol=1e-5)


def test_a_weight_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong_shape.h5"
    shutil.copy(fixture_path("keras22_sequential"), path)
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense_2/dense_2/bias:0"]
        f["model_weights/dense_2/dense_2"].create_dataset("bias:0", data=np.zeros(4, "f4"))
    with pytest.raises(ModelLoadError, match=r"dense_2.*shape \(4,\).*\(3,\)"):
        load_legacy_h5(path, safe_mode=True)


def test_missing_layer_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "missing.h5"
    shutil.copy(fixture_path("keras22_sequential"), path)
    with h5py.File(path, "r+") as f:
        names = text_list(f["model_weights"].attrs["layer_names"])
        names.remove("dense_1")
        f["model_weights"].attrs["layer_names"] = [n.encode() for n in names]
    with pytest.raises(ModelLoadError, match="no weights for layer 'dense_1'"):
        load_legacy_h5(path, safe_mode=True)


def test_a_silent_misread_is_migrated_even_though_keras_loads_it(tmp_path: Path) -> None:
    """A Keras 2.2 Sequential starting with Dense: Keras 3 loads it, one axis too many."""
    rng = np.random.default_rng(7)
    kernel, bias = rng.normal(size=(4, 3)).astype("f4"), rng.normal(size=3).astype("f4")
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential_1",
            "layers": [
                {
                    "class_name": "Dense",
                    "config": {
                        "name": "dense_1",
                        "trainable": True,
                        "batch_input_shape": [None, 4],
                        "dtype": "float32",
                        "units": 3,
                        "activation": "relu",
                        "use_bias": True,
                    },
                }
            ],
        },
    }
    path = tmp_path / "dense22.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [b"dense_1"]
        layer = weights.create_group("dense_1")
        layer.attrs["weight_names"] = [b"dense_1/kernel:0", b"dense_1/bias:0"]
        layer.create_dataset("dense_1/kernel:0", data=kernel)
        layer.create_dataset("dense_1/bias:0", data=bias)

    misread = hdf5._plain_load(path, safe_mode=True)
    assert misread.input_shape == (None, None, 4)

    model, rules = load_legacy_h5(path, safe_mode=True)
    assert rules == ["sequential_input_layer"]
    assert model.input_shape == (None, 4)
    x = rng.random((2, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(model, x), np.maximum(x @ kernel + bias, 0), atol=1e-6)


# --- safety: Lambda stays refused, nothing from the file runs ----------------------------


@pytest.mark.parametrize("name", LAMBDA_FIXTURES)
def test_lambda_is_refused_in_safe_mode(name: str, no_lambda_code: list[str]) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_legacy_h5(fixture_path(name), safe_mode=True)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert message.startswith(f"{fixture_path(name)}: ")
    assert "--unsafe" in message and "Lambda" in message
    version = MANIFEST["fixtures"][name]["keras_version_attribute"]
    assert message.endswith(f"(written by Keras {version})")


def test_lambda_is_refused_on_the_migrated_path_too(
    monkeypatch: pytest.MonkeyPatch, no_lambda_code: list[str]
) -> None:
    built: list[bool] = []
    original = hdf5._build_from_config

    def spy(config: dict[str, Any], *, safe_mode: bool) -> keras.Model:
        built.append(safe_mode)
        return original(config, safe_mode=safe_mode)

    monkeypatch.setattr(hdf5, "_build_from_config", spy)
    with pytest.raises(ModelLoadError, match="--unsafe"):
        load_legacy_h5(fixture_path("lambda_keras20_list"), safe_mode=True)
    assert built == [True]  # plain Keras failed first; the migrated build refused the Lambda


def doubles_and_marks(x: Any) -> Any:
    """The writer's Lambda function (scripts/make_legacy_fixtures.py), literally."""
    return (__import__("os").environ.__setitem__("FUSE_LEGACY_LAMBDA_RAN", "1"), x * 2.0)[1]


def lambda_fixture_for_this_python(tmp_path: Path) -> Path:
    """`lambda_keras20_list.h5` with its Lambda's bytecode marshalled by this Python.

    Marshalled bytecode loads only on the Python that wrote it: the stored fixture's is
    the writer's. Keras 2 stored a Lambda's function as `[base64 of marshal.dumps(code),
    defaults, closure]` (`func_dump`); the weights and the rest of the config stay.
    """
    path = tmp_path / "lambda_keras20_list.h5"
    shutil.copy(fixture_path("lambda_keras20_list"), path)
    config = read_config(path)
    (entry,) = [o for o in config["config"] if o["class_name"] == "Lambda"]
    code = codecs.encode(marshal.dumps(doubles_and_marks.__code__), "base64").decode("ascii")
    entry["config"]["function"] = [code, None, None]
    write_config(path, config)
    return path


def test_unsafe_mode_loads_the_migrated_lambda(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(SENTINEL, raising=False)
    path = lambda_fixture_for_this_python(tmp_path)
    model, rules = load_legacy_h5(path, safe_mode=False)
    assert rules == ["sequential_list_config", "sequential_input_layer"]
    x, y = writer_data("lambda_keras20_list")
    np.testing.assert_allclose(predict(model, x), y, atol=1e-5)
    assert os.environ.get(SENTINEL) == "1"  # the code ran, because the user allowed it


def test_rules_leave_lambda_code_untouched() -> None:
    config = read_config(fixture_path("lambda_keras20_list"))
    migrated, _ = migrate_config(config)
    before = [o for o in legacy_rules.objects(config) if o["class_name"] == "Lambda"]
    after = [o for o in legacy_rules.objects(migrated) if o["class_name"] == "Lambda"]
    assert len(before) == len(after) == 1
    assert after[0] == before[0]


# --- failures stay exit 3 with Keras's reason and the writer's version --------------------


def test_unknown_failure_names_keras_reason_and_writer_version(tmp_path: Path) -> None:
    path = tmp_path / "mystery.h5"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(path)
    config = read_config(path)
    config["config"]["layers"][1]["class_name"] = "MysteryLayer"
    write_config(path, config)
    assert migrate_config(config)[1] == []  # no rule knows this failure
    with pytest.raises(ModelLoadError) as info:
        load_legacy_h5(path, safe_mode=True)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert message.startswith(f"{path}: ")
    assert "MysteryLayer" in message and "after the legacy rules" not in message
    assert message.endswith(f"(written by Keras {keras.__version__})")


def test_failure_after_migration_names_the_rules_tried(tmp_path: Path) -> None:
    path = tmp_path / "mystery.h5"
    shutil.copy(fixture_path("conv_variants"), path)
    config = read_config(path)
    config["config"]["layers"][1]["class_name"] = "MysteryLayer"
    write_config(path, config)
    with pytest.raises(ModelLoadError) as info:
        load_legacy_h5(path, safe_mode=True)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "MysteryLayer" in message
    assert "after the legacy rules conv_groups" in message
    assert message.endswith("(written by Keras 2.21.0)")


def test_time_major_true_is_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "time_major.h5"
    shutil.copy(fixture_path("rnn_time_major"), path)
    config = read_config(path)
    for obj in legacy_rules.objects(config):
        if obj["class_name"] in ("GRU", "LSTM", "SimpleRNN"):
            obj["config"]["time_major"] = True
    write_config(path, config)
    with pytest.raises(ModelLoadError, match=r"time_major.*\(written by Keras 2\.21\.0\)$"):
        load_legacy_h5(path, safe_mode=True)


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not a model at all")
    with pytest.raises(
        ModelLoadError, match=rf"^{re.escape(str(path))}: .*\(written by Keras unknown\)$"
    ):
        load_legacy_h5(path, safe_mode=True)


def test_hdf5_without_a_model_config(tmp_path: Path) -> None:
    path = tmp_path / "weights_only.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.3.1"
        f.create_group("model_weights")
    with pytest.raises(
        ModelLoadError, match=rf"^{re.escape(str(path))}: .*\(written by Keras 2\.3\.1\)$"
    ):
        load_legacy_h5(path, safe_mode=True)


# --- the rules, one by one ----------------------------------------------------------


def layer(class_name: str, **config: Any) -> dict[str, Any]:
    return {"class_name": class_name, "config": config}


def sequential(*layers: dict[str, Any], name: str = "seq") -> dict[str, Any]:
    return {"class_name": "Sequential", "config": {"name": name, "layers": list(layers)}}


def test_rule_sequential_list_config() -> None:
    config = {"class_name": "Sequential", "config": [layer("Dense", name="d", units=2)]}
    assert legacy_rules.rule_sequential_list_config(config)
    assert config["config"] == {"name": "sequential", "layers": [layer("Dense", name="d", units=2)]}
    assert not legacy_rules.rule_sequential_list_config(config)


def test_rule_sequential_list_config_keeps_a_recorded_nested_name() -> None:
    nested = {"class_name": "Sequential", "name": "head", "config": [layer("Dense", name="d")]}
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [nested]}}
    assert legacy_rules.rule_sequential_list_config(config)
    assert nested["config"]["name"] == "head"


def test_rule_sequential_input_layer() -> None:
    first = layer("Conv2D", name="conv2d_1", batch_input_shape=[None, 60, 60, 1], dtype="float32")
    config = sequential(first, layer("Flatten", name="flatten_1"))
    assert legacy_rules.rule_sequential_input_layer(config)
    layers = config["config"]["layers"]
    assert layers[0] == layer(
        "InputLayer",
        batch_input_shape=[None, 60, 60, 1],
        dtype="float32",
        sparse=False,
        name="conv2d_1_input",
    )
    assert layers[1] is first
    assert not legacy_rules.rule_sequential_input_layer(config)


def test_rule_sequential_input_layer_reads_through_a_nested_first_model() -> None:
    inner = sequential(layer("Dense", name="d", batch_input_shape=[None, 4]), name="inner")
    outer = sequential(inner, layer("Dense", name="e"), name="outer")
    assert legacy_rules.rule_sequential_input_layer(outer)
    for model, first in ((outer, "inner_input"), (inner, "d_input")):
        input_layer = model["config"]["layers"][0]
        assert input_layer["class_name"] == "InputLayer"
        assert input_layer["config"]["name"] == first
        assert input_layer["config"]["batch_input_shape"] == [None, 4]


def test_rule_sequential_input_layer_leaves_models_without_a_declared_shape() -> None:
    config = sequential(layer("Dense", name="d", units=2))
    assert not legacy_rules.rule_sequential_input_layer(config)
    with_input = sequential(layer("InputLayer", batch_input_shape=[None, 2]), layer("Dense"))
    assert not legacy_rules.rule_sequential_input_layer(with_input)


def test_rule_keras2_module_paths() -> None:
    conv = {"module": "keras.layers", "class_name": "Conv2D", "config": {}, "registered_name": None}
    functional = {
        "module": "tf_keras.src.engine.functional",
        "class_name": "Functional",
        "config": {"name": "model1", "layers": [conv]},
        "registered_name": "Functional",
    }
    custom = {"module": "mypkg", "class_name": "Mine", "config": {}, "registered_name": "p>Mine"}
    wrapped = {"module": "keras.layers", "class_name": "LSTM", "config": {}}
    bidir = layer("Bidirectional", layer=wrapped)
    config = sequential(sequential(functional, custom, bidir))
    assert legacy_rules.rule_keras2_module_paths(config)
    assert functional.keys() == {"class_name", "config"}
    assert conv.keys() == {"class_name", "config"}
    assert custom["module"] == "mypkg"  # custom objects stay as stored
    assert wrapped["module"] == "keras.layers"  # a wrapper's layer is not a model's entry
    assert not legacy_rules.rule_keras2_module_paths(config)


def test_rule_conv_groups() -> None:
    depthwise = layer("DepthwiseConv2D", name="dw", groups=1)
    transpose = layer("Conv2DTranspose", name="t", groups=1)
    grouped = layer("SeparableConv2D", name="s", groups=2)
    conv = layer("Conv2D", name="c", groups=1)  # Keras 3's Conv2D takes `groups`
    config = sequential(depthwise, transpose, grouped, conv)
    assert legacy_rules.rule_conv_groups(config)
    assert "groups" not in depthwise["config"] and "groups" not in transpose["config"]
    assert grouped["config"]["groups"] == 2 and conv["config"]["groups"] == 1
    assert not legacy_rules.rule_conv_groups(config)


def test_rule_separable_conv_kernel_arguments() -> None:
    separable = layer(
        "SeparableConv2D",
        name="s",
        kernel_initializer={"class_name": "GlorotUniform", "config": {}},
        kernel_regularizer=None,
        kernel_constraint=None,
        depthwise_initializer="glorot_uniform",
    )
    config = sequential(separable, layer("Conv2D", name="c", kernel_initializer="zeros"))
    assert legacy_rules.rule_separable_conv_kernel_arguments(config)
    assert separable["config"] == {"name": "s", "depthwise_initializer": "glorot_uniform"}
    assert config["config"]["layers"][1]["config"]["kernel_initializer"] == "zeros"
    assert not legacy_rules.rule_separable_conv_kernel_arguments(config)


def test_rule_spatial_dropout_arguments() -> None:
    dropout = layer("SpatialDropout2D", name="sd", trainable=True, rate=0.2, noise_shape=None)
    plain = layer("Dropout", name="d", trainable=True, rate=0.2, noise_shape=None)
    config = sequential(dropout, plain)
    assert legacy_rules.rule_spatial_dropout_arguments(config)
    assert dropout["config"] == {"name": "sd", "rate": 0.2}
    assert "trainable" in plain["config"]
    assert not legacy_rules.rule_spatial_dropout_arguments(config)


def test_rule_rnn_time_major() -> None:
    inner = {"module": "keras.layers", "class_name": "LSTM", "config": {"time_major": False}}
    gru = layer("GRU", time_major=False)
    major = layer("SimpleRNN", time_major=True)
    zero = layer("LSTM", time_major=0)  # not the boolean Keras 2 wrote: left alone
    config = sequential(layer("Bidirectional", layer=inner), gru, major, zero)
    assert legacy_rules.rule_rnn_time_major(config)
    assert inner["config"] == {} and gru["config"] == {}
    assert major["config"] == {"time_major": True} and zero["config"] == {"time_major": 0}
    assert not legacy_rules.rule_rnn_time_major(config)


def test_every_rule_is_registered_once_and_documented() -> None:
    names = [legacy_rules.rule_name(rule) for rule in legacy_rules.RULES]
    assert len(set(names)) == len(names)
    defined = {
        n.removeprefix("rule_")
        for n in dir(legacy_rules)
        if n.startswith("rule_") and n != "rule_name"
    }
    assert set(names) == defined
    for rule in legacy_rules.RULES:
        doc = rule.__doc__ or ""
        assert "Writers:" in doc and "Keras 3.15.1" in doc, rule.__name__


@pytest.mark.parametrize("name", sorted(MIGRATIONS))
def test_migrate_config_is_pure_and_idempotent(name: str) -> None:
    config = read_config(fixture_path(name))
    snapshot = copy.deepcopy(config)
    migrated, applied = migrate_config(config)
    assert config == snapshot
    assert applied == MIGRATIONS[name]
    again, applied_again = migrate_config(migrated)
    assert applied_again == [] and again == migrated


def test_importing_legacy_does_not_import_keras() -> None:
    import subprocess

    code = (
        "import sys, fuse_cli.formats.legacy_rules; "
        "print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.stdout.split() == ["False", "False"]


# --- a migrated model merges with itself and survives a save -------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_RULES))
def test_merging_a_fixture_with_itself_gives_the_writers_predictions(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from fuse_cli.ensemble import Mode, build_ensemble

    x, y = writer_data(name)
    members = [load_legacy_h5(fixture_path(name), safe_mode=True)[0] for _ in range(2)]
    # Product mode needs a last activation fuse can read; a nested head's is not at hand.
    softmax = members[0].layers[-1].get_config().get("activation") == "softmax"
    mode = Mode.PRODUCT if softmax else Mode.SUM
    merged = build_ensemble(members, [0.5, 0.5], mode=mode)
    np.testing.assert_allclose(predict(merged, x), y, rtol=1e-5, atol=1e-5)

    path = tmp_path_factory.mktemp("merged") / f"{name}.keras"
    merged.save(path)
    reloaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(predict(reloaded, x), y, rtol=1e-5, atol=1e-5)


def test_cli_merges_teachable_machine_export_in_product_mode(tmp_path: Path) -> None:
    """End to end: `fuse merge` on a migrated file, product mode (softmax found inside)."""
    from typer.testing import CliRunner

    from fuse_cli.cli import app

    tm = fixture_path("teachable_machine")
    out = tmp_path / "tm_ensemble.keras"
    result = CliRunner().invoke(
        app,
        ["merge", str(tm), str(tm), "--mode", "product", "--json", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert [m["migrations"] for m in report["members"]] == [EXPECTED_RULES["teachable_machine"]] * 2
    assert [m["last_activations"] for m in report["members"]] == [["softmax"], ["softmax"]]
    x, y = writer_data("teachable_machine")
    merged = keras.saving.load_model(out, compile=False, safe_mode=True)
    # The geometric mean of a model with itself is the model: the writer's predictions.
    np.testing.assert_allclose(merged.predict(x, verbose=0), y, rtol=1e-5, atol=1e-5)
    provenance = provenance_of(out)
    assert provenance["members"][0]["migrations"] == EXPECTED_RULES["teachable_machine"]


# --- the failure classes of the public corpus (scripts/legacy_corpus/) ---------------


def _load_without(
    monkeypatch: pytest.MonkeyPatch, name: str, rule: Callable[[dict[str, Any]], bool]
) -> None:
    """Load fixture `name` with every rule but `rule`: the failure the rule removes."""
    monkeypatch.setattr(
        legacy_rules, "RULES", tuple(r for r in legacy_rules.RULES if r is not rule)
    )
    load_legacy_h5(fixture_path(name), safe_mode=True)


def test_teachable_machine_240_needs_the_single_io_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Class (a): the 2.4.0 export's failure, reproduced by its fixture without the rule."""
    with pytest.raises(ModelLoadError, match=r"expects 1 named input\(s\).*received 2 input"):
        _load_without(
            monkeypatch, "teachable_machine_240", legacy_rules.rule_nested_functional_single_io
        )


def test_teachable_machine_240_has_the_exports_layout(
    loaded: Callable[[str], tuple[keras.Model, list[str]]],
) -> None:
    model, _ = loaded("teachable_machine_240")
    features, head = model.layers
    functional, pooling = features.layers
    assert functional.name == "model1" and isinstance(functional, keras.Model)
    assert type(pooling).__name__ == "GlobalAveragePooling2D"
    assert not isinstance(functional.output, list)  # one tensor, as Keras 2 had it
    assert head.layers[-1].get_config()["activation"] == "softmax"


def test_hard_sigmoid_drift_is_silent_in_plain_keras() -> None:
    """Class (b): plain Keras 3 loads the file and computes another function."""
    x, y = writer_data("hard_sigmoid_dense")
    plain = hdf5._plain_load(fixture_path("hard_sigmoid_dense"), safe_mode=True)
    assert np.abs(predict(plain, x) - y).max() > 1e-2
    model, rules = load_legacy_h5(fixture_path("hard_sigmoid_dense"), safe_mode=True)
    assert rules == ["keras2_hard_sigmoid"]
    np.testing.assert_allclose(predict(model, x), y, rtol=0, atol=1e-6)


def test_keras2_hard_sigmoid_is_the_keras2_formula() -> None:
    from fuse_cli.layers import Keras2HardSigmoid

    x = np.array([-10, -3, -2.5, -1, -0.3, 0, 0.3, 1, 2.5, 3, 10], dtype=np.float32)
    expected = np.clip(0.2 * x + 0.5, 0.0, 1.0)  # Keras 2's definition, in numpy
    np.testing.assert_allclose(np.asarray(Keras2HardSigmoid()(x)), expected, atol=1e-7)
    deserialized = keras.activations.get(copy.deepcopy(legacy_rules.KERAS2_HARD_SIGMOID))
    assert isinstance(deserialized, Keras2HardSigmoid)


def test_old_gru_needs_reset_after_false(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="gru_1"):
        _load_without(monkeypatch, "keras20_gru", legacy_rules.rule_gru_reset_after)


def test_old_gru_computes_keras2s_gates(
    loaded: Callable[[str], tuple[keras.Model, list[str]]],
) -> None:
    from fuse_cli.layers import Keras2HardSigmoid

    model, _ = loaded("keras20_gru")
    gru = model.get_layer("gru_1")
    assert gru.cell.reset_after is False
    assert isinstance(gru.cell.recurrent_activation, Keras2HardSigmoid)


def test_seq2seq_needs_the_initial_state_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Class (c)'s file also stores an `initial_state` call in the Keras 2 node form."""
    with pytest.raises(ModelLoadError, match=r"lstm_2.*expects 1 input\(s\).*received 3"):
        _load_without(monkeypatch, "keras22_seq2seq", legacy_rules.rule_rnn_initial_state_nodes)


def test_seq2seq_wrapped_dense_is_the_files(
    loaded: Callable[[str], tuple[keras.Model, list[str]]],
) -> None:
    model, _ = loaded("keras22_seq2seq")
    wrapper = model.get_layer("time_distributed_1")
    assert type(wrapper.layer).__name__ == "Dense" and wrapper.layer.units == 2
    assert len(model.inputs) == 2


def test_bilinear_upsampling_from_a_tf1_writer_is_refused(no_lambda_code: list[str]) -> None:
    path = fixture_path("keras22_upsampling_bilinear")
    with pytest.raises(ModelLoadError) as info:
        load_legacy_h5(path, safe_mode=True)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert message.startswith(f"{path}: layer 'up_sampling2d_1' (UpSampling2D, bilinear)")
    assert "TensorFlow 1's resize_bilinear" in message
    assert message.endswith("refused (written by Keras 2.2.4)")


def test_bilinear_upsampling_from_a_tf2_writer_loads(tmp_path: Path) -> None:
    path = tmp_path / "tf2_bilinear.h5"
    shutil.copy(fixture_path("keras22_upsampling_bilinear"), path)
    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = b"2.4.0"  # tf.keras of TF 2.3: tf.image.resize
    model, _ = load_legacy_h5(path, safe_mode=True)
    x, y = writer_data("keras22_upsampling_bilinear")  # tf-keras 2.21's predictions
    np.testing.assert_allclose(predict(model, x), y, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("version", "tf1"),
    [
        ("2.2.4", True),
        ("2.3.1", True),
        ("2.1.6-tf", True),
        ("2.2.4-tf", True),
        ("unknown", True),
        ("2.3.0-tf", False),
        ("2.4.0", False),
        ("2.15.0", False),
        ("3.15.1", False),
    ],
)
def test_which_writers_resized_like_tensorflow_1(version: str, tf1: bool) -> None:
    assert legacy_refusals._resizes_like_tensorflow_1(version) is tf1


def test_nearest_upsampling_is_never_refused() -> None:
    up = layer("UpSampling2D", name="up", interpolation="nearest", size=[2, 2])
    assert legacy_refusals.refusal(sequential(up), "2.2.4") is None
    bilinear = layer("UpSampling2D", name="up", interpolation="bilinear", size=[2, 2])
    assert "'up'" in str(legacy_refusals.refusal(sequential(bilinear), "2.2.4"))


def test_cli_inspect_shows_the_rules_applied(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fuse_cli.cli import app

    tm = fixture_path("teachable_machine_240")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(tm)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "written by Keras 2.4.0" in result.stdout
    assert "legacy:     migrated by the rules conv_groups, nested_functional_single_io" in (
        result.stdout
    )
    result = runner.invoke(app, ["inspect", "--json", str(tm)], catch_exceptions=False)
    assert (
        validated(result.stdout)["models"][0]["migrations"]
        == EXPECTED_RULES["teachable_machine_240"]
    )
    refused = runner.invoke(app, ["inspect", str(fixture_path("keras22_upsampling_bilinear"))])
    assert refused.exit_code == 3
    assert "up_sampling2d_1" in refused.stderr and "Traceback" not in refused.stderr


def test_a_merged_hard_sigmoid_model_is_loaded_back_by_fuse(tmp_path: Path) -> None:
    """The merged file names `fuse_cli.layers.Keras2HardSigmoid`: fuse accepts it."""
    from typer.testing import CliRunner

    from fuse_cli.cli import app

    member = fixture_path("keras20_gru")
    out = tmp_path / "gru_ensemble.keras"
    runner = CliRunner()
    result = runner.invoke(
        app, ["merge", str(member), str(member), "-o", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["inspect", "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    merged = keras.saving.load_model(out, compile=False, safe_mode=True)
    x, y = writer_data("keras20_gru")
    np.testing.assert_allclose(predict(merged, x), y, rtol=1e-5, atol=1e-5)


# --- the new rules, one by one ---------------------------------------------------------


def test_rule_initializer_dtype() -> None:
    init = {"class_name": "GlorotUniform", "config": {"seed": None, "dtype": "float32"}}
    dense = layer("Dense", name="d", dtype="float32", kernel_initializer=init)
    config = sequential(dense)
    assert legacy_rules.rule_initializer_dtype(config)
    assert init["config"] == {"seed": None}
    assert dense["config"]["dtype"] == "float32"  # a layer's dtype stays
    assert not legacy_rules.rule_initializer_dtype(config)


def test_rule_nested_functional_single_io() -> None:
    body = {
        "name": "m",
        "layers": [],
        "input_layers": [["i", 0, 0]],
        "output_layers": [["o", 0, 0]],
    }
    nested = {"class_name": "Functional", "config": body}
    two = {
        "name": "two",
        "layers": [],
        "input_layers": [["i", 0, 0]],
        "output_layers": [["a", 0, 0], ["b", 0, 0]],
    }
    top = {
        "class_name": "Model",
        "config": {
            "name": "top",
            "layers": [nested, {"class_name": "Model", "config": two}],
            "input_layers": [["x", 0, 0]],
            "output_layers": [["y", 0, 0]],
        },
    }
    assert legacy_rules.rule_nested_functional_single_io(top)
    assert body["input_layers"] == ["i", 0, 0] and body["output_layers"] == ["o", 0, 0]
    assert two["output_layers"] == [["a", 0, 0], ["b", 0, 0]]  # several outputs: a list
    assert top["config"]["output_layers"] == [["y", 0, 0]]  # the top-level model untouched
    assert not legacy_rules.rule_nested_functional_single_io(top)


def test_rule_wrapped_layer_module() -> None:
    inner = layer("Dense", name="d", units=2)
    backward = layer("LSTM", name="b")
    done = {"module": "keras.layers", "class_name": "GRU", "config": {}}
    config = sequential(
        layer("TimeDistributed", name="t", layer=inner),
        layer("Bidirectional", name="bi", layer=done, backward_layer=backward),
    )
    assert legacy_rules.rule_wrapped_layer_module(config)
    assert inner["module"] == "keras.layers" and inner["registered_name"] is None
    assert backward["module"] == "keras.layers"
    assert done == {"module": "keras.layers", "class_name": "GRU", "config": {}}
    assert not legacy_rules.rule_wrapped_layer_module(config)


def test_rule_rnn_initial_state_nodes() -> None:
    decoder = {
        "class_name": "LSTM",
        "name": "lstm_2",
        "config": {},
        "inbound_nodes": [[["in", 0, 0, {}], ["lstm_1", 0, 1, {}], ["lstm_1", 0, 2, {}]]],
    }
    mixed = {
        "class_name": "GRU",
        "name": "g",
        "config": {},
        "inbound_nodes": [[["in", 0, 0, {"training": False}], ["h", 0, 0, {}]]],
    }
    dense = {
        "class_name": "Dense",
        "name": "d",
        "config": {},
        "inbound_nodes": [[["a", 0, 0, {}], ["b", 0, 0, {}]]],
    }
    model = {
        "class_name": "Model",
        "config": {
            "name": "m",
            "layers": [decoder, mixed, dense],
            "input_layers": [],
            "output_layers": [],
        },
    }
    assert legacy_rules.rule_rnn_initial_state_nodes(model)

    def ref(name: str, node: int, tensor: int) -> dict[str, Any]:
        history = [name, node, tensor]
        return {
            "class_name": "__keras_tensor__",
            "config": {"shape": [], "dtype": "float32", "keras_history": history},
        }

    assert decoder["inbound_nodes"] == [
        {
            "args": [ref("in", 0, 0)],
            "kwargs": {"initial_state": [ref("lstm_1", 0, 1), ref("lstm_1", 0, 2)]},
        }
    ]
    assert isinstance(mixed["inbound_nodes"][0], list)  # differing call arguments: left alone
    assert isinstance(dense["inbound_nodes"][0], list)  # not a recurrent layer
    assert not legacy_rules.rule_rnn_initial_state_nodes(model)


def test_rule_gru_reset_after() -> None:
    old = layer("GRU", name="old", units=3)
    new = layer("GRU", name="new", units=3, reset_after=True)
    config = sequential(old, new, layer("LSTM", name="l"))
    assert legacy_rules.rule_gru_reset_after(config)
    assert old["config"]["reset_after"] is False and new["config"]["reset_after"] is True
    assert "reset_after" not in config["config"]["layers"][2]["config"]
    assert not legacy_rules.rule_gru_reset_after(config)


def test_rule_keras2_hard_sigmoid() -> None:
    gru = layer("GRU", name="g", activation="tanh", recurrent_activation="hard_sigmoid")
    act = layer("Activation", name="a", activation="hard_sigmoid")
    other = layer("Dense", name="d", activation="sigmoid")
    config = sequential(gru, act, other)
    assert legacy_rules.rule_keras2_hard_sigmoid(config)
    assert gru["config"]["recurrent_activation"] == legacy_rules.KERAS2_HARD_SIGMOID
    assert act["config"]["activation"] == legacy_rules.KERAS2_HARD_SIGMOID
    assert gru["config"]["activation"] == "tanh" and other["config"]["activation"] == "sigmoid"
    assert legacy_rules.misread_silently(sequential(layer("Dense", activation="hard_sigmoid")))
    assert not legacy_rules.rule_keras2_hard_sigmoid(config)


def test_a_failure_inside_a_layer_call_reports_keras_reason() -> None:
    from fuse_cli.formats.failures import reason_of

    wrapped = ValueError(
        "Exception encountered when calling Sequential.call().\n\n"
        '\x1b[1mLayer "functional_4" expects 1 named input(s), but it received 2 input '
        "tensors.\x1b[0m\n\nArguments received by Sequential.call():\n  • args=(...)"
    )
    assert reason_of(wrapped) == (
        'Layer "functional_4" expects 1 named input(s), but it received 2 input tensors. '
        "(calling Sequential.call())"
    )
    assert reason_of(ValueError("plain reason\nmore")) == "plain reason"


def test_rule_layer_activation_module() -> None:
    leaky = {"class_name": "LeakyReLU", "config": {"name": "l", "alpha": 0.1}}
    prelu = {"class_name": "PReLU", "config": {"name": "p"}}  # has weights: not touched
    done = {"module": "keras.layers", "class_name": "ReLU", "config": {}}
    config = sequential(
        layer("Dense", name="d", activation=leaky),
        layer("Dense", name="e", activation=prelu),
        layer("Dense", name="f", activation=done),
        layer("Dense", name="g", activation="relu"),
    )
    assert legacy_rules.rule_layer_activation_module(config)
    assert leaky["module"] == "keras.layers" and leaky["registered_name"] is None
    assert leaky["config"] == {"name": "l", "alpha": 0.1}
    assert "module" not in prelu
    assert done == {"module": "keras.layers", "class_name": "ReLU", "config": {}}
    assert not legacy_rules.rule_layer_activation_module(config)


def test_tf_op_layers_are_refused_naming_layer_and_function(tmp_path: Path) -> None:
    """tf.keras's TFOpLambda: refused before anything is built, with what it calls."""
    path = tmp_path / "tf_op.h5"
    shutil.copy(fixture_path("hard_sigmoid_dense"), path)
    config = read_config(path)
    config["config"]["layers"].append(
        layer(
            "TFOpLambda",
            name="tf.compat.v1.gather",
            trainable=True,
            dtype="float32",
            function="compat.v1.gather",
        )
    )
    write_config(path, config)
    with pytest.raises(ModelLoadError) as info:
        load_legacy_h5(path, safe_mode=True)
    assert info.value.exit_code == 3
    assert str(info.value) == (
        f"{path}: layer 'tf.compat.v1.gather' (TFOpLambda) calls the TensorFlow function "
        "'compat.v1.gather' by name, which Keras 3 cannot build: refused "
        "(written by Keras 2.21.0)"
    )
