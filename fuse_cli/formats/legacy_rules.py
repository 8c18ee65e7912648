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


# Order matters: the list form must become a dict before an InputLayer can be added.
RULES: tuple[Rule, ...] = (
    rule_sequential_list_config,
    rule_sequential_input_layer,
    rule_keras2_module_paths,
    rule_conv_groups,
    rule_separable_conv_kernel_arguments,
    rule_spatial_dropout_arguments,
    rule_rnn_time_major,
)

# Forms Keras 3 may load without an error, building a model that differs from the file.
_SILENT_MISREADS: tuple[Rule, ...] = (rule_sequential_input_layer,)


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
