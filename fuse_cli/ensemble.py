"""Compatibility checks and the merged graph.

Everything here works on in-memory `keras.Model` objects, so it serves the CLI and
any Python caller alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fuse_cli.choices import InputsMode, Mode
from fuse_cli.errors import IncompatibleModelsError, UsageError
from fuse_cli.sharing import SharingPlan, call_members, find_sharing, sharing_record

if TYPE_CHECKING:
    import keras

__all__ = ["InputsMode", "Mode", "TensorSpec", "build_ensemble"]  # the enums: re-exported

Shape = tuple[int | None, ...]

NONNEGATIVE_ACTIVATIONS = frozenset(
    {"softmax", "sigmoid", "relu", "relu6", "softplus", "exponential"}
)


@dataclass(frozen=True)
class TensorSpec:
    """Shape (batch dimension excluded) and dtype of one input or output."""

    shape: Shape
    dtype: str

    def __str__(self) -> str:
        return _shape_text(self.shape)


def _shape_text(shape: Shape) -> str:
    return "(" + ", ".join(["None", *(str(d) for d in shape)]) + ")"


def resolve_weights(
    count: int, weight: float | None = None, weights: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """Turn `--weight` / `--weights` into weights as given and normalized.

    Args:
        count: Number of members.
        weight: `A` for two members, meaning `(A, 1 - A)`.
        weights: One weight per member.

    Returns:
        The weights as given (or implied) and normalized to sum to 1.

    Raises:
        UsageError: Both options, wrong count, a negative or non-finite weight, all zero.
    """
    if count < 2:
        raise UsageError(f"an ensemble needs at least 2 models; got {count}")
    if weight is not None and weights is not None:
        raise UsageError("give either --weight or --weights, not both")
    if weight is not None:
        if count != 2:
            raise UsageError(
                f"--weight A is for two models; got {count}: use --weights W1,...,W{count}"
            )
        if not math.isfinite(weight) or not 0 <= weight <= 1:
            raise UsageError(f"--weight must be between 0 and 1; got {weight}")
        given = [float(weight), 1.0 - float(weight)]
    elif weights is not None:
        given = [float(w) for w in weights]
        if len(given) != count:
            raise UsageError(f"--weights has {len(given)} values for {count} models")
        for w in given:
            if not math.isfinite(w) or w < 0:
                raise UsageError(f"--weights must be finite and >= 0; got {w}")
    else:
        given = [1.0] * count
    total = math.fsum(given)
    if total <= 0:
        raise UsageError(f"weights must not all be zero; got {given}")
    return given, [w / total for w in given]


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

    history = getattr(tensor, "_keras_history", None)
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
    models: Sequence[keras.Model], labels: Sequence[str], *, assume: bool
) -> list[list[str | None]]:
    """Product mode needs non-negative outputs; prove it from the last activations.

    Returns:
        Each member's last activation per output.

    Raises:
        IncompatibleModelsError: Some output is not provably >= 0 and `assume` is off.
    """
    found = [last_activations(m) for m in models]
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


def member_names(models: Sequence[keras.Model]) -> list[str]:
    """Unique names for the nested members: `member_0_<name>`, `member_1_<name>`, ..."""
    return [f"member_{i}_{m.name}" for i, m in enumerate(models)]


@dataclass(frozen=True)
class InputPlan:
    """The merged model's inputs: one shared set, or one set per member."""

    shared: bool
    specs: list[list[TensorSpec]]


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


def build_ensemble(
    models: Sequence[keras.Model],
    coefficients: Sequence[float],
    *,
    mode: Mode = Mode.SUM,
    inputs: InputsMode = InputsMode.AUTO,
    renormalize: bool = False,
    assume_nonnegative: bool = False,
    name: str = "ensemble",
    labels: Sequence[str] | None = None,
    provenance: dict[str, Any] | None = None,
    share: bool | SharingPlan = True,
) -> keras.Model:
    """Wrap the members in one functional model that combines their outputs.

    Args:
        models: Two or more members. They are renamed `member_<i>_<name>` in place.
        coefficients: One normalized weight per member.
        mode: Weighted sum or weighted product.
        inputs: Share one input set, give each member its own, or decide (`auto`).
        renormalize: Product mode: divide by the sum over the last axis.
        assume_nonnegative: Product mode: skip the last-activation check.
        name: The merged model's name.
        labels: How members are named in messages; defaults to their model names.
        provenance: Recorded in the combining layers' configs (with a `sharing`
            entry added, unless it has one).
        share: With shared inputs, compute what members have in common once
            (`fuse_cli.sharing`); False never shares; a plan from `find_sharing` on
            these models is used as it is.

    Returns:
        The merged model.

    Raises:
        UsageError: Wrong number of coefficients, or `renormalize` with sum mode.
        IncompatibleModelsError: Outputs or inputs that cannot be combined.
    """
    import keras

    from fuse_cli.layers import MERGE_LAYERS

    labels = list(labels) if labels is not None else [m.name for m in models]
    if len(models) < 2:
        raise UsageError(f"an ensemble needs at least 2 models; got {len(models)}")
    if len(coefficients) != len(models):
        raise UsageError(f"{len(coefficients)} weights for {len(models)} models")
    if renormalize and mode is not Mode.PRODUCT:
        raise UsageError("--renormalize applies to --mode product only")
    heads = check_outputs(models, labels)
    if mode is Mode.PRODUCT:
        check_nonnegative(models, labels, assume=assume_nonnegative)
    plan = plan_inputs(models, labels, inputs)

    if len({id(m) for m in models}) != len(models):
        raise UsageError("the same in-memory model was given twice; load or clone it again")

    sharing = _sharing_plan(models, share) if plan.shared else None
    if provenance is not None and "sharing" not in provenance:
        record = sharing.record() if sharing else sharing_record([], enabled=share is not False)
        provenance = {**provenance, "sharing": record}
    names = member_names(models)
    for model, unique in zip(models, names, strict=True):
        model.name = unique

    model_inputs = _make_inputs(plan, len(models))
    if sharing is not None and sharing.segments:
        own = model_inputs[0]
        results = call_members(models, names, own if len(own) > 1 else own[0], sharing)
    else:
        results = []
        for i, model in enumerate(models):
            own = model_inputs[0] if plan.shared else model_inputs[i]
            results.append(model(own if len(own) > 1 else own[0]))
    member_outputs = [keras.tree.flatten(result) for result in results]

    layer_class = MERGE_LAYERS[mode.value]
    extra = {"renormalize": renormalize} if mode is Mode.PRODUCT else {}
    outputs = []
    for head in range(len(heads)):
        layer_name = "combine" if len(heads) == 1 else f"combine_{head}"
        layer = layer_class(list(coefficients), provenance=provenance, name=layer_name, **extra)
        outputs.append(layer([outs[head] for outs in member_outputs]))
    flat_inputs = [t for group in model_inputs for t in group]
    return keras.Model(
        inputs=flat_inputs if len(flat_inputs) > 1 else flat_inputs[0],
        outputs=outputs if len(outputs) > 1 else outputs[0],
        name=name,
    )


def _sharing_plan(models: Sequence[keras.Model], share: bool | SharingPlan) -> SharingPlan | None:
    if share is False:
        return None
    return share if isinstance(share, SharingPlan) else find_sharing(models)


def _make_inputs(plan: InputPlan, count: int) -> list[list[Any]]:
    import keras

    groups = []
    for g, specs in enumerate(plan.specs):
        group = []
        for j, spec in enumerate(specs):
            if plan.shared:
                input_name = "input" if len(specs) == 1 else f"input_{j}"
            else:
                input_name = f"member_{g}_input" if len(specs) == 1 else f"member_{g}_input_{j}"
            group.append(keras.Input(shape=spec.shape, dtype=spec.dtype, name=input_name))
        groups.append(group)
    return groups
