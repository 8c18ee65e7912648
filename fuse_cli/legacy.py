"""Legacy HDF5 models: load the Keras 2 files that Keras 3 refuses, safely and exactly.

Keras 3 still reads `.h5` files, but many written by Keras 2 (standalone Keras 2.x,
tf.keras 2.x, tf-keras) carry config forms it no longer accepts. `load_legacy_h5` tries
the plain Keras 3 loader first; when that fails, it reads the file's `model_config`
JSON, migrates it through the rewrite rules below, rebuilds the model with Keras's own
legacy deserializer in safe mode, and loads the weights by layer name from the file.

The rules only edit JSON data. They never import, call or unmarshal anything named by
the file, so a `Lambda` is still refused in safe mode on the migrated path. There is
no fallback to tf_keras: it ignores `safe_mode` for `.h5` files.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli.errors import ModelLoadError

if TYPE_CHECKING:
    import h5py
    import keras

Config = dict[str, Any]
Rule = Callable[[Config], bool]

# Keras and h5py raise almost anything on a file they cannot read or a config they
# cannot build; while they work on the user's file, every Exception is about that file.
_LOAD_ERRORS = (Exception,)

_MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})


# --- walking a config ---------------------------------------------------------------


def _objects(node: Any) -> Iterator[Config]:
    """Yield every serialized object (a dict with `class_name` and `config`), depth first.

    This reaches layers inside Sequential and Functional models, inside wrappers such as
    Bidirectional and TimeDistributed, and also initializers and other nested objects,
    which the rules skip by class name.
    """
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and "config" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


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
    for count, obj in enumerate(list(_objects(config))):
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
    for obj in list(_objects(config)):
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
    for obj in list(_objects(config)):
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
    for obj in _objects(config):
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
    for obj in _objects(config):
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
    for obj in _objects(config):
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
    for obj in _objects(config):
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


def _misread_silently(config: Config) -> bool:
    return any(rule(copy.deepcopy(config)) for rule in _SILENT_MISREADS)


# --- reading the file ---------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    config: Config | None
    keras_version: str


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_header(f: h5py.File) -> _Header:
    """The `model_config` JSON and the writer's Keras version; None/unknown if absent."""
    import h5py

    try:
        version = f.attrs.get("keras_version")
        if version is None and isinstance(f.get("model_weights"), h5py.Group):
            version = f["model_weights"].attrs.get("keras_version")
        raw = f.attrs.get("model_config")
        config = json.loads(_text(raw)) if raw is not None else None
    except (OSError, ValueError, RecursionError):
        # Not JSON: the plain loader will say what is wrong in its words.
        return _Header(None, "unknown")
    if not isinstance(config, dict):
        config = None
    return _Header(config, _text(version) if version is not None else "unknown")


def _read_names(group: h5py.Group, key: str) -> list[str]:
    """A list-of-names attribute, including the chunked `key0`, `key1`, ... form."""
    if key in group.attrs:
        return [_text(n) for n in group.attrs[key]]
    names: list[str] = []
    chunk = 0
    while f"{key}{chunk}" in group.attrs:
        names.extend(_text(n) for n in group.attrs[f"{key}{chunk}"])
        chunk += 1
    return names


# --- building and weights -----------------------------------------------------------


def _build_from_config(config: Config, *, safe_mode: bool) -> keras.Model:
    """Rebuild a model from a migrated legacy config, as Keras's H5 loader does.

    Keras 3 has no public entry point for legacy (Keras 2) configs: the new-format
    deserializer behind `keras.models.model_from_json` cannot read them. So this calls
    the code `keras.saving.load_model` runs for `.h5` files, under the same legacy and
    safe-mode scopes; a Lambda is refused there exactly as on the plain path.
    """
    from keras.src.legacy.saving import json_utils, saving_options, saving_utils
    from keras.src.saving import serialization_lib

    decoded = json_utils.decode(json.dumps(config))
    legacy_scope = saving_options.keras_option_scope(use_legacy_config=True)
    with legacy_scope, serialization_lib.SafeModeScope(safe_mode):
        model: keras.Model = saving_utils.model_from_config(decoded, custom_objects=None)
    return model


def _legacy_weights(layer: keras.Layer) -> list[keras.Variable]:
    # The order Keras 2 saved a layer's weights in: trainable first, then the rest.
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _leaf_layers(model: keras.Model) -> Iterator[keras.Layer]:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _pair_by_owner(model: keras.Model, names: list[str]) -> list[tuple[Any, str]] | None:
    """Pair a nested model's variables with saved names by the layer that owns them.

    Keras 2 saves all of a nested model's weights in one group, each named by the layer
    that owns it (`Conv1/kernel:0`), in Keras 2's trainable-then-frozen order. Matching
    each leaf layer by that name, then by order within the layer, does not depend on
    Keras 3 ordering a partly frozen model the same way. None when the names do not
    identify the layers one to one (the caller then uses Keras's own order).
    """
    by_owner: dict[str, list[str]] = {}
    for name in names:
        by_owner.setdefault(name.split("/", 1)[0], []).append(name)
    pairs: list[tuple[Any, str]] = []
    for leaf in _leaf_layers(model):
        targets = _legacy_weights(leaf)
        if not targets:
            continue
        saved = by_owner.pop(leaf.name, None)
        if saved is None or len(saved) != len(targets):
            return None
        pairs.extend(zip(targets, saved, strict=True))
    return pairs if not by_owner else None


def _assign_layer(layer: keras.Layer, group: h5py.Group) -> None:
    import keras
    import numpy as np
    from keras.src.saving.saving_lib import safe_get_h5_dataset

    names = _read_names(group, "weight_names")
    pairs = _pair_by_owner(layer, names) if isinstance(layer, keras.Model) else None
    if pairs is None:
        targets = _legacy_weights(layer)
        if len(targets) != len(names):
            raise ValueError(
                f"layer {layer.name!r} has {len(targets)} weights, the file has {len(names)}"
            )
        pairs = list(zip(targets, names, strict=True))
    for variable, name in pairs:
        # Keras's guarded read: no external/soft links, virtual or "bomb" datasets.
        dataset = safe_get_h5_dataset(group, name)
        if tuple(dataset.shape) != tuple(variable.shape):
            raise ValueError(
                f"weight {name!r} of layer {layer.name!r} has shape {tuple(dataset.shape)}, "
                f"the model expects {tuple(variable.shape)}"
            )
        variable.assign(np.asarray(dataset))


def load_weights_by_name(model: keras.Model, weights: h5py.Group) -> None:
    """Load a Keras 2 `model_weights` group into `model`, matching layers by name.

    Each top-level layer takes the group of the same name (a nested model's group holds
    all of its weights). Every weight's shape is checked; a layer of the model without
    weights in the file, or weights in the file without a layer, is an error.

    Raises:
        ValueError: the file's weights do not fit the model.
    """
    from keras.src.saving.saving_lib import safe_get_h5_group

    saved = set(_read_names(weights, "layer_names"))
    loaded: set[str] = set()
    for layer in model.layers:
        if not _legacy_weights(layer):
            continue
        if layer.name not in saved:
            raise ValueError(f"the file has no weights for layer {layer.name!r}")
        _assign_layer(layer, safe_get_h5_group(weights, layer.name))
        loaded.add(layer.name)
    for name in sorted(saved - loaded):
        if _read_names(safe_get_h5_group(weights, name), "weight_names"):
            raise ValueError(f"the file has weights for layer {name!r}, which the model lacks")


def _load_migrated(f: h5py.File, config: Config, *, safe_mode: bool) -> keras.Model:
    from keras.src.saving.saving_lib import safe_get_h5_group

    model = _build_from_config(config, safe_mode=safe_mode)
    load_weights_by_name(model, safe_get_h5_group(f, "model_weights"))
    return model


# --- the entry point ----------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """Keras's own reason, without the config dump Keras appends to it."""
    text = str(exc).strip() or type(exc).__name__
    marker = "Exception encountered: "
    if marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    from fuse_cli.model_io import first_line

    return first_line(text or type(exc).__name__)


def _is_unsafe_refusal(exc: BaseException) -> bool:
    text = str(exc)
    return "safe_mode" in text or "unsafe" in text.lower()


def _load_error(path: Path, reason: str, version: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {reason} (written by Keras {version})")


def _unsafe_error(path: Path, version: str) -> ModelLoadError:
    reason = (
        "refused in safe mode: the model carries Python code (a Lambda layer); "
        "pass --unsafe only if you trust this file"
    )
    return _load_error(path, reason, version)


def _plain_load(source: Path | h5py.File, *, safe_mode: bool) -> keras.Model:
    # What `keras.saving.load_model` runs for a `.h5` path, called directly because
    # fuse decides the format by content and the file may have any extension.
    from keras.src.legacy.saving import legacy_h5_format

    model: keras.Model = legacy_h5_format.load_model_from_hdf5(
        str(source) if isinstance(source, Path) else source,
        custom_objects=None,
        compile=False,
        safe_mode=safe_mode,
    )
    return model


def load_legacy_h5(
    path: Path, *, safe_mode: bool, h5: h5py.File | None = None
) -> tuple[keras.Model, list[str]]:
    """Load a legacy HDF5 model file, migrating its config when plain Keras 3 refuses it.

    The plain Keras 3 loader runs first. When it fails for a reason other than safe
    mode, the stored config is migrated by `RULES`; if no rule applies, the failure is
    unknown and reported as Keras gave it. A config that Keras 3 would misread without
    an error (`_SILENT_MISREADS`) is migrated without trying the plain loader.

    Args:
        path: an HDF5 model file (named in messages).
        safe_mode: refuse code-carrying layers (Lambda), as `keras.saving.load_model`.
        h5: the file already open, as fuse checked it: everything is read from it, so
            the file that is loaded is the one that was checked. Opened from `path`
            when not given.

    Returns:
        The model and the names of the rewrite rules applied ([] if plain loading worked).

    Raises:
        ModelLoadError: `"{path}: {reason} (written by Keras {version})"`.
    """
    if h5 is None:
        import h5py

        try:
            opened = h5py.File(path, "r")
        except OSError as exc:
            raise _load_error(path, _reason(exc), "unknown") from None
        with opened:
            return load_legacy_h5(path, safe_mode=safe_mode, h5=opened)
    header = _read_header(h5)
    version = header.keras_version
    plain_error: BaseException | None = None
    if header.config is None or not _misread_silently(header.config):
        try:
            return _plain_load(h5, safe_mode=safe_mode), []
        except _LOAD_ERRORS as exc:
            plain_error = exc
        if _is_unsafe_refusal(plain_error):
            raise _unsafe_error(path, version) from None

    try:
        migrated, applied = migrate_config(header.config) if header.config else ({}, [])
    except RecursionError:
        raise _load_error(path, "model_config is nested too deeply", version) from None
    if not applied:
        # No rule knows this failure: report it as Keras gave it.
        reason = _reason(plain_error) if plain_error else "no model config in the file"
        raise _load_error(path, reason, version) from None
    try:
        return _load_migrated(h5, migrated, safe_mode=safe_mode), applied
    except _LOAD_ERRORS as exc:
        if _is_unsafe_refusal(exc):
            raise _unsafe_error(path, version) from None
        reason = f"{_reason(exc)} (after the legacy rules {', '.join(applied)})"
        raise _load_error(path, reason, version) from None
