"""The merged graph: the members, nested and renamed, feeding the combining layers.

`build_ensemble` runs the compatibility checks (`fuse_cli.compatibility`), shares what
members compute alike (`fuse_cli.sharing`), and wires one functional model. It works on
in-memory `keras.Model` objects, so it serves the CLI and any Python caller alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fuse_cli.choices import InputsMode, Mode
from fuse_cli.compatibility import (
    TO_PROBABILITIES_PREFIX,
    InputPlan,
    check_combination,
)
from fuse_cli.errors import UsageError
from fuse_cli.sharing import SharingPlan, call_members, find_sharing, sharing_record

if TYPE_CHECKING:
    import keras

__all__ = ["InputsMode", "Mode", "build_ensemble", "member_names"]  # the enums: re-exported


def member_names(models: Sequence[keras.Model]) -> list[str]:
    """Unique names for the nested members: `member_0_<name>`, `member_1_<name>`, ..."""
    return [f"member_{i}_{m.name}" for i, m in enumerate(models)]


def build_ensemble(
    models: Sequence[keras.Model],
    coefficients: Sequence[float],
    *,
    mode: Mode = Mode.SUM,
    inputs: InputsMode = InputsMode.AUTO,
    renormalize: bool = False,
    assume_nonnegative: bool = False,
    allow_mixed_outputs: bool = False,
    to_probabilities: bool = False,
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
        allow_mixed_outputs: Sum mode: add probabilities and raw scores as they are.
        to_probabilities: Append softmax (sigmoid for one unit) to raw-score outputs,
            as layers `to_probabilities_<i>` between member `i` and the combining layer.
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
    combination = check_combination(
        models, labels, mode=mode, inputs=inputs, assume_nonnegative=assume_nonnegative,
        allow_mixed_outputs=allow_mixed_outputs, to_probabilities=to_probabilities,
    )
    heads, plan = combination.heads, combination.plan

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
    member_outputs = [
        _append_activations(keras.tree.flatten(result), combination.transforms[i], i)
        for i, result in enumerate(results)
    ]

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


def _append_activations(
    outputs: list[Any], transforms: Sequence[str | None], index: int
) -> list[Any]:
    """Member `index`'s outputs, with `--to-probabilities`' activations appended."""
    import keras

    result = []
    for head, (tensor, activation) in enumerate(zip(outputs, transforms, strict=True)):
        if activation is None:
            result.append(tensor)
            continue
        name = TO_PROBABILITIES_PREFIX + (f"{index}" if len(outputs) == 1 else f"{index}_{head}")
        result.append(keras.layers.Activation(activation, name=name)(tensor))
    return result


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
