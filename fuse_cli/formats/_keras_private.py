"""Every private Keras symbol fuse uses, in one place.

Keras 3 has no public entry point for some of what fuse needs: loading a `.keras`
archive from an already-checked open file, the legacy (Keras 2) HDF5 loader and config
deserializer, Keras's guarded HDF5 reads. They live under `keras.src`, which a Keras 3.x
release may move. Each one is looked up here, by name, when it is needed; a symbol that
moved becomes one clear line naming the installed Keras version (exit 2: the
installation, not the user's file, is at fault) instead of a crash or a file blamed for
it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from fuse_cli.errors import UsageError

SAVING_LIB = "keras.src.saving.saving_lib"
SERIALIZATION_LIB = "keras.src.saving.serialization_lib"
LEGACY_H5_FORMAT = "keras.src.legacy.saving.legacy_h5_format"
LEGACY_JSON_UTILS = "keras.src.legacy.saving.json_utils"
LEGACY_SAVING_OPTIONS = "keras.src.legacy.saving.saving_options"
LEGACY_SAVING_UTILS = "keras.src.legacy.saving.saving_utils"
GLOBAL_STATE = "keras.src.backend.common.global_state"
BACKEND = "keras.src.backend"


class KerasInternalsError(UsageError):
    """The installed Keras lacks an internal that fuse relies on (exit 2)."""


def private(module: str, name: str) -> Any:
    """Return `module.name` from Keras's private package.

    Raises:
        KerasInternalsError: The module or the name is not there in the installed Keras.
    """
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise KerasInternalsError(
            f"the installed Keras {_keras_version()} has no {module}.{name}, which fuse "
            "needs to load model files safely; install a Keras release fuse supports "
            "(pip install 'keras>=3.15.1,<4') or upgrade fuse-cli"
        ) from None


def _keras_version() -> str:
    try:
        import keras

        return str(keras.__version__)
    except ImportError:
        return "(not importable)"


# --- the calls fuse makes ---------------------------------------------------------------


def load_keras_archive(fileobj: Any, *, safe_mode: bool) -> Any:
    """`saving_lib.load_model` on an open `.keras` archive, as `keras.saving.load_model`."""
    load = private(SAVING_LIB, "load_model")
    return load(fileobj, custom_objects=None, compile=False, safe_mode=safe_mode)


def load_legacy_hdf5(source: Any, *, safe_mode: bool) -> Any:
    """What `keras.saving.load_model` runs for a `.h5` path, on an open h5py file."""
    load = private(LEGACY_H5_FORMAT, "load_model_from_hdf5")
    return load(source, custom_objects=None, compile=False, safe_mode=safe_mode)


def legacy_model_from_config(config_json: str, *, safe_mode: bool) -> Any:
    """Build a model from a legacy (Keras 2) config, as Keras's H5 loader does.

    Runs Keras's legacy deserializer under the same legacy-config and safe-mode scopes
    as `keras.saving.load_model` for `.h5` files; a Lambda is refused there exactly as on
    the plain path.
    """
    decode = private(LEGACY_JSON_UTILS, "decode")
    option_scope = private(LEGACY_SAVING_OPTIONS, "keras_option_scope")
    model_from_config = private(LEGACY_SAVING_UTILS, "model_from_config")
    safe_mode_scope = private(SERIALIZATION_LIB, "SafeModeScope")
    decoded = decode(config_json)
    with option_scope(use_legacy_config=True), safe_mode_scope(safe_mode):
        return model_from_config(decoded, custom_objects=None)


def safe_h5_group(parent: Any, name: str) -> Any:
    """Keras's guarded group read: no external/soft links."""
    return private(SAVING_LIB, "safe_get_h5_group")(parent, name)


def safe_h5_dataset(parent: Any, name: str) -> Any:
    """Keras's guarded dataset read: no external/soft links, virtual or "bomb" datasets."""
    return private(SAVING_LIB, "safe_get_h5_dataset")(parent, name)


# The object types whose attribute skipsets Keras's `.keras` saving and loading look up
# for every layer they walk (`saving_lib._walk_saveable`).
WALKED_TYPES = ("Operation", "Layer", "Functional", "Sequential")


def cache_keras_skipsets() -> None:
    """Cache the attribute skipsets that Keras recomputes for every layer it saves or loads.

    `keras.src.saving.saving_lib.get_attr_skipset` (Keras 3.15.1) stores its result
    under `saving_attr_skipset_<type>` but looks it up under `saving_attr_skiplist_<type>`,
    so the cache never hits: each layer walked builds a throwaway `Layer()` and lists
    its attributes (measured: 0.5 s of a 2.6 s load plus save of a two-MobileNetV2
    ensemble).
    This stores Keras's own result under the key Keras reads; the sets are the same,
    only computed once. Harmless once Keras fixes the key (then unused), and skipped if
    a later Keras moves these internals: it only saves time, so unlike the loaders above
    it never fails.
    """
    try:
        get_attribute = private(GLOBAL_STATE, "get_global_attribute")
        set_attribute = private(GLOBAL_STATE, "set_global_attribute")
        get_skipset = private(SAVING_LIB, "get_attr_skipset")
        for obj_type in WALKED_TYPES:
            key = f"saving_attr_skiplist_{obj_type}"
            if get_attribute(key) is None:
                set_attribute(key, get_skipset(obj_type))
    except (KerasInternalsError, AttributeError, ValueError):
        return


# --- private attributes of Keras's graph objects ---------------------------------------------
# Keras 3 keeps a functional graph in private attributes: which layer call made a symbolic
# tensor (`_keras_history`), a layer's calls (`_inbound_nodes`), every layer inside a
# layer (`_flatten_layers`), the mask travelling beside a tensor (`_keras_mask`).


def keras_history(tensor: Any) -> tuple[Any, int, int] | None:
    """`(layer, node_index, tensor_index)` of the call that made a symbolic tensor, or None
    for a tensor that no layer made."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    layer, node_index, tensor_index = history
    return layer, int(node_index), int(tensor_index)


def inbound_nodes(layer: Any) -> list[Any]:
    """Each call of `layer` in the graphs it is part of (Keras's nodes), in order.

    Raises:
        KerasInternalsError: A Keras layer without them (a release that moved them).
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes is None:
        raise KerasInternalsError(
            f"the installed Keras {_keras_version()} keeps no Layer._inbound_nodes, which "
            "fuse needs to read a model's graph; install a Keras release fuse supports "
            "(pip install 'keras>=3.15.1,<4') or upgrade fuse-cli"
        )
    return list(nodes)


def graph_nodes(model: Any) -> list[Any] | None:
    """Every layer call (Keras node) in `model`'s own graph, each once, found by walking
    back from its outputs; None when a tensor has no history (not a graph)."""
    inputs = {id(t) for t in getattr(model, "inputs", None) or []}
    found: dict[int, Any] = {}
    stack = list(getattr(model, "outputs", None) or [])
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen or id(tensor) in inputs:
            continue
        seen.add(id(tensor))
        history = keras_history(tensor)
        if history is None:
            return None
        operation, node_index, _ = history
        nodes = inbound_nodes(operation)
        if node_index >= len(nodes):
            return None
        node = nodes[node_index]
        if id(node) not in found:
            found[id(node)] = node
            stack.extend(getattr(node, "input_tensors", None) or [])
    return list(found.values())


def node_outputs(layer: Any) -> list[list[Any]]:
    """Each call of `layer` in its model's graph: the symbolic tensors that call outputs."""
    return [list(getattr(node, "outputs", None) or []) for node in inbound_nodes(layer)]


def all_layers(layer: Any) -> list[Any]:
    """`layer` and every layer inside it (nested models, wrappers), depth first."""
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        raise KerasInternalsError(
            f"the installed Keras {_keras_version()} has no Layer._flatten_layers, which "
            "fuse needs to walk nested models; install a Keras release fuse supports "
            "(pip install 'keras>=3.15.1,<4') or upgrade fuse-cli"
        )
    return list(flatten(include_self=True, recursive=True))


def smart_resize(image: Any, size: tuple[int, int], interpolation: str) -> Any:
    """Keras's `smart_resize` (crop to the aspect ratio, then resize) on TensorFlow
    tensors, as `image_dataset_from_directory(crop_to_aspect_ratio=True)` calls it inside
    a `tf.data` map."""
    resize = private("keras.src.utils.image_utils", "smart_resize")
    tf_backend = importlib.import_module("keras.src.backend.tensorflow")
    return resize(image, size, interpolation=interpolation, data_format="channels_last",
                  backend_module=tf_backend)


def keras_mask(tensor: Any) -> Any | None:
    """The mask Keras carries beside a tensor, or None."""
    return getattr(tensor, "_keras_mask", None)


# --- the variable budget ------------------------------------------------------------------


class VariableBudget:
    """Bytes that the variables Keras creates inside `variable_budget` may take.

    Keras allocates every variable a config declares (`Dense(2**25)`) before it reads
    a single stored weight; this is charged before each allocation, so a file that
    declares more than it may cost is refused before the memory is taken.
    """

    def __init__(self, limit: int, refuse: Callable[[int, int], Exception]) -> None:
        self.limit = limit
        self.used = 0
        self.refuse = refuse
        self.refused: Exception | None = None

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` more, or raise (and keep raising) once past the limit."""
        if self.refused is None:
            self.used += nbytes
            if self.used <= self.limit:
                return
            self.refused = self.refuse(self.used, self.limit)
        raise self.refused


_BUDGET: contextvars.ContextVar[VariableBudget | None] = contextvars.ContextVar(
    "fuse_variable_budget", default=None
)


@contextlib.contextmanager
def variable_budget(
    limit: int, refuse: Callable[[int, int], Exception]
) -> Iterator[VariableBudget]:
    """Refuse, with `refuse(used, limit)`, variables past `limit` bytes created in the block."""
    _install_budget_hook()
    budget = VariableBudget(limit, refuse)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def _install_budget_hook() -> None:
    """Wrap the backend Variable's `_initialize_with_initializer`, once: the one place a
    variable with a known shape takes its memory."""
    variable_class = private(BACKEND, "Variable")
    original = getattr(variable_class, "_initialize_with_initializer", None)
    if original is None:
        raise KerasInternalsError(
            f"the installed Keras {_keras_version()} has no Variable._initialize_with_initializer, "
            "which fuse needs to bound what a model file allocates; install a Keras release "
            "fuse supports (pip install 'keras>=3.15.1,<4')"
        )
    if getattr(original, "_fuse_budget", False):
        return

    def guarded(self: Any, initializer: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.charge(_variable_bytes(self._shape, self._dtype))
        return original(self, initializer)

    guarded._fuse_budget = True  # type: ignore[attr-defined]
    variable_class._initialize_with_initializer = guarded


def _variable_bytes(shape: Any, dtype: Any) -> int:
    """A variable's size: its elements times the bytes of its dtype (4 if unknown)."""
    count = math.prod(int(d) for d in shape) if shape else 1
    bits = re.search(r"(\d+)$", str(dtype))
    itemsize = 1 if str(dtype) == "bool" else (int(bits.group(1)) // 8 if bits else 4)
    return count * max(1, itemsize)
