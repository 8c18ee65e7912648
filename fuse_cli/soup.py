"""Weight-space merging: a "soup" is one model of the members' architecture whose every
float variable is the weighted average of theirs (Wortsman et al., 2022).

Averaging is right only for members fine-tuned from one starting point, so nothing here
assumes it is good: `fuse merge --mode soup` says it cannot know, and `fuse tune --mode
soup` measures it (`fuse_cli.soup_tuning`). This module holds what both need:

- `check_architecture`: the members are one architecture — equal configs with names
  aside, the same variables in the same order with the same shapes and dtypes — and
  their integer and bool variables are equal (else exit 4, naming the first difference);
- `average`: Σ wᵢ·θᵢ per variable, in float64 in member order, rounded once to the
  variable's dtype (verification recomputes exactly this);
- `recompute_batchnorm`: BatchNormalization's moving statistics estimated again from
  data after averaging, as SWA does (PyTorch's `update_bn`): one streamed pass, a
  cumulative (momentum-free) average of the batch statistics, weighted by batch rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.errors import IncompatibleModelsError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import keras

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SHOWN = 60  # characters of a differing config value shown in a message


def variables(model: keras.Model) -> list[Any]:
    """The variables a model file stores (`model.weights`), in the order Keras saves them."""
    return list(model.weights)


def values(model: keras.Model) -> list[np.ndarray]:
    """Each stored variable's value as a numpy array."""
    import keras

    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables(model)]


def is_float(variable: Any) -> bool:
    """Whether a variable is averaged (a float) or must be equal (integers, bools)."""
    return str(variable.dtype) in FLOAT_DTYPES


def average(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ wᵢ·aᵢ, accumulated in float64 in member order, rounded once to aᵢ's dtype."""
    total = np.zeros(arrays[0].shape, dtype=np.float64)
    for w, a in zip(weights, arrays, strict=True):
        total += np.float64(w) * a.astype(np.float64)
    return total.astype(arrays[0].dtype)


def soup_values(
    members: Sequence[Sequence[np.ndarray]], floats: Sequence[bool], weights: Sequence[float]
) -> list[np.ndarray]:
    """The soup's variables: floats averaged, the rest the first member's (equal in all)."""
    return [
        average([m[k] for m in members], weights) if floats[k] else members[0][k]
        for k in range(len(floats))
    ]


# --- one architecture ---------------------------------------------------------------


def check_architecture(models: Sequence[keras.Model], labels: Sequence[str]) -> None:
    """Whether the members are one architecture with equal non-float variables.

    Raises:
        IncompatibleModelsError: Naming the first layer or variable that differs and how.
    """
    from fuse_cli.formats._keras_private import all_layers

    first = models[0]
    first_layers = all_layers(first)
    first_config = _canonical(first.get_config(), first_layers)
    for model, label in zip(models[1:], labels[1:], strict=True):
        where = f"{label} and {labels[0]} are not one architecture"
        layers = all_layers(model)
        if len(layers) != len(first_layers):
            raise IncompatibleModelsError(
                f"{where}: {label} has {len(layers) - 1} layers, {labels[0]} "
                f"{len(first_layers) - 1}; --mode soup averages the variables of members "
                "fine-tuned from one starting point"
            )
        for layer, other in zip(layers, first_layers, strict=True):
            difference = _layer_difference(layer, other, layers, first_layers)
            if difference:
                theirs = f" ({labels[0]}: {other.name!r})" if other.name != layer.name else ""
                raise IncompatibleModelsError(
                    f"{where}: layer {layer.name!r} ({type(layer).__name__}){theirs} "
                    f"differs: {difference}"
                )
        if _canonical(model.get_config(), layers) != first_config:
            raise IncompatibleModelsError(
                f"{where}: the same layers are connected differently"
            )
        _check_variables(model, label, first, labels[0])


def _check_variables(model: keras.Model, label: str, first: keras.Model, first_label: str) -> None:
    ours, theirs = variables(model), variables(first)
    if len(ours) != len(theirs):
        raise IncompatibleModelsError(
            f"{label} has {len(ours)} variables, {first_label} {len(theirs)}: not one "
            "architecture"
        )
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if tuple(a.shape) != tuple(b.shape) or str(a.dtype) != str(b.dtype):
            raise IncompatibleModelsError(
                f"{label}: variable {k} {a.path!r} is {tuple(a.shape)} {a.dtype}, but "
                f"{first_label}'s {b.path!r} is {tuple(b.shape)} {b.dtype}"
            )
        if not is_float(a):
            import keras

            x = keras.ops.convert_to_numpy(a)
            y = keras.ops.convert_to_numpy(b)
            if not np.array_equal(x, y):
                raise IncompatibleModelsError(
                    f"{label}: variable {k} {a.path!r} ({a.dtype}) differs from "
                    f"{first_label}'s: integer and bool variables are not averaged, so a "
                    "soup needs them equal in every member"
                )


def _layer_difference(layer: Any, other: Any, layers: list[Any], others: list[Any]) -> str:
    """What differs between two layers at one position, names aside ('' if nothing)."""
    if type(layer) is not type(other):
        return f"{type(layer).__name__} vs {type(other).__name__}"
    if _is_model(layer):  # a nested model's layers are compared one by one
        return ""
    ours = _canonical(_layer_config(layer), layers)
    theirs = _canonical(_layer_config(other), others)
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            return f"{key} {_short(ours.get(key))} vs {_short(theirs.get(key))}"
    shapes = [tuple(v.shape) for v in layer.weights]
    other_shapes = [tuple(v.shape) for v in other.weights]
    if shapes != other_shapes:
        return f"variable shapes {shapes} vs {other_shapes}"
    return ""


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _layer_config(layer: Any) -> dict[str, Any]:
    try:
        config = layer.get_config()
    except NotImplementedError:
        return {}
    return dict(config) if isinstance(config, dict) else {}


def _canonical(config: Any, layers: list[Any]) -> Any:
    """A config with every layer name replaced by the layer's position (names aside)."""
    positions = {str(layer.name): f"<layer {k}>" for k, layer in enumerate(layers)}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        if isinstance(value, str):
            return positions.get(value, value)
        return value

    return walk(config)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


# --- building and checking ------------------------------------------------------------


def rebuild(model: keras.Model, name: str) -> keras.Model:
    """A new model of `model`'s architecture (from its config, as loading does), named
    `name`, its variables in the same order.

    Raises:
        IncompatibleModelsError: Its config does not rebuild the same variables.
    """
    config = model.get_config()
    fresh = type(model).from_config(config)
    if [tuple(v.shape) for v in variables(fresh)] != [tuple(v.shape) for v in variables(model)]:
        raise IncompatibleModelsError(
            f"{model.name}: its config does not rebuild the same variables; a soup "
            "needs a model Keras can rebuild from its config"
        )
    fresh.name = name
    return fresh


def assign(model: keras.Model, arrays: Sequence[np.ndarray]) -> None:
    """Give `model`'s stored variables these values, in order."""
    for variable, value in zip(variables(model), arrays, strict=True):
        variable.assign(value)


def check_values(written: Sequence[np.ndarray], expected: Sequence[np.ndarray],
                 paths: Sequence[str], what: str) -> None:
    """Each written variable equals the expected one exactly (same dtype, bit for bit).

    Raises:
        VerificationError: Naming the first variable that differs and by how much.
    """
    from fuse_cli.errors import VerificationError

    if len(written) != len(expected):
        raise VerificationError(
            f"{what}: has {len(written)} variables; the soup has {len(expected)}"
        )
    for path, a, e in zip(paths, written, expected, strict=True):
        if a.shape != e.shape or not np.array_equal(a, e, equal_nan=True):
            error = (float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))))
                     if a.shape == e.shape and a.size else float("nan"))
            raise VerificationError(
                f"{what}: variable {path!r} differs from the members' weighted average "
                f"by up to {error:.3g}"
            )


# --- BatchNormalization statistics ----------------------------------------------------


def batchnorm_layers(model: keras.Model) -> list[Any]:
    """Every BatchNormalization layer, nested ones included."""
    import keras

    from fuse_cli.formats._keras_private import all_layers

    return [layer for layer in all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_batchnorm(
    model: keras.Model,
    batches: Iterable[Any],
    rows_of: Callable[[Any], int],
    advance: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Estimate every BatchNormalization's moving mean and variance again from data.

    One pass: each batch runs through the model in inference mode, except that each
    BatchNormalization normalizes with the batch's own statistics and folds them into
    its moving ones with momentum `seen / (seen + rows)`, so that after the pass they are
    the row-weighted average of the batches' means and (biased) variances.

    Returns:
        `{"layers": …, "rows": …, "batches": …}`.
    """
    layers = batchnorm_layers(model)
    seen = count = 0
    if not layers:
        return {"layers": 0, "rows": 0, "batches": 0}
    with _batch_statistics(layers) as set_momentum:
        for batch in batches:
            rows = rows_of(batch)
            set_momentum(seen / (seen + rows))
            model(batch, training=False)
            seen += rows
            count += 1
            if advance is not None:
                advance(seen)
    return {"layers": len(layers), "rows": seen, "batches": count}


@contextmanager
def _batch_statistics(layers: Sequence[Any]) -> Iterator[Callable[[float], None]]:
    """While open, each layer's call uses and updates batch statistics (training=True);
    its momentum, trainable flag and call are restored after."""
    saved = [(layer.momentum, layer.trainable) for layer in layers]

    def forced(call: Callable[..., Any]) -> Callable[..., Any]:
        def run(inputs: Any, training: Any = None, mask: Any = None) -> Any:
            return call(inputs, training=True, mask=mask)
        return run

    for layer in layers:
        layer.trainable = True
        layer.call = forced(layer.call)

    def set_momentum(momentum: float) -> None:
        for layer in layers:
            layer.momentum = momentum

    try:
        yield set_momentum
    finally:
        for layer, (momentum, trainable) in zip(layers, saved, strict=True):
            del layer.call
            layer.momentum = momentum
            layer.trainable = trainable
