"""Legacy rules on layer arguments and activations: defaults and names Keras 3 changed.

Part of the rewrite rules (`fuse_cli.formats.legacy_rules`, which lists them all in
order): each edits the decoded config in place and says whether it changed anything.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from fuse_cli.formats.legacy_config import (
    Config,
    drop_if_equal,
    drop_keys,
    objects,
)

_CONV_WITHOUT_GROUPS = frozenset(
    {
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv1D",
        "SeparableConv2D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
    }
)


def rule_conv_groups(config: Config) -> bool:
    """Drop `groups: 1` from convolutions that take no `groups` argument in Keras 3.

    Writers: tf.keras 2.3+ (which added `groups`) and tf-keras (the `Conv` base writes it;
    DepthwiseConv2D, SeparableConv2D and the transposed convolutions inherit it; seen
    with 2.21.0), e.g. Teachable Machine's `keras_model.h5` (MobileNet).
    Keras 3.15.1 fails with `Error when deserializing class 'DepthwiseConv2D'` caused by
    `Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}`.
    Only the value 1 (a plain convolution) is dropped; any other value stays, and so
    does the error.
    """
    changed = False
    for obj in objects(config):
        if obj["class_name"] in _CONV_WITHOUT_GROUPS:
            changed |= drop_if_equal(obj["config"], "groups", 1)
    return changed


def rule_separable_conv_kernel_arguments(config: Config) -> bool:
    """Drop the unused `kernel_*` arguments from SeparableConv1D/2D configs.

    Writers: tf.keras 2.x and tf-keras (SeparableConv inherits them from `Conv` although
    it builds `depthwise_kernel` and `pointwise_kernel`; seen with 2.21.0). Standalone
    Keras 2 removed them. Keras 3.15.1 fails with `Unrecognized keyword arguments passed
    to SeparableConv2D: {..., 'kernel_initializer': ..., 'kernel_regularizer': None,
    'kernel_constraint': None}`. The layer never used them, so nothing changes.
    """
    changed = False
    for obj in objects(config):
        if obj["class_name"] in ("SeparableConv1D", "SeparableConv2D"):
            body = obj["config"]
            changed |= drop_keys(
                body, "kernel_initializer", "kernel_regularizer", "kernel_constraint"
            )
    return changed


def rule_spatial_dropout_arguments(config: Config) -> bool:
    """Drop `trainable` and `noise_shape` from SpatialDropout1D/2D/3D configs.

    Writers: every Keras 2 (the Dropout base config carries both; seen with tf-keras
    2.21.0). Keras 3.15.1 fails with `SpatialDropout2D.__init__() got an unexpected
    keyword argument 'trainable'`. The layer has no weights and computes its own noise
    shape, which is the one the Keras 2 layer used; at inference it is the identity.
    """
    changed = False
    for obj in objects(config):
        if obj["class_name"] in ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"):
            changed |= drop_keys(obj["config"], "trainable", "noise_shape")
    return changed


def rule_rnn_time_major(config: Config) -> bool:
    """Drop `time_major: false` from recurrent layer configs.

    Writers: tf.keras (TF 1.14+/2.x) and tf-keras, whose RNN configs carry `time_major`
    (seen with 2.21.0), including layers wrapped in Bidirectional. Keras 3.15.1 fails
    with `Unrecognized keyword arguments passed to LSTM: {'time_major': False}`.
    Only `false` (batch-major, Keras 3's only layout) is dropped; a time-major layer
    would compute something else in Keras 3, so `true` stays, and so does the error.
    """
    changed = False
    for obj in objects(config):
        if obj["class_name"] in ("LSTM", "GRU", "SimpleRNN", "RNN"):
            changed |= drop_if_equal(obj["config"], "time_major", False)
    return changed


_INITIALIZERS = frozenset(
    {
        "Constant",
        "GlorotNormal",
        "GlorotUniform",
        "HeNormal",
        "HeUniform",
        "Identity",
        "LecunNormal",
        "LecunUniform",
        "Ones",
        "Orthogonal",
        "RandomNormal",
        "RandomUniform",
        "TruncatedNormal",
        "VarianceScaling",
        "Zeros",
    }
)


def rule_initializer_dtype(config: Config) -> bool:
    """Drop `dtype` from initializer configs.

    Writers: tf.keras of TF 1.x (`keras_version` `2.1.6-tf`, `2.2.4-tf`; seen with
    2.1.6-tf), whose initializers (`GlorotUniform`, `Zeros`, ...) kept the dtype they
    were built with. Keras 3.15.1 fails with `GlorotUniform.__init__() got an
    unexpected keyword argument 'dtype'`. An initializer only draws the starting
    weights, which the file's weights replace, so nothing computed changes.
    """
    changed = False
    for obj in objects(config):
        if obj["class_name"] in _INITIALIZERS:
            changed |= drop_keys(obj["config"], "dtype")
    return changed


def rule_gru_reset_after(config: Config) -> bool:
    """Give a GRU without `reset_after` the `reset_after: false` it computed with.

    Writers: standalone Keras 2.0–2.1.3, whose GRU had no `reset_after` argument (it
    applied the reset gate before the recurrent kernel, as `reset_after=False` does;
    keras-team/keras#9112 added the argument in 2.1.4); later writers store it.
    Keras 3.15.1 defaults to `reset_after=True`, a different function with a (2, 3 *
    units) bias, and fails on the file's (3 * units,) bias; with the stored value it
    computes Keras 2's GRU.
    """
    changed = False
    for obj in objects(config):
        body = obj["config"]
        if obj["class_name"] == "GRU" and isinstance(body, dict) and "reset_after" not in body:
            body["reset_after"] = False
            changed = True
    return changed


# Keras layers that Keras 2 let a layer use as its activation (`Dense(activation=
# LeakyReLU(0.1))`); they have no weights of their own.
_ACTIVATION_LAYERS = frozenset({"Activation", "ELU", "LeakyReLU", "ReLU", "Softmax"})


def rule_layer_activation_module(config: Config) -> bool:
    """Name Keras's layer module for an activation that is a layer (`LeakyReLU`, ...).

    Writers: tf.keras 2.x before 2.13 (seen with 2.11.0), which stored `Dense(...,
    activation=LeakyReLU(alpha=0.1))` as an activation `{"class_name": "LeakyReLU",
    "config": {...}}` without a module. Keras 3.15.1 looks such an activation up with its
    new-format deserializer and fails with `Could not locate class 'LeakyReLU'`. The
    module added is `keras.layers`; the layer keeps its config (Keras 3's LeakyReLU
    reads Keras 2's `alpha` as `negative_slope`, the same function). Only weightless
    activation layers are touched.
    """
    changed = False
    for body, key in _activation_slots(config):
        value = body[key]
        if (
            isinstance(value, dict)
            and value.get("class_name") in _ACTIVATION_LAYERS
            and "module" not in value
        ):
            value["module"] = "keras.layers"
            value["registered_name"] = None
            changed = True
    return changed


def _activation_slots(config: Config) -> Iterator[tuple[Config, str]]:
    """Every `(layer config, key)` whose key names an activation (`activation`,
    `recurrent_activation`)."""
    for obj in list(objects(config)):
        body = obj["config"]
        if isinstance(body, dict):
            for key in ("activation", "recurrent_activation"):
                if key in body:
                    yield body, key


# The serialized `fuse_cli.layers.Keras2HardSigmoid`, a registered activation object.
KERAS2_HARD_SIGMOID: Config = {
    "module": "fuse_cli.layers",
    "class_name": "Keras2HardSigmoid",
    "config": {},
    "registered_name": "fuse>Keras2HardSigmoid",
}


def rule_keras2_hard_sigmoid(config: Config) -> bool:
    """Replace the activation `hard_sigmoid` with Keras 2's definition of it.

    Writers: every Keras 2 (standalone, tf.keras, tf-keras; seen with 2.1.5–2.2.5 and
    2.2.4-tf), where `hard_sigmoid(x) = clip(0.2 * x + 0.5, 0, 1)`; it was the default
    `recurrent_activation` of LSTM and GRU up to Keras 2.2.5 and of ConvLSTM2D in every
    Keras 2, so their configs name it. Keras 3.15.1 loads such a file *without an error*
    but defines `hard_sigmoid(x) = relu6(x + 3) / 6`, another function: the predictions
    differ from the writer's (relative error 8e-3 on a 2.2.4-tf GRU). The activation is
    replaced by `fuse>Keras2HardSigmoid` (`fuse_cli.layers`), a `keras.ops` expression
    of the Keras 2 function.
    """
    changed = False
    for body, key in _activation_slots(config):
        if body[key] == "hard_sigmoid":
            body[key] = copy.deepcopy(KERAS2_HARD_SIGMOID)
            changed = True
    return changed


# Order matters: the list form must become a dict before an InputLayer can be added.
