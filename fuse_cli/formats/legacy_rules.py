"""The rewrite rules that carry a Keras 2 `model_config` over to Keras 3, one function each.

Many `.h5` files written by Keras 2 (standalone Keras 2.x, tf.keras 2.x, tf-keras) carry
config forms Keras 3 no longer accepts, or reads differently. Each rule edits the
decoded JSON in place and says whether it changed anything; `migrate_config` applies
them all to a copy, in order. The rules only edit data: they never import, call or
unmarshal anything named by the file, so a `Lambda` is still refused in safe mode on
the migrated path (`fuse_cli.formats.hdf5` loads the result).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

Config = dict[str, Any]
Rule = Callable[[Config], bool]

_MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})


# --- walking a config ---------------------------------------------------------------


def objects(node: Any) -> Iterator[Config]:
    """Yield every serialized object (a dict with `class_name` and `config`), depth first.

    This reaches layers inside Sequential and Functional models, inside wrappers such as
    Bidirectional and TimeDistributed, and also initializers and other nested objects,
    which the rules skip by class name.
    """
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and "config" in node:
            yield node
        for value in node.values():
            yield from objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects(value)


def _layers_of(model_config: Any) -> list[Config] | None:
    """The `layers` list of a Sequential/Functional config body, or None."""
    if isinstance(model_config, dict) and isinstance(model_config.get("layers"), list):
        return model_config["layers"]
    return None


def _drop_keys(config: Any, *keys: str) -> bool:
    """Remove `keys` from a layer config dict; whether any was there."""
    if not isinstance(config, dict):
        return False
    found = [key for key in keys if key in config]
    for key in found:
        del config[key]
    return bool(found)


def _drop_if_equal(config: Any, key: str, value: Any) -> bool:
    """Remove `key` from a layer config dict when it holds exactly `value` (same type)."""
    if not isinstance(config, dict) or key not in config:
        return False
    stored = config[key]
    if type(stored) is not type(value) or stored != value:
        return False
    del config[key]
    return True


# --- the rewrite rules --------------------------------------------------------------


def rule_sequential_list_config(config: Config) -> bool:
    """Wrap a Sequential config stored as a bare list of layers.

    Writers: standalone Keras 1.x and 2.0.0–2.2.2 (and tf.keras before TF 1.11), whose
    `Sequential.get_config()` returned the list of layer configs; Keras 2.2.3 changed it
    to `{"name": ..., "layers": [...]}` (keras-team/keras#11133).
    Keras 3.15.1 fails with `TypeError: pop expected at most 1 argument, got 2`.
    The list carries no model name, so the model is named `sequential` (nested ones
    keep the name their parent records, when it records one).
    """
    changed = False
    for count, obj in enumerate(list(objects(config))):
        if obj["class_name"] == "Sequential" and isinstance(obj["config"], list):
            name = obj.get("name") or ("sequential" if obj is config else f"sequential_{count}")
            obj["config"] = {"name": name, "layers": obj["config"]}
            changed = True
    return changed


def _declared_input(layer: Config) -> tuple[list[Any], str] | None:
    """The batch input shape and dtype a layer (or nested model) declares, if any."""
    body = layer.get("config")
    if layer.get("class_name") in _MODEL_CLASSES:
        layers = _layers_of(body)
        return _declared_input(layers[0]) if layers else None
    if isinstance(body, dict) and isinstance(body.get("batch_input_shape"), list):
        dtype = body.get("dtype")
        # A mixed-precision policy is the layer's compute dtype, not the input's.
        return body["batch_input_shape"], dtype if isinstance(dtype, str) else "float32"
    return None


def rule_sequential_input_layer(config: Config) -> bool:
    """Give a Sequential whose first layer carries `batch_input_shape` an InputLayer.

    Writers: standalone Keras 2.x (`Sequential.layers` hid the InputLayer, so the first
    layer's config carried `batch_input_shape`; seen in 2.2.2 and 2.2.4 files), in the
    dict form and the list form above. tf.keras 2.x writes the InputLayer itself.
    Keras 3.15.1 reads `batch_input_shape` as a shape *without* the batch axis and adds
    one: a Conv2D fails with `Kernel shape must have the same length as input, but
    received kernel of shape (3, 3, 1, 4) and input of shape (None, None, 60, 60, 1)`,
    and a Dense first layer loads silently with one axis too many.
    The InputLayer added is the one tf.keras 2.x writes: `<first layer>_input`.
    """
    changed = False
    for obj in list(objects(config)):
        layers = _layers_of(obj["config"]) if obj["class_name"] == "Sequential" else None
        if not layers or layers[0].get("class_name") == "InputLayer":
            continue
        declared = _declared_input(layers[0])
        if declared is None:
            continue
        shape, dtype = declared
        first_name = layers[0].get("config", {}).get("name", "sequential")
        input_layer = {
            "class_name": "InputLayer",
            "config": {
                "batch_input_shape": list(shape),
                "dtype": dtype,
                "sparse": False,
                "name": f"{first_name}_input",
            },
        }
        layers.insert(0, input_layer)
        changed = True
    return changed


def _layer_entries(config: Config) -> Iterator[Config]:
    """Every layer entry of every model (Sequential, Functional) in the config."""
    for obj in list(objects(config)):
        if obj["class_name"] in _MODEL_CLASSES:
            yield from (e for e in _layers_of(obj["config"]) or [] if isinstance(e, dict))


def _has_keras2_module_path(entry: Config) -> bool:
    module = entry.get("module")
    if not isinstance(module, str):
        return False
    if not (module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras."))):
        return False
    # Built-in layers have none; Keras 2's own model classes name themselves.
    return entry.get("registered_name") in (None, entry["class_name"])


def rule_keras2_module_paths(config: Config) -> bool:
    """Drop the Keras 2 `module` annotations that tf.keras 2.13+ writes inside nested models.

    Writers: tf.keras/Keras 2.13–2.15 (`"module": "keras.src.engine.functional"`) and
    tf-keras 2.15+ (`"module": "tf_keras.src.engine.functional"`; seen with 2.21.0),
    which serialize the layers of a nested model in the new format. Keras 3.15.1 then
    looks the classes up by those Keras 2 module paths and fails with `Could not locate
    class 'Functional'` (tf_keras) or `Could not deserialize class 'Functional' because
    its parent module keras.src.engine.functional cannot be imported`; once past that,
    a nested BatchNormalization with `"axis": [3]` fails with `could not be deserialized
    properly`. Without the annotations, Keras 3 reads these layer entries on its legacy
    H5 path, which knows the classes by name and converts such values, as it does for
    the top-level layers of the same file. Only built-in classes are touched; custom
    objects (a `registered_name` of their own) stay as stored.
    """
    changed = False
    for entry in _layer_entries(config):
        if _has_keras2_module_path(entry):
            del entry["module"]
            entry.pop("registered_name", None)
            changed = True
    return changed


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
            changed |= _drop_if_equal(obj["config"], "groups", 1)
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
            changed |= _drop_keys(
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
            changed |= _drop_keys(obj["config"], "trainable", "noise_shape")
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
            changed |= _drop_if_equal(obj["config"], "time_major", False)
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
            changed |= _drop_keys(obj["config"], "dtype")
    return changed


def _single_tensor(value: Any) -> list[Any] | None:
    """The one `[layer, node, tensor]` reference of a one-element list, or None."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        ref = value[0]
        if len(ref) == 3 and isinstance(ref[0], str):
            return ref
    return None


def rule_nested_functional_single_io(config: Config) -> bool:
    """Unwrap the one-element input and output lists of a nested Functional model.

    Writers: every Keras 2 (`input_layers`/`output_layers` are always lists of
    `[layer, node, tensor]`), e.g. Teachable Machine's `keras_model.h5` (Keras 2.4.0:
    a Functional MobileNetV2 `model1` inside a Sequential, followed there by a
    GlobalAveragePooling2D). Keras 2 called a model whose lists hold one tensor with
    that tensor and returned one tensor; Keras 3.15.1 keeps the list, so the nested
    model returns a one-element list, the next layer of the Sequential receives it,
    and loading fails with `Layer "functional_N" expects 1 named input(s) ... but it
    received 2 input tensors`. Stored as the bare reference, Keras 3 builds the model
    with one input and one output, as Keras 2 did. Only nested models are rewritten;
    multi-tensor lists stay lists.
    """
    changed = False
    for obj in list(objects(config)):
        if obj is config or obj["class_name"] not in ("Functional", "Model"):
            continue
        body = obj["config"]
        if not isinstance(body, dict) or _layers_of(body) is None:
            continue
        for key in ("input_layers", "output_layers"):
            ref = _single_tensor(body.get(key))
            if ref is not None:
                body[key] = ref
                changed = True
    return changed


_WRAPPERS = frozenset({"Bidirectional", "TimeDistributed"})


def rule_wrapped_layer_module(config: Config) -> bool:
    """Name Keras's layer module for the layer inside a TimeDistributed or Bidirectional.

    Writers: standalone Keras 2.x and tf.keras before 2.13 (seen with 2.2.4, 2.2.5 and
    2.2.4-tf), which stored a wrapper's `layer` (and Bidirectional's `backward_layer`)
    as `{"class_name", "config"}` only. Keras 3.15.1 deserializes these inner configs
    with its new-format deserializer, which needs a module, and fails with `Could not
    locate class 'Dense'` (or 'LSTM', 'GRU'). The module added is `keras.layers`, where
    Keras 3 looks built-in layers up; a class that is not a Keras layer still fails.
    """
    changed = False
    for obj in objects(config):
        if obj["class_name"] not in _WRAPPERS or not isinstance(obj["config"], dict):
            continue
        for key in ("layer", "backward_layer"):
            inner = obj["config"].get(key)
            if isinstance(inner, dict) and "class_name" in inner and "module" not in inner:
                inner["module"] = "keras.layers"
                inner["registered_name"] = None
                changed = True
    return changed


_RECURRENT = frozenset(
    {"Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "GRU", "LSTM", "RNN", "SimpleRNN"}
)


def _tensor_reference(ref: list[Any]) -> Config:
    # A Keras 3 node argument naming the output `ref[2]` of node `ref[1]` of layer
    # `ref[0]`; Keras replaces it with that tensor, so shape and dtype are placeholders.
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [], "dtype": "float32", "keras_history": list(ref[:3])},
    }


def _initial_state_node(node: Any) -> Config | None:
    """A Keras 2 RNN call `[sequence, state, ...]` as Keras 3 call data, or None."""
    if not isinstance(node, list) or len(node) < 2:
        return None
    if not all(isinstance(ref, list) and len(ref) in (3, 4) for ref in node):
        return None
    kwargs = [ref[3] if len(ref) == 4 else {} for ref in node]
    if any(k != kwargs[0] or not isinstance(k, dict) for k in kwargs):
        return None
    return {
        "args": [_tensor_reference(node[0])],
        "kwargs": {**kwargs[0], "initial_state": [_tensor_reference(r) for r in node[1:]]},
    }


def rule_rnn_initial_state_nodes(config: Config) -> bool:
    """Pass the states given to a recurrent layer as `initial_state`, as Keras 2 did.

    Writers: every Keras 2 (seen with 2.1.5, 2.2.0, 2.2.4, 2.2.5 and tf-keras 2.21.0),
    e.g. the encoder-decoder of Keras's `lstm_seq2seq` example: a call `LSTM(...)(x,
    initial_state=[h, c])` is stored as one node whose inputs are `[x, h, c]`, and
    Keras 2's RNN split them again. Keras 3.15.1 passes the three tensors as the
    sequence and fails with `Layer "lstm_2" expects 1 input(s), but it received 3
    input tensors`. The node is rewritten in Keras 3's own call form: the first tensor
    as the sequence, the others as `initial_state`.
    """
    changed = False
    for obj in list(objects(config)):
        if obj["class_name"] not in ("Functional", "Model"):
            continue
        for entry in _layers_of(obj["config"]) or []:
            nodes = entry.get("inbound_nodes") if isinstance(entry, dict) else None
            if entry.get("class_name") not in _RECURRENT or not isinstance(nodes, list):
                continue
            for i, node in enumerate(nodes):
                rewritten = _initial_state_node(node)
                if rewritten is not None:
                    nodes[i] = rewritten
                    changed = True
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
RULES: tuple[Rule, ...] = (
    rule_sequential_list_config,
    rule_sequential_input_layer,
    rule_keras2_module_paths,
    rule_conv_groups,
    rule_separable_conv_kernel_arguments,
    rule_spatial_dropout_arguments,
    rule_rnn_time_major,
    rule_initializer_dtype,
    rule_nested_functional_single_io,
    rule_wrapped_layer_module,
    rule_rnn_initial_state_nodes,
    rule_gru_reset_after,
    rule_keras2_hard_sigmoid,
    rule_layer_activation_module,
)

# Forms Keras 3 may load without an error, building a model that differs from the file.
_SILENT_MISREADS: tuple[Rule, ...] = (rule_sequential_input_layer, rule_keras2_hard_sigmoid)


# --- refusals: what no rewrite makes exact ----------------------------------------

Refusal = Callable[[Config, str], "str | None"]


def _version_tuple(version: str) -> tuple[int, ...] | None:
    """`(2, 2, 4)` of `2.2.4` or `2.2.4-tf`; None when no release can be read."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version.split("-", 1)[0]).release
    except InvalidVersion:
        return None


def _resizes_like_tensorflow_1(version: str) -> bool:
    """Whether Keras `version` resized images with TF 1's `resize_bilinear` (or may have)."""
    numbers = _version_tuple(version)
    if numbers is None:
        return True  # no version recorded: the writer cannot be placed
    if version.endswith("-tf"):
        return numbers <= (2, 2, 4)  # tf.keras of TF 1.x (2.2.4-tf is TF 1.13–2.0)
    return numbers < (2, 4)  # standalone Keras; 2.4+ is tf.keras of TF 2.2+


def refuse_tf1_bilinear_upsampling(config: Config, version: str) -> str | None:
    """Refuse a bilinear UpSampling2D written by a Keras that resized like TensorFlow 1.

    Writers: standalone Keras 2.2.3–2.3.1 (which added `interpolation`) and tf.keras of
    TF 1.x (`2.1.6-tf`, `2.2.4-tf`), whose `resize_images` called TF 1's
    `resize_bilinear` without half-pixel centers; a file with no `keras_version` too,
    since its writer cannot be placed. Keras 3.15.1 (like tf.keras of TF 2 and
    tf-keras, hence the corpus references) resizes with `tf.image.resize`, which
    samples at half-pixel centers: the same weights compute another function, and it
    loads without an error. No rewrite can express the old sampling with Keras 3's
    layers, so the file is refused, naming the layer. `nearest` (the default) computes
    the same in both and loads.
    """
    if not _resizes_like_tensorflow_1(version):
        return None
    for obj in objects(config):
        body = obj["config"]
        if obj["class_name"] != "UpSampling2D" or not isinstance(body, dict):
            continue
        if body.get("interpolation") == "bilinear":
            return (
                f"layer {body.get('name')!r} (UpSampling2D, bilinear) was computed by "
                f"Keras {version} with TensorFlow 1's resize_bilinear, which Keras 3 does "
                "not reproduce (it samples at half-pixel centers)"
            )
    return None


def refuse_tf_op_layers(config: Config, version: str) -> str | None:
    """Refuse the layers tf.keras made from TensorFlow functions (`TFOpLambda`).

    Writers: tf.keras 2.4–2.15 and tf-keras (seen with 2.10.0 and 2.12.0), which record
    a TensorFlow function called on a Keras tensor (`tf.gather(x, ...)`, `x[:, 0]`) as
    a `TFOpLambda` or `SlicingOpLambda` layer naming the function (`compat.v1.gather`,
    `__operators__.getitem`). Keras 3.15.1 has no such layers and fails with `Unknown
    layer: 'SlicingOpLambda'`; building them would mean calling TensorFlow functions the
    file names, and no rule maps them to Keras 3 operations exactly. The refusal names
    the layer and the function.
    """
    for obj in objects(config):
        body = obj["config"]
        if obj["class_name"] in ("TFOpLambda", "SlicingOpLambda") and isinstance(body, dict):
            return (
                f"layer {body.get('name')!r} ({obj['class_name']}) calls the TensorFlow "
                f"function {body.get('function')!r} by name, which Keras 3 cannot build"
            )
    return None


REFUSALS: tuple[Refusal, ...] = (refuse_tf1_bilinear_upsampling, refuse_tf_op_layers)


def refusal(config: Config, version: str) -> str | None:
    """Why `config`, written by Keras `version`, cannot be loaded exactly; None if it can."""
    for check in REFUSALS:
        reason = check(config, version)
        if reason:
            return reason
    return None


def rule_name(rule: Rule) -> str:
    """The name a rule is reported by: its function name without `rule_`."""
    return rule.__name__.removeprefix("rule_")


def migrate_config(config: Config) -> tuple[Config, list[str]]:
    """Apply every rewrite rule to a copy of a legacy `model_config`.

    Args:
        config: the decoded `model_config` attribute (`{"class_name", "config"}`).

    Returns:
        The migrated copy and the names of the rules that changed it, in rule order.
    """
    migrated = copy.deepcopy(config)
    applied = [rule_name(rule) for rule in RULES if rule(migrated)]
    return migrated, applied


def misread_silently(config: Config) -> bool:
    """Whether Keras 3 would load `config` without an error but build another model."""
    return any(rule(copy.deepcopy(config)) for rule in _SILENT_MISREADS)
