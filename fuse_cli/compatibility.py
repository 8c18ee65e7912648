"""Whether members can be combined: input and output specs, output kinds and signs,
weights, and the input plan.

Everything here reads in-memory `keras.Model` objects and builds nothing; the merge
methods (`fuse_cli.methods`) and the plan (`fuse_cli.planning`) compose these checks,
and `inspect` asks them what-if questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fuse_cli.choices import InputsMode
from fuse_cli.errors import IncompatibleModelsError

if TYPE_CHECKING:
    import keras

Shape = tuple[int | None, ...]

NONNEGATIVE_ACTIVATIONS = frozenset(
    {"softmax", "sigmoid", "relu", "relu6", "softplus", "exponential"}
)
# The layers `--to-probabilities` appends to member i: `to_probabilities_<i>[_<head>]`.
TO_PROBABILITIES_PREFIX = "to_probabilities_"
# What a member's last activation says its outputs are (DESIGN §2, output kinds).
PROBABILITIES = "probabilities"
RAW_SCORES = "raw scores"
OTHER = "other"
PROBABILITY_ACTIVATIONS = frozenset({"softmax", "sigmoid"})
# Keras serializes `activation=None` as "linear".
RAW_SCORE_ACTIVATIONS = frozenset({"linear"})


@dataclass(frozen=True)
class TensorSpec:
    """Shape (batch dimension excluded) and dtype of one input or output."""

    shape: Shape
    dtype: str

    def __str__(self) -> str:
        return shape_text(self.shape)


def shape_text(shape: Sequence[int | None], *, batch: bool = True) -> str:
    """`(None, 8, 8, 1)`: a shape as Keras prints it, with the batch dimension first
    (`batch=False`: `shape` already has it)."""
    dims = ["None" if d is None else str(d) for d in shape]
    if batch:
        dims.insert(0, "None")
    return f"({dims[0]},)" if len(dims) == 1 and not batch else "(" + ", ".join(dims) + ")"


def input_specs(model: keras.Model) -> list[TensorSpec]:
    """The specs of a model's inputs, in order."""
    return [_spec(t) for t in model.inputs]


def output_specs(model: keras.Model) -> list[TensorSpec]:
    """The specs of a model's outputs, flattened in call order."""

    return [_spec(t) for t in model.outputs]


def _spec(tensor: Any) -> TensorSpec:
    shape = tuple(tensor.shape)[1:]
    return TensorSpec(tuple(None if d is None else int(d) for d in shape), str(tensor.dtype))


def merge_shapes(a: Shape, b: Shape) -> Shape | None:
    """Unify two shapes: `None` matches anything, a concrete dim wins.

    Returns:
        The unified shape, or None when ranks or concrete dims differ.
    """
    if len(a) != len(b):
        return None
    merged: list[int | None] = []
    for x, y in zip(a, b, strict=True):
        if x is not None and y is not None and x != y:
            return None
        merged.append(x if x is not None else y)
    return tuple(merged)


def shared_input_specs(models: Sequence[keras.Model]) -> list[TensorSpec] | None:
    """The specs one shared set of inputs would have, or None if they cannot be shared."""
    shared = input_specs(models[0])
    for model in models[1:]:
        specs = input_specs(model)
        if len(specs) != len(shared):
            return None
        unified = []
        for mine, theirs in zip(shared, specs, strict=True):
            shape = merge_shapes(mine.shape, theirs.shape)
            if shape is None or mine.dtype != theirs.dtype:
                return None
            unified.append(TensorSpec(shape, mine.dtype))
        shared = unified
    return shared


def check_outputs(models: Sequence[keras.Model], labels: Sequence[str]) -> list[TensorSpec]:
    """Check that every member has the same number of outputs with matching specs.

    Args:
        models: The members.
        labels: How to name each member in messages (usually its file name).

    Returns:
        The unified spec of each output head.

    Raises:
        IncompatibleModelsError: Naming each file and its shapes.
    """
    first = output_specs(models[0])
    unified = list(first)
    for model, label in zip(models[1:], labels[1:], strict=True):
        specs = output_specs(model)
        if len(specs) != len(first):
            raise IncompatibleModelsError(
                f"{label}: has {len(specs)} outputs {_specs_text(specs)}, "
                f"but {labels[0]} has {len(first)} {_specs_text(first)}"
            )
        for head, (mine, theirs) in enumerate(zip(unified, specs, strict=True)):
            shape = merge_shapes(mine.shape, theirs.shape)
            where = f"output {head} " if len(specs) > 1 else "output "
            if shape is None:
                raise IncompatibleModelsError(
                    f"{label}: {where}shape {theirs} does not match {labels[0]}: {first[head]}"
                )
            if mine.dtype != theirs.dtype:
                raise IncompatibleModelsError(
                    f"{label}: {where}dtype {theirs.dtype} does not match "
                    f"{labels[0]}: {first[head].dtype}"
                )
            unified[head] = TensorSpec(shape, mine.dtype)
    return unified


def _specs_text(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(str(s) for s in specs)


def last_activations(model: keras.Model) -> list[str | None]:
    """The activation that produces each output, looked up through nested models.

    Returns:
        One name per output (`"softmax"`, `"linear"`, ...), or None where the last
        layer has no recognizable activation.
    """

    return [_activation_of(t) for t in model.outputs]


def _activation_of(tensor: Any) -> str | None:
    import keras

    from fuse_cli.formats._keras_private import keras_history

    history = keras_history(tensor)
    if history is None:
        return None
    layer, node_index, tensor_index = history
    if isinstance(layer, keras.Model):
        # The output of a nested model: follow its own output of the same index.
        inner = layer.outputs
        return _activation_of(inner[tensor_index]) if tensor_index < len(inner) else None
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.ReLU):
        threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        return "relu" if slope == 0.0 and threshold >= 0.0 else None
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    try:
        name = keras.activations.serialize(activation)
    except (ValueError, TypeError):
        return None
    return name if isinstance(name, str) else None


def check_nonnegative(
    models: Sequence[keras.Model],
    labels: Sequence[str],
    *,
    assume: bool,
    transforms: Sequence[Sequence[str | None]] | None = None,
) -> list[list[str | None]]:
    """Product mode needs non-negative outputs; prove it from the last activations.

    Args:
        models: The members.
        labels: How to name each member in messages.
        assume: Accept any activation (`--assume-nonnegative`).
        transforms: Per member and output, an activation appended after it
            (`--to-probabilities`), which then is the last one.

    Returns:
        Each member's last activation per output (after any appended one).

    Raises:
        IncompatibleModelsError: Some output is not provably >= 0 and `assume` is off.
    """
    found = [last_activations(m) for m in models]
    if transforms is not None:
        found = [
            [appended or name for name, appended in zip(names, added, strict=True)]
            for names, added in zip(found, transforms, strict=True)
        ]
    if not assume:
        for label, activations in zip(labels, found, strict=True):
            for head, name in enumerate(activations):
                if name not in NONNEGATIVE_ACTIVATIONS:
                    where = f"output {head}" if len(activations) > 1 else "the output"
                    raise IncompatibleModelsError(
                        f"{label}: product mode needs outputs >= 0, but {where} comes from "
                        f"activation {name or 'unknown'!r} (accepted: "
                        f"{', '.join(sorted(NONNEGATIVE_ACTIVATIONS))}); "
                        "pass --assume-nonnegative if you know better"
                    )
    return found


@dataclass(frozen=True)
class InputPlan:
    """The merged model's inputs: one shared set, or one set per member."""

    shared: bool
    specs: list[list[TensorSpec]]
    # `--inputs image`: each member's (height, width, channels); the one input is `specs`.
    image: tuple[tuple[int, int, int], ...] | None = None


def output_kind(activation: str | None) -> str:
    """`PROBABILITIES`, `RAW_SCORES` or `OTHER`, from an output's last activation."""
    if activation in PROBABILITY_ACTIVATIONS:
        return PROBABILITIES
    if activation in RAW_SCORE_ACTIVATIONS:
        return RAW_SCORES
    return OTHER


def probability_activation(spec: TensorSpec) -> str:
    """What `--to-probabilities` appends to a raw-score output: sigmoid for one unit."""
    return "sigmoid" if spec.shape and spec.shape[-1] == 1 else "softmax"


def check_output_kinds(
    models: Sequence[keras.Model],
    labels: Sequence[str],
    *,
    allow_mixed: bool = False,
    to_probabilities: bool = False,
) -> list[list[str | None]]:
    """Sum mode: refuse adding probabilities to raw scores; plan `--to-probabilities`.

    Each output is classified by its last activation (through nested models):
    probabilities (softmax, sigmoid), raw scores (linear, i.e. no activation), or
    other, which is not guarded. With `to_probabilities`, every raw-score output gets
    softmax appended (sigmoid for a single unit), so it is a probability too.

    Args:
        models: The members.
        labels: How to name each member in messages.
        allow_mixed: Accept probabilities and raw scores side by side.
        to_probabilities: Append softmax/sigmoid to raw-score outputs.

    Returns:
        Per member and output, the activation to append (`"softmax"`, `"sigmoid"`),
        or None.

    Raises:
        IncompatibleModelsError: Probabilities and raw scores side by side, naming
            each file and its last activation.
    """
    found = [last_activations(m) for m in models]
    transforms: list[list[str | None]] = []
    for model, activations in zip(models, found, strict=True):
        added: list[str | None] = []
        for spec, name in zip(output_specs(model), activations, strict=True):
            raw = to_probabilities and output_kind(name) == RAW_SCORES
            added.append(probability_activation(spec) if raw else None)
        transforms.append(added)
    if allow_mixed or to_probabilities:
        return transforms
    heads = len(found[0])
    for head in range(heads):
        kinds = [output_kind(activations[head]) for activations in found]
        if PROBABILITIES in kinds and RAW_SCORES in kinds:
            where = f"output {head} " if heads > 1 else ""
            details = "; ".join(
                f"{label}: {activations[head]} ({kind})"
                for label, activations, kind in zip(labels, found, kinds, strict=True)
            )
            raise IncompatibleModelsError(
                f"mixed output kinds: {where}probabilities and raw scores cannot be added "
                f"({details}); pass --to-probabilities to append softmax to the raw-score "
                "members, or --allow-mixed-outputs to add them as they are"
            )
    return transforms


@dataclass(frozen=True)
class Combination:
    """What the checks decided: the output heads, the input plan, the appended activations."""

    heads: list[TensorSpec]
    plan: InputPlan
    transforms: list[list[str | None]]


def plan_inputs(
    models: Sequence[keras.Model], labels: Sequence[str], inputs: InputsMode
) -> InputPlan:
    """Decide between one shared input set and one per member.

    Raises:
        IncompatibleModelsError: `shared` was asked for but the inputs differ.
    """
    shared = None if inputs is InputsMode.SEPARATE else shared_input_specs(models)
    if shared is not None:
        return InputPlan(shared=True, specs=[shared])
    if inputs is InputsMode.SHARED:
        details = "; ".join(
            f"{label}: {_specs_text(input_specs(m))}"
            for m, label in zip(models, labels, strict=True)
        )
        raise IncompatibleModelsError(f"--inputs shared, but the inputs differ: {details}")
    return InputPlan(shared=False, specs=[input_specs(m) for m in models])
