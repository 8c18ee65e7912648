"""The rewrite rules that carry a Keras 2 `model_config` over to Keras 3, one function each.

Many `.h5` files written by Keras 2 (standalone Keras 2.x, tf.keras 2.x, tf-keras) carry
config forms Keras 3 no longer accepts, or reads differently. Each rule edits the
decoded JSON in place and says whether it changed anything; `migrate_config` applies
them all to a copy, in order. The rules only edit data: they never import, call or
unmarshal anything named by the file, so a `Lambda` is still refused in safe mode on
the migrated path (`fuse_cli.formats.hdf5` loads the result).

This module holds the structural rules and the ordered list of all of them (`RULES`);
the rules on layer arguments and activations are in `legacy_arguments`, the helpers
that walk a config in `legacy_config`, and the refusals in `legacy_refusals`.
"""

from __future__ import annotations

import copy
from typing import Any

from fuse_cli.formats.legacy_arguments import (
    KERAS2_HARD_SIGMOID,
    rule_conv_groups,
    rule_gru_reset_after,
    rule_initializer_dtype,
    rule_keras2_hard_sigmoid,
    rule_layer_activation_module,
    rule_rnn_time_major,
    rule_separable_conv_kernel_arguments,
    rule_spatial_dropout_arguments,
)
from fuse_cli.formats.legacy_config import (
    _MODEL_CLASSES,
    Config,
    Rule,
    layer_entries,
    layers_of,
    objects,
)

__all__ = ["KERAS2_HARD_SIGMOID", "RULES", "Config", "Rule", "migrate_config",
           "misread_silently", "objects", "rule_name"]


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
        layers = layers_of(body)
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
        layers = layers_of(obj["config"]) if obj["class_name"] == "Sequential" else None
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
    for entry in layer_entries(config):
        if _has_keras2_module_path(entry):
            del entry["module"]
            entry.pop("registered_name", None)
            changed = True
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
        if not isinstance(body, dict) or layers_of(body) is None:
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
        for entry in layers_of(obj["config"]) or []:
            nodes = entry.get("inbound_nodes") if isinstance(entry, dict) else None
            if entry.get("class_name") not in _RECURRENT or not isinstance(nodes, list):
                continue
            for i, node in enumerate(nodes):
                rewritten = _initial_state_node(node)
                if rewritten is not None:
                    nodes[i] = rewritten
                    changed = True
    return changed


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
