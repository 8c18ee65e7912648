"""The merged graph: the members, nested and renamed, feeding the combining layers.

`build` wires what a `MergePlan` (`fuse_cli.planning`) decided into one functional
model; `build_ensemble` is the same for in-memory `keras.Model` objects, for Python
callers, checking them first as a plan does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fuse_cli.choices import InputsMode, Mode
from fuse_cli.compatibility import TO_PROBABILITIES_PREFIX, Combination, InputPlan
from fuse_cli.errors import UsageError
from fuse_cli.planning import MergeOptions, check_combination
from fuse_cli.sharing import SharingPlan, call_members, find_sharing

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergePlan

__all__ = ["InputsMode", "Mode", "build", "build_ensemble", "member_names"]  # enums re-exported


def member_names(models: Sequence[keras.Model]) -> list[str]:
    """Unique names for the nested members: `member_0_<name>`, `member_1_<name>`, ..."""
    return [f"member_{i}_{m.name}" for i, m in enumerate(models)]


def build(plan: MergePlan) -> keras.Model:
    """The merged model of a plan. Its members are renamed `member_<i>_<name>` in place."""
    return _wire(plan.models, plan.weights, plan.options, plan.combination, plan.sharing,
                 plan.calibration)


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
    share: bool | SharingPlan = True,
) -> keras.Model:
    """Wrap in-memory members in one functional model that combines their outputs.

    The same checks as a merge's plan run first (`planning.check_combination`). A sum is
    built from Keras's own layers; to record provenance beside it, save it with
    `fuse_cli.formats.save_model(model, out, provenance=...)`.

    Args:
        models: Two or more members. They are renamed `member_<i>_<name>` in place.
        coefficients: One normalized weight per member.
        mode: The merge method's name (weighted sum or weighted product).
        inputs: Share one input set, give each member its own, or decide (`auto`).
        renormalize: Product mode: divide by the sum over the last axis.
        assume_nonnegative: Product mode: skip the last-activation check.
        allow_mixed_outputs: Sum mode: add probabilities and raw scores as they are.
        to_probabilities: Append softmax (sigmoid for one unit) to raw-score outputs,
            as layers `to_probabilities_<i>` between member `i` and the combining layer.
        name: The merged model's name.
        labels: How members are named in messages; defaults to their model names.
        share: With shared inputs, compute what members have in common once
            (`fuse_cli.sharing`); False never shares; a plan from `find_sharing` on
            these models is used as it is.

    Returns:
        The merged model.

    Raises:
        UsageError: Wrong number of coefficients, or an option the mode does not take.
        IncompatibleModelsError: Outputs or inputs that cannot be combined.
    """
    if len(models) < 2:
        raise UsageError(f"an ensemble needs at least 2 models; got {len(models)}")
    if len(coefficients) != len(models):
        raise UsageError(f"{len(coefficients)} weights for {len(models)} models")
    options = MergeOptions(mode=mode, inputs=inputs, renormalize=renormalize,
                           assume_nonnegative=assume_nonnegative,
                           allow_mixed_outputs=allow_mixed_outputs,
                           to_probabilities=to_probabilities, name=name,
                           share=share is not False)
    options.method.check_options(options)
    labels = list(labels) if labels is not None else [m.name for m in models]
    combination = check_combination(models, labels, options)
    sharing = None
    if combination.plan.shared and share is not False:
        sharing = share if isinstance(share, SharingPlan) else find_sharing(models)
    return _wire(models, coefficients, options, combination, sharing)


def _wire(
    models: Sequence[keras.Model],
    coefficients: Sequence[float],
    options: MergeOptions,
    combination: Combination,
    sharing: SharingPlan | None,
    calibration: Sequence[float] = (),
) -> keras.Model:
    """One functional model: inputs → members (through shared segments) → combining layers
    (→ the calibration `fuse tune --calibrate` fitted)."""
    import keras

    if len({id(m) for m in models}) != len(models):
        raise UsageError("the same in-memory model was given twice; load or clone it again")
    names = member_names(models)
    for model, unique in zip(models, names, strict=True):
        model.name = unique
    plan = combination.plan
    model_inputs = _make_inputs(plan)
    if plan.image is not None:  # one image input, each member behind its preprocessing
        from fuse_cli.image_input import branch

        results = [model(branch(model_inputs[0][0], size, i, options.images))
                   for i, (model, size) in enumerate(zip(models, plan.image, strict=True))]
    elif sharing is not None and sharing.segments:
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
    heads = len(combination.heads)
    outputs = [
        options.method.build_head([outs[head] for outs in member_outputs], coefficients,
                                  options, "combine" if heads == 1 else f"combine_{head}")
        for head in range(heads)
    ]
    if calibration:
        outputs = [calibrate(t, temperature, "" if heads == 1 else f"_{h}")
                   for h, (t, temperature) in enumerate(zip(outputs, calibration, strict=True))]
    flat_inputs = [t for group in model_inputs for t in group]
    return keras.Model(
        inputs=flat_inputs if len(flat_inputs) > 1 else flat_inputs[0],
        outputs=outputs if len(outputs) > 1 else outputs[0],
        name=options.name,
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


def _make_inputs(plan: InputPlan) -> list[list[Any]]:
    import keras

    groups = []
    for g, specs in enumerate(plan.specs):
        group = []
        for j, spec in enumerate(specs):
            if plan.image is not None:
                input_name = "image"
            elif plan.shared:
                input_name = "input" if len(specs) == 1 else f"input_{j}"
            else:
                input_name = f"member_{g}_input" if len(specs) == 1 else f"member_{g}_input_{j}"
            group.append(keras.Input(shape=spec.shape, dtype=spec.dtype, name=input_name))
        groups.append(group)
    return groups


def calibrate(tensor: Any, temperature: float, suffix: str) -> Any:
    """Temperature scaling of a probability head in Keras's own operations (no fuse
    layer, no code): `softmax(log(p) / T)`, or `sigmoid(logit(p) / T)` for one unit."""
    import keras

    if tensor.shape[-1] == 1:
        logits = keras.ops.subtract(keras.ops.log(tensor),
                                    keras.ops.log(keras.ops.subtract(1.0, tensor)))
    else:
        logits = keras.ops.log(tensor)
    scaled = keras.layers.Rescaling(1.0 / temperature, name=f"calibrate_temperature{suffix}")(
        logits)
    if tensor.shape[-1] == 1:
        return keras.layers.Activation("sigmoid", name=f"calibrated{suffix}")(scaled)
    return keras.layers.Softmax(name=f"calibrated{suffix}")(scaled)
