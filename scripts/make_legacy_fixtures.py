"""Write the legacy `.h5` fixtures of tests/fixtures/legacy with a real Keras 2 writer.

tf-keras (Keras 2 as a package) is not a project dependency; run this in an environment
of its own:

    python3 -m venv /tmp/tfkeras
    /tmp/tfkeras/bin/pip install tf-keras==2.21.0 tensorflow==2.21.0
    /tmp/tfkeras/bin/python scripts/make_legacy_fixtures.py

For each fixture it saves `<name>.h5` with tf-keras's own `model.save` and `<name>.npz`
with a fixed input `x` and the writer's predictions `y`, then writes `manifest.json`
and README.md (versions, sizes, forms). Weights are random with a fixed seed, so every
weight shows in the predictions.

Two forms are no longer written by any installable Keras: the Keras <= 2.2.2 Sequential
config stored as a bare list, and the Keras 2.2.3+ Sequential whose first layer carries
`batch_input_shape` with no InputLayer. For those, tf-keras writes the file and this
script rewrites its `model_config` (and `keras_version`) attributes exactly as those
versions stored them; weights and predictions stay tf-keras's own.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers  # noqa: E402

log = logging.getLogger("make_legacy_fixtures")

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "legacy"
SEED = 20240501
LAMBDA_SENTINEL = "FUSE_LEGACY_LAMBDA_RAN"


@dataclass(frozen=True)
class Fixture:
    name: str
    build: Callable[[], tf_keras.Model]
    input_shape: tuple[int, ...]
    form: str
    keras3_plain: str
    rules: tuple[str, ...]  # the fuse_cli.formats.legacy_rules rules its migration needs
    rewrite_as: str | None = None  # the Keras version whose config form is emulated
    # How the config is rewritten into that form (default: the Sequential rewrite).
    rewriter: Callable[[Path, str], None] | None = None
    more_inputs: tuple[tuple[int, ...], ...] = ()  # shapes of a second, third... input


# --- models -------------------------------------------------------------------------


def teachable_machine() -> tf_keras.Model:
    """The shape of a Teachable Machine `keras_model.h5`, tiny.

    A MobileNet-like Functional `model1` inside Sequential `sequential_1`, then a
    Sequential head `sequential_3` ending in softmax, all inside one more Sequential.
    The first block is frozen, as in fine-tuning, so the nested model's saved weight
    order (trainable first, then frozen) differs from its layer order.
    """
    inp = layers.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="Conv1")(inp)
    x = layers.BatchNormalization(name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="expanded_conv_depthwise")(x)
    x = layers.BatchNormalization(name="expanded_conv_depthwise_BN")(x)
    x = layers.ReLU(6.0, name="expanded_conv_depthwise_relu")(x)
    x = layers.Conv2D(16, 1, use_bias=False, name="expanded_conv_project")(x)
    x = layers.BatchNormalization(name="expanded_conv_project_BN")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d_GlobalAveragePooling2D1")(x)
    base = tf_keras.Model(inp, x, name="model1")
    for name in ("Conv1", "bn_Conv1"):
        base.get_layer(name).trainable = False
    features = tf_keras.Sequential([base], name="sequential_1")
    head = tf_keras.Sequential(
        [
            layers.Dense(12, activation="relu", input_shape=(16,), name="dense_Dense1"),
            layers.Dense(3, activation="softmax", name="dense_Dense2"),
        ],
        name="sequential_3",
    )
    return tf_keras.Sequential([features, head], name="sequential_4")


def conv_variants() -> tf_keras.Model:
    """DepthwiseConv2D, SeparableConv2D, SpatialDropout2D and Conv2DTranspose in a row."""
    inp = layers.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.SeparableConv2D(6, 3, activation="relu")(x)
    x = layers.SpatialDropout2D(0.2)(x)
    x = layers.Conv2DTranspose(4, 3, strides=2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3, activation="softmax")(x)
    return tf_keras.Model(inp, out, name="conv_variants")


def rnn_stack() -> tf_keras.Model:
    """LSTM (in Bidirectional), GRU and SimpleRNN: every config carries `time_major`."""
    return tf_keras.Sequential(
        [
            layers.Input((6, 4)),
            layers.Bidirectional(layers.LSTM(5, return_sequences=True)),
            layers.GRU(4, return_sequences=True),
            layers.SimpleRNN(3),
            layers.Dense(2),
        ],
        name="rnn_stack",
    )


def keras22_cnn() -> tf_keras.Model:
    """The 60x60x1 CNN of the issue; layer names as standalone Keras 2 numbered them."""
    return tf_keras.Sequential(
        [
            layers.Input((60, 60, 1)),
            layers.Conv2D(4, 3, activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Dropout(0.25, name="dropout_1"),
            layers.Flatten(name="flatten_1"),
            layers.Dense(8, activation="relu", name="dense_1"),
            layers.Dense(3, activation="softmax", name="dense_2"),
        ],
        name="sequential_1",
    )


def keras20_cnn() -> tf_keras.Model:
    return tf_keras.Sequential(
        [
            layers.Input((12, 12, 1)),
            layers.Conv2D(4, 3, activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Conv2D(6, 3, activation="relu", name="conv2d_2"),
            layers.GlobalAveragePooling2D(name="global_average_pooling2d_1"),
            layers.Dense(3, activation="softmax", name="dense_1"),
        ],
        name="sequential_1",
    )


def _lambda_model(name: str) -> tf_keras.Model:
    # The lambda leaves a trace when it runs, so a test can prove loading never ran it.
    # It names everything literally: its bytecode is all the file keeps of it.
    def doubles_and_marks(x: tf.Tensor) -> tf.Tensor:
        return (__import__("os").environ.__setitem__("FUSE_LEGACY_LAMBDA_RAN", "1"), x * 2.0)[1]

    return tf_keras.Sequential(
        [
            layers.Input((3,)),
            layers.Dense(4, name="dense_1"),
            layers.Lambda(doubles_and_marks, name="lambda_1"),
            layers.Dense(2, name="dense_2"),
        ],
        name=name,
    )


def lambda_tfkeras() -> tf_keras.Model:
    return _lambda_model("sequential_lambda")


def lambda_keras20() -> tf_keras.Model:
    return _lambda_model("sequential_1")


def teachable_machine_240() -> tf_keras.Model:
    """Teachable Machine's `keras_model.h5` layout, tiny, as its Keras 2.4.0 export has it.

    A Sequential holding a Sequential (a Functional MobileNetV2-like `model1` ending in
    a ReLU6, then GlobalAveragePooling2D: the pooling follows the nested model inside
    the same Sequential) and a Sequential head (Dense, Dense softmax), with the layer
    names of the real export.
    """
    inp = layers.Input((32, 32, 3), name="input_1")
    x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="Conv1_pad")(inp)
    x = layers.Conv2D(8, 3, strides=2, use_bias=False, name="Conv1")(x)
    x = layers.BatchNormalization(name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="expanded_conv_depthwise")(x)
    y = layers.BatchNormalization(name="expanded_conv_depthwise_BN")(y)
    y = layers.ReLU(6.0, name="expanded_conv_depthwise_relu")(y)
    y = layers.Conv2D(8, 1, use_bias=False, name="expanded_conv_project")(y)
    y = layers.BatchNormalization(name="expanded_conv_project_BN")(y)
    x = layers.Add(name="block_1_add")([x, y])
    x = layers.Conv2D(16, 1, use_bias=False, name="Conv_1")(x)
    x = layers.BatchNormalization(name="Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    base = tf_keras.Model(inp, x, name="model1")
    features = tf_keras.Sequential(
        [
            layers.Input((32, 32, 3), name="model1_input"),
            base,
            layers.GlobalAveragePooling2D(name="global_average_pooling2d_GlobalAveragePooling2D1"),
        ],
        name="sequential_1",
    )
    head = tf_keras.Sequential(
        [
            layers.Input((16,), name="dense_Dense1_input"),
            layers.Dense(12, activation="relu", name="dense_Dense1"),
            layers.Dense(3, activation="softmax", name="dense_Dense2"),
        ],
        name="sequential_3",
    )
    return tf_keras.Sequential(
        [layers.Input((32, 32, 3), name="sequential_1_input"), features, head],
        name="sequential_4",
    )


def hard_sigmoid_dense() -> tf_keras.Model:
    """Two Dense layers whose activation is Keras 2's `hard_sigmoid`."""
    return tf_keras.Sequential(
        [
            layers.Input((5,)),
            layers.Dense(6, activation="hard_sigmoid", name="dense_1"),
            layers.Dense(3, activation="hard_sigmoid", name="dense_2"),
        ],
        name="hard_sigmoid_dense",
    )


def keras20_gru() -> tf_keras.Model:
    """A GRU as standalone Keras 2.0 built it: no reset_after, hard_sigmoid gates."""
    return tf_keras.Sequential(
        [
            layers.Input((6, 4)),
            layers.GRU(5, recurrent_activation="hard_sigmoid", reset_after=False, name="gru_1"),
            layers.Dense(3, activation="softmax", name="dense_1"),
        ],
        name="sequential_1",
    )


def keras22_seq2seq() -> tf_keras.Model:
    """Keras's `lstm_seq2seq` example, tiny: the decoder LSTM starts from the encoder's
    states (`initial_state`), and a TimeDistributed Dense reads its sequence. The LSTMs
    use Keras 2.2's default `recurrent_activation`, `hard_sigmoid`."""
    encoder_inputs = layers.Input((5, 4), name="input_1")
    _, h, c = layers.LSTM(
        4, return_state=True, recurrent_activation="hard_sigmoid", name="lstm_1"
    )(encoder_inputs)
    decoder_inputs = layers.Input((6, 3), name="input_2")
    sequence = layers.LSTM(
        4, return_sequences=True, recurrent_activation="hard_sigmoid", name="lstm_2"
    )(decoder_inputs, initial_state=[h, c])
    outputs = layers.TimeDistributed(
        layers.Dense(2, activation="softmax", name="dense_1"), name="time_distributed_1"
    )(sequence)
    return tf_keras.Model([encoder_inputs, decoder_inputs], outputs, name="model_1")


def keras211_layer_activation() -> tf_keras.Model:
    """Dense layers whose activation is a LeakyReLU layer, as tf.keras 2.x allowed."""
    return tf_keras.Sequential(
        [
            layers.Input((4,)),
            layers.Dense(5, activation=layers.LeakyReLU(alpha=0.1), name="dense"),
            layers.Dense(2, activation=layers.LeakyReLU(alpha=0.1), name="dense_1"),
        ],
        name="sequential",
    )


def keras22_upsampling_bilinear() -> tf_keras.Model:
    """A bilinear UpSampling2D between two 1x1 convolutions."""
    inp = layers.Input((4, 4, 2), name="input_1")
    x = layers.Conv2D(3, 1, name="conv2d_1")(inp)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="up_sampling2d_1")(x)
    out = layers.Conv2D(2, 1, name="conv2d_2")(x)
    return tf_keras.Model(inp, out, name="model_1")


FIXTURES = (
    Fixture(
        "teachable_machine",
        teachable_machine,
        (32, 32, 3),
        "Teachable Machine shape: MobileNet-like Functional (DepthwiseConv2D, "
        "BatchNormalization, ReLU6; first block frozen) in a nested Sequential, then a "
        "nested Sequential head ending in softmax",
        "refused: `Could not locate class 'Functional'` (nested model annotated with "
        "module `tf_keras.src.engine.functional`); after that, `Unrecognized keyword "
        "arguments passed to DepthwiseConv2D: {'groups': 1}`",
        ("keras2_module_paths", "conv_groups", "nested_functional_single_io"),
    ),
    Fixture(
        "conv_variants",
        conv_variants,
        (16, 16, 3),
        "flat Functional: Conv2D, DepthwiseConv2D, SeparableConv2D, SpatialDropout2D, "
        "Conv2DTranspose, softmax head",
        "refused: `Error when deserializing class 'DepthwiseConv2D'` (`groups: 1`); "
        "then SeparableConv2D (`groups`, `kernel_*`), SpatialDropout2D (`trainable`), "
        "Conv2DTranspose (`groups`)",
        ("conv_groups", "separable_conv_kernel_arguments", "spatial_dropout_arguments"),
    ),
    Fixture(
        "rnn_time_major",
        rnn_stack,
        (6, 4),
        "Sequential: Bidirectional(LSTM), GRU, SimpleRNN, Dense",
        "refused: `Unrecognized keyword arguments passed to LSTM: {'time_major': False}`",
        ("rnn_time_major",),
    ),
    Fixture(
        "keras22_sequential",
        keras22_cnn,
        (60, 60, 1),
        "Keras 2.2.3+ Sequential: no InputLayer, first layer (Conv2D) carries `batch_input_shape`",
        "refused: `Kernel shape must have the same length as input, but received kernel "
        "of shape (3, 3, 1, 4) and input of shape (None, None, 60, 60, 1)`",
        ("sequential_input_layer",),
        rewrite_as="2.2.4",
    ),
    Fixture(
        "keras20_list",
        keras20_cnn,
        (12, 12, 1),
        "Keras <= 2.2.2 Sequential: config is a bare list of layers, first layer "
        "carries `batch_input_shape`",
        "refused: `pop expected at most 1 argument, got 2`",
        ("sequential_list_config", "sequential_input_layer"),
        rewrite_as="2.0.8",
    ),
    Fixture(
        "lambda_tfkeras",
        lambda_tfkeras,
        (3,),
        "Sequential with a Lambda layer holding marshalled Python code (needs no migration)",
        "refused in safe mode: ``Requested the deserialization of a `Lambda` layer whose "
        "`function` is a Python lambda`` (the message points at `safe_mode=False`)",
        (),
    ),
    Fixture(
        "lambda_keras20_list",
        lambda_keras20,
        (3,),
        "Keras <= 2.2.2 list-form Sequential with a Lambda layer holding marshalled Python "
        "code (needs migration before Keras reaches the Lambda)",
        "refused: `pop expected at most 1 argument, got 2` (before reaching the Lambda)",
        ("sequential_list_config", "sequential_input_layer"),
        rewrite_as="2.0.8",
    ),
    Fixture(
        "teachable_machine_240",
        teachable_machine_240,
        (32, 32, 3),
        "Teachable Machine's Keras 2.4.0 export, tiny: Sequential(Sequential(InputLayer, "
        "Functional MobileNetV2-like `model1`, GlobalAveragePooling2D), Sequential head "
        "(Dense, Dense softmax))",
        "refused: `Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': "
        "1}`; after that, `Layer \"functional_N\" expects 1 named input(s) ... but it "
        "received 2 input tensors` (the nested model returns a one-element list)",
        ("conv_groups", "nested_functional_single_io"),
        rewrite_as="2.4.0",
        rewriter=lambda path, version: _rewrite_nested(path, version),
    ),
    Fixture(
        "hard_sigmoid_dense",
        hard_sigmoid_dense,
        (5,),
        "Sequential: Dense and Dense with activation `hard_sigmoid` (Keras 2's "
        "`clip(0.2x + 0.5, 0, 1)`)",
        "loads *without an error*, computing Keras 3's `hard_sigmoid` (`relu6(x + 3) / 6`): "
        "predictions differ from the writer's",
        ("keras2_hard_sigmoid",),
    ),
    Fixture(
        "keras20_gru",
        keras20_gru,
        (6, 4),
        "Keras 2.0 list-form Sequential: GRU with no `reset_after` and "
        "`recurrent_activation: hard_sigmoid`, Dense softmax",
        "refused: `pop expected at most 1 argument, got 2`",
        (
            "sequential_list_config",
            "sequential_input_layer",
            "gru_reset_after",
            "keras2_hard_sigmoid",
        ),
        rewrite_as="2.0.8",
    ),
    Fixture(
        "keras22_seq2seq",
        keras22_seq2seq,
        (5, 4),
        "Keras 2.2.4 Functional (`Model`) encoder-decoder: LSTM `initial_state` from the "
        "encoder's states (stored as extra node inputs), TimeDistributed(Dense) whose "
        "inner layer has no module, `hard_sigmoid` gates",
        "refused: `Could not locate class 'Dense'`; after that, `Layer \"lstm_2\" "
        "expects 1 input(s), but it received 3 input tensors`",
        ("wrapped_layer_module", "rnn_initial_state_nodes", "keras2_hard_sigmoid"),
        rewrite_as="2.2.4",
        rewriter=lambda path, version: _rewrite_nested(path, version),
        more_inputs=((6, 3),),
    ),
    Fixture(
        "keras211_layer_activation",
        keras211_layer_activation,
        (4,),
        "tf.keras 2.11 Sequential: Dense layers whose `activation` is a LeakyReLU layer, "
        "stored without a module",
        "refused: `Could not locate class 'LeakyReLU'`",
        ("layer_activation_module",),
        rewrite_as="2.11.0",
        rewriter=lambda path, version: _rewrite_nested(path, version),
    ),
    Fixture(
        "keras22_upsampling_bilinear",
        keras22_upsampling_bilinear,
        (4, 4, 2),
        "Keras 2.2.4 Functional: Conv2D, UpSampling2D(interpolation='bilinear'), Conv2D; "
        "its `.npz` holds tf-keras 2.21's predictions (TF 2 resizing), not what Keras "
        "2.2.4 on TF 1 computed",
        "loads *without an error*, computing TF 2's resizing, not the writer's",
        (),
        rewrite_as="2.2.4",
        rewriter=lambda path, version: _rewrite_nested(path, version),
    ),
)


# --- the old config forms -----------------------------------------------------------

# The keys each layer's get_config() returned in standalone Keras 2.0.8–2.2.4 (after
# `name`, `trainable`, and on the first layer `batch_input_shape` and `dtype`).
_KERAS2_KEYS = {
    "Conv2D": (
        "filters kernel_size strides padding data_format dilation_rate activation use_bias "
        "kernel_initializer bias_initializer kernel_regularizer bias_regularizer "
        "activity_regularizer kernel_constraint bias_constraint"
    ),
    "Dense": (
        "units activation use_bias kernel_initializer bias_initializer kernel_regularizer "
        "bias_regularizer activity_regularizer kernel_constraint bias_constraint"
    ),
    "MaxPooling2D": "pool_size padding strides data_format",
    "Dropout": "rate noise_shape seed",
    "Flatten": "data_format",
    "GlobalAveragePooling2D": "data_format",
    "Lambda": "function function_type output_shape output_shape_type arguments",
    "GRU": (
        "return_sequences return_state go_backwards stateful unroll units activation "
        "recurrent_activation use_bias kernel_initializer recurrent_initializer "
        "bias_initializer kernel_regularizer recurrent_regularizer bias_regularizer "
        "activity_regularizer kernel_constraint recurrent_constraint bias_constraint "
        "dropout recurrent_dropout implementation"
    ),
}

_KERAS2_INITIALIZERS = {
    # Keras 2.0–2.2 serialized glorot_uniform as the VarianceScaling it is.
    "GlorotUniform": {
        "class_name": "VarianceScaling",
        "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None},
    },
    "Zeros": {"class_name": "Zeros", "config": {}},
    "Ones": {"class_name": "Ones", "config": {}},
    "Orthogonal": {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}},
}


def _keras2_value(value: Any) -> Any:
    if isinstance(value, dict) and value.get("module") == "keras.initializers":
        return copy.deepcopy(_KERAS2_INITIALIZERS[value["class_name"]])
    return value


# The keys of the layers in a Functional/nested config that Keras 2.2.4/2.4.0 wrote.
_ENTRY_KEYS = ("class_name", "config", "name", "inbound_nodes")


def _old_form(node: Any, version: str) -> Any:
    """A tf-keras 2.21 config fragment as Keras `version` (2.2.x or 2.4.0) stored it.

    Drops what later writers added (`module`, `registered_name`, `build_config` on
    every object; `time_major` before 2.3), writes initializers in the old form (up to
    2.4, `glorot_uniform` as the VarianceScaling it is), and
    before 2.4 calls a Functional model `Model` and stores `dtype` only where an input
    shape is declared. Modelled on real 2.2.4 and Teachable Machine 2.4.0 configs.
    """
    numbers = tuple(int(part) for part in version.split("-")[0].split("."))
    before_24 = numbers < (2, 4)
    if isinstance(node, list):
        return [_old_form(item, version) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("module") == "keras.initializers":
        if numbers < (2, 5):  # as Teachable Machine's 2.4.0 files store them too
            return _keras2_value(node)
        return {"class_name": node["class_name"], "config": node["config"]}
    out = {k: _old_form(v, version) for k, v in node.items()}
    if "class_name" in out:
        for key in ("module", "registered_name", "build_config"):
            out.pop(key, None)
        if "inbound_nodes" in out:
            out = {k: out[k] for k in _ENTRY_KEYS if k in out}
    body = out.get("config")
    if isinstance(body, dict) and "class_name" in out:
        if before_24:
            body.pop("time_major", None)
            if out["class_name"] != "InputLayer" and "batch_input_shape" not in body:
                body.pop("dtype", None)
            if out["class_name"] == "InputLayer":
                body.pop("ragged", None)
        # Added later: InputLayer `optional`, pooling `keepdims` (2.6), a model's `trainable`.
        if out["class_name"] == "InputLayer":
            body.pop("optional", None)
        if out["class_name"].startswith("Global") and numbers < (2, 6):
            body.pop("keepdims", None)
        if out["class_name"] in ("Sequential", "Functional"):
            body.pop("trainable", None)
        if out["class_name"] == "Functional" and before_24:
            out["class_name"] = "Model"
    return out


def _rewrite_nested(path: Path, version: str) -> None:
    """Store a nested or Functional model's config the way Keras `version` stored it."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(_old_form(config, version)).encode("utf8")
        f.attrs["keras_version"] = version.encode("utf8")
        f["model_weights"].attrs["keras_version"] = version.encode("utf8")


def _keras2_layer(entry: dict[str, Any], *, first: bool, batch_shape: list[Any]) -> dict[str, Any]:
    class_name = entry["class_name"]
    config = entry["config"]
    old: dict[str, Any] = {"name": config["name"], "trainable": config["trainable"]}
    if first:
        old["batch_input_shape"] = batch_shape
        old["dtype"] = "float32"
    for key in _KERAS2_KEYS[class_name].split():
        old[key] = _keras2_value(config[key])
    return {"class_name": class_name, "config": old}


def _rewrite_config(path: Path, version: str) -> None:
    """Store the model config the way standalone Keras `version` stored it."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        entries = config["config"]["layers"]
        assert entries[0]["class_name"] == "InputLayer", entries[0]
        batch_shape = entries[0]["config"]["batch_input_shape"]
        old_layers = [
            _keras2_layer(entry, first=i == 0, batch_shape=batch_shape)
            for i, entry in enumerate(entries[1:])
        ]
        if version.startswith(("2.0", "2.1")) or version in ("2.2.0", "2.2.1", "2.2.2"):
            body: Any = old_layers  # Sequential.get_config() returned the bare list
        else:
            body = {"name": config["config"]["name"], "layers": old_layers}
        old_config = {"class_name": "Sequential", "config": body}
        f.attrs["model_config"] = json.dumps(old_config).encode("utf8")
        f.attrs["keras_version"] = version.encode("utf8")
        f["model_weights"].attrs["keras_version"] = version.encode("utf8")


# --- writing ------------------------------------------------------------------------


def _randomize(model: tf_keras.Model, rng: np.random.Generator) -> None:
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.name:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.4, shape)
        variable.assign(value.astype(np.float32))


def write_fixture(fixture: Fixture, out: Path, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    tf_keras.backend.clear_session()
    model = fixture.build()
    _randomize(model, rng)
    x = rng.random((4, *fixture.input_shape), dtype=np.float32)
    more = [rng.random((4, *shape), dtype=np.float32) for shape in fixture.more_inputs]
    y = model.predict([x, *more] if more else x, verbose=0)
    os.environ.pop(LAMBDA_SENTINEL, None)
    h5 = out / f"{fixture.name}.h5"
    model.save(h5, save_format="h5", include_optimizer=False)
    if fixture.rewrite_as:
        (fixture.rewriter or _rewrite_config)(h5, fixture.rewrite_as)
    # Several inputs: `x` is the first, `x1`, `x2`, ... the others.
    np.savez(out / f"{fixture.name}.npz", x=x, y=y, **{f"x{i + 1}": m for i, m in enumerate(more)})
    with h5py.File(h5, "r") as f:
        attr = f.attrs["keras_version"]
        keras_version = attr.decode() if isinstance(attr, bytes) else str(attr)
    return {
        "file": h5.name,
        "bytes": h5.stat().st_size,
        "sha256": hashlib.sha256(h5.read_bytes()).hexdigest(),
        "form": fixture.form,
        "keras_version_attribute": keras_version,
        "config_rewritten_as": fixture.rewrite_as,
        "rules": list(fixture.rules),
        "keras_3_15_1_plain_load": fixture.keras3_plain,
        "input_shape": [4, *fixture.input_shape],
        "more_input_shapes": [[4, *shape] for shape in fixture.more_inputs],
        "output_shape": list(y.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    writer = {
        "tf_keras": tf_keras.__version__,
        "tensorflow": tf.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    fixtures = {}
    for index, fixture in enumerate(FIXTURES):
        fixtures[fixture.name] = write_fixture(fixture, args.out, SEED + index)
        log.info("%s: %d bytes", fixture.name, fixtures[fixture.name]["bytes"])
    manifest = {"writer": writer, "seed": SEED, "fixtures": fixtures}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out / "README.md").write_text(render_readme(manifest))


def render_rules(manifest: dict[str, Any]) -> str:
    """One entry per fuse rewrite rule: its docstring, and the fixtures that need it."""
    import inspect
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuse_cli.formats import legacy_rules as legacy  # pure Python: no Keras, no TensorFlow

    entries = []
    for rule in legacy.RULES:
        name = legacy.rule_name(rule)
        doc = inspect.getdoc(rule) or ""
        summary, _, body = doc.partition("\n\n")
        users = [
            f"`{info['file']}`" for info in manifest["fixtures"].values() if name in info["rules"]
        ]
        body = " ".join(body.split())
        fixtures = ", ".join(users) or "none (seen in `scripts/legacy_corpus/files.tsv`)"
        entries.append(f"- **`{name}`** — {summary} {body} Fixtures: {fixtures}.")
    return "\n".join(entries)


def render_refusals() -> str:
    """One entry per refusal: its docstring."""
    import inspect

    from fuse_cli.formats import legacy_rules as legacy

    entries = []
    for check in legacy.REFUSALS:
        doc = inspect.getdoc(check) or ""
        summary, _, body = doc.partition("\n\n")
        entries.append(f"- **`{check.__name__}`** — {summary} {' '.join(body.split())}")
    return "\n".join(entries)


def render_readme(manifest: dict[str, Any]) -> str:
    writer = manifest["writer"]
    rows = []
    for info in manifest["fixtures"].values():
        rewritten = (
            f"tf-keras, config rewritten as Keras {info['config_rewritten_as']}"
            if info["config_rewritten_as"]
            else "tf-keras"
        )
        rows.append(
            f"| `{info['file']}` | {info['bytes'] / 1024:.1f} KB | {rewritten} | "
            f"`{info['keras_version_attribute']}` | {info['form']} | "
            f"{info['keras_3_15_1_plain_load']} |"
        )
    table = "\n".join(rows)
    return README.format(
        rules=render_rules(manifest),
        refusals=render_refusals(),
        tf_keras=writer["tf_keras"],
        tensorflow=writer["tensorflow"],
        python=writer["python"],
        h5py=writer["h5py"],
        numpy=writer["numpy"],
        seed=manifest["seed"],
        table=table,
        sentinel=LAMBDA_SENTINEL,
    )


README = """\
# Legacy `.h5` fixtures

Written by `scripts/make_legacy_fixtures.py` (do not edit by hand; rerun it). Each
`<name>.h5` is a model saved by a real Keras 2 writer; `<name>.npz` holds a fixed input
`x` (batch of 4) and the writer's predictions `y` on it. `manifest.json` has the same
facts in machine form, with each file's SHA-256.

Writer: **tf-keras {tf_keras}** (Keras 2 as a package) on TensorFlow {tensorflow},
Python {python}, h5py {h5py}, numpy {numpy}, in an environment of its own (tf-keras is
not a project dependency). Weights are random with seed {seed}, so every weight shows in
the predictions. Files were saved with tf-keras's `model.save(..., save_format="h5")`.

| file | size | written by | `keras_version` attribute | form | plain Keras 3.15.1 `load_model` |
| --- | --- | --- | --- | --- | --- |
{table}

## The rewrite rules (fuse_cli/formats/legacy_rules.py) and the writers they cover

Applied in this order, each only when plain Keras 3 failed on the file (or, for
`sequential_input_layer` and `keras2_hard_sigmoid`, would misread it silently):

{rules}

## What no rule can make exact: refused (exit 3, naming the layer)

Checked before anything is built, since Keras 3 would load these files without an
error and compute another function, or fail with a reason that does not say why.
Fixture: `keras22_upsampling_bilinear.h5` (the TF-op refusal is tested on a copy of
`hard_sigmoid_dense.h5` with a `TFOpLambda` layer added to its config).

{refusals}

## Forms no installable writer produces any more

No Keras that installs on a current Python writes these forms, so tf-keras wrote the
model, weights and predictions, and the script then rewrote the file's `model_config`
attribute exactly as those versions stored it, and set the `keras_version` attributes
(root and `model_weights`) to the emulated version:

- `keras22_sequential.h5` — Keras 2.2.3–2.2.5 form (`{{"name", "layers"}}`, since
  keras-team/keras#11133): no InputLayer; the first layer's config carries
  `batch_input_shape` and `dtype`, later layers carry neither; layer configs have the
  Keras 2 keys only (no `module`, `registered_name`, `build_config`, `groups`), and
  `glorot_uniform` is stored as `VarianceScaling(scale=1, mode=fan_avg,
  distribution=uniform)`. Modelled on a real 2.2.4 config.
- `keras20_list.h5`, `lambda_keras20_list.h5` — Keras 2.0–2.2.2 form: the Sequential's
  `config` is the bare list of layer configs (no model name), the same layer-config
  keys. The Lambda keeps tf-keras's marshalled function (`[code, defaults, closure]`,
  the format Keras 2 used as well).
- `keras20_gru.h5` — the same 2.0 list form with a GRU as Keras 2.0 stored it: no
  `reset_after` key (the argument did not exist; the GRU computed what
  `reset_after=False` computes, which tf-keras wrote it with) and
  `recurrent_activation: hard_sigmoid`, the default then.
- `teachable_machine_240.h5` — the form of Teachable Machine's `keras_model.h5`
  (Keras 2.4.0), modelled on real exports: a Sequential holding a Sequential
  (InputLayer, a Functional `model1`, GlobalAveragePooling2D) and a Sequential head;
  no `module`, `registered_name` or `build_config` on any object; the Functional's
  `input_layers`/`output_layers` are one-element lists; layer entries are `{{class_name,
  config, name, inbound_nodes}}`; convolutions carry `groups: 1`; no InputLayer
  `optional`, pooling `keepdims` or model `trainable`, which later versions added. The
  model is a tiny MobileNetV2-like stack (61 KB) rather than the real 2.4 MB one.
- `keras22_seq2seq.h5` — Keras 2.2.4 Functional form (class `Model`), modelled on real
  2.2.4 encoder-decoders: the decoder LSTM's node lists `[decoder input, h, c]` (the
  `initial_state` call), the TimeDistributed's inner `layer` is `{{class_name, config}}`
  only, LSTM configs have no `time_major` and no `dtype`, `glorot_uniform` and
  `orthogonal` in the old initializer form, LSTMs with `hard_sigmoid` gates (2.2's
  default). Its `.npz` holds the decoder input as `x1`.
- `keras211_layer_activation.h5` — tf.keras 2.11 form, modelled on a real 2.11.0
  file: no `module` or `registered_name` anywhere, so the LeakyReLU used as a Dense
  activation is `{{class_name, config}}` only (`alpha`, not `negative_slope`).
- `keras22_upsampling_bilinear.h5` — the same 2.2.4 Functional form; only refused, so
  its predictions are tf-keras's and serve no comparison.
- `hard_sigmoid_dense.h5` is tf-keras's own form: it shows that the drift is silent
  (plain Keras 3 loads it and computes another function).

## The Lambda fixtures

`lambda_tfkeras.h5` and `lambda_keras20_list.h5` hold a Python function (marshalled
bytecode, as Keras 2 stored every Lambda) that sets the environment variable
`{sentinel}` when it runs; building the model would run it. Loading them in safe mode must
fail with exit 3 and leave that variable unset: the tests check both. The marshalled
bytecode is Python {python}'s and loads only there, so the one test that loads a Lambda
with safe mode *off* first rewrites `lambda_keras20_list.h5`'s function with the running
Python's bytecode: it runs on every supported Python.
"""


if __name__ == "__main__":
    main()
