"""Plan once, then execute: every check a merge makes, made once, into a frozen plan.

A merge is planned in two steps, each run exactly once per command:

1. `check_request`, before anything loads: the options (through the merge method's own
   rules), the weights as given and normalized, and every destination (OUT, the
   `--export` artifacts, a tune's plot) checked once against every input.
2. `make_plan`, once the members are loaded: the combination (output heads, input plan,
   output kinds and signs, the activations `--to-probabilities` appends), the check
   batch's bound, the shared backbone, and the provenance the file will record.

The result, a `MergePlan`, is what `--dry-run` prints, what `merge.execute` builds,
writes and verifies, and what `fuse tune` executes once it has chosen the weights
(`MergePlan.with_weights`). Nothing downstream takes a dozen flags: it takes the plan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli.choices import ExportFormat, InputsMode, Mode
from fuse_cli.compatibility import (
    Combination,
    InputPlan,
    check_outputs,
    plan_inputs,
)
from fuse_cli.errors import UsageError
from fuse_cli.files import Destination, check_destinations, check_model_suffix
from fuse_cli.image_input import plan_image
from fuse_cli.methods import MergeMethod, method_for
from fuse_cli.native import quiet_native_logs
from fuse_cli.provenance import Provenance, appended_record, member_record, sharing_record
from fuse_cli.report import file_labels

if TYPE_CHECKING:
    import keras

    from fuse_cli.formats import LoadedModel
    from fuse_cli.images import ImageOptions
    from fuse_cli.sharing import SharingPlan

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_CODE_LAYERS = ("Lambda", "TFOpLambda")


@dataclass(frozen=True)
class MergeOptions:
    """The options of `fuse merge` (DESIGN §1), with the same defaults."""

    mode: Mode = Mode.SUM
    weight: float | None = None
    weights: Sequence[float] | None = None
    inputs: InputsMode = InputsMode.AUTO
    renormalize: bool = False
    assume_nonnegative: bool = False
    # Sum mode: add probabilities and raw scores as they are.
    allow_mixed_outputs: bool = False
    # Append softmax (sigmoid for one unit) to raw-score members before combining.
    to_probabilities: bool = False
    name: str = "ensemble"
    force: bool = False
    verify: bool = True
    unsafe: bool = False
    # Compute what members fed one input have in common once (`--no-share`: off).
    share: bool = True
    # `--export`: deployable artifacts written beside OUT once it is verified.
    exports: Sequence[ExportFormat] = ()
    # Keep the exporters' native log lines off stderr (off with --debug).
    quiet: bool = True
    # Soup: the data BatchNormalization's statistics are estimated again on (None: they
    # are averaged like every other variable), its image options and batch size.
    recompute_bn: Path | None = None
    images: ImageOptions | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        # Names given as text (`mode="soup"`) become the enums.
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "inputs", InputsMode(self.inputs))
        # Frozen all the way down: sequences become tuples.
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "exports", tuple(dict.fromkeys(self.exports)))

    @property
    def method(self) -> MergeMethod:
        """The merge method `mode` names."""
        return method_for(self.mode)


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
    return given, normalize(given)


def normalize(given: Sequence[float]) -> list[float]:
    """Weights divided by their sum.

    Raises:
        UsageError: They are all zero, or their sum is not finite.
    """
    try:
        total = math.fsum(given)
    except OverflowError:
        total = math.inf
    if not total > 0:
        raise UsageError(f"weights must not all be zero; got {list(given)}")
    if not math.isfinite(total):
        raise UsageError(f"weights {list(given)} add up to {total}: give smaller numbers")
    return [w / total for w in given]


def check_options(count: int, options: MergeOptions) -> tuple[list[float], list[float]]:
    """Check what can be checked of the options alone.

    Returns:
        The weights as given and normalized.

    Raises:
        UsageError: Bad weights, name, or an option the mode does not take.
    """
    given, normalized = resolve_weights(count, options.weight, options.weights)
    options.method.check_options(options)
    if options.recompute_bn is not None and options.method.combines_outputs:
        raise UsageError("--recompute-bn applies to --mode soup only")
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {options.batch_size}")
    if not _NAME.match(options.name):
        raise UsageError(
            f"--name {options.name!r}: use letters, digits, '_', '.' or '-' (at most 128)"
        )
    return given, normalized


@dataclass(frozen=True)
class Request:
    """A merge as checked before anything loads: options, weights, every destination.

    Attributes:
        files: The member files.
        options: The merge options.
        output: OUT.
        weights_given: The weights as given (or implied).
        weights: Normalized to sum to 1.
        destinations: OUT first, then each `--export` artifact, then anything else the
            command writes (a tune's plot); each checked once against every input.
        replaces: For each destination, whether it replaces an existing one.
        exports: `(format, path)` of each `--export` artifact.
    """

    files: tuple[Path, ...]
    options: MergeOptions
    output: Path
    weights_given: tuple[float, ...]
    weights: tuple[float, ...]
    destinations: tuple[Destination, ...]
    replaces: tuple[bool, ...]
    exports: tuple[tuple[ExportFormat, Path], ...] = ()
    # `fuse build`: the recipe the request came from, as the provenance records it.
    recipe: dict[str, Any] | None = None


def check_request(
    files: Sequence[Path],
    out: Path,
    options: MergeOptions,
    *,
    writes: Sequence[Destination] = (),
    reads: Sequence[Path] = (),
    member_paths: bool = True,
) -> Request:
    """Step 1: every check that needs no model, once.

    Args:
        files: The member files.
        out: OUT.
        options: The merge options.
        writes: More destinations the command writes (a tune's plot).
        reads: More inputs the command reads (a tune's data).
        member_paths: Check that each member file is a readable regular file (tune
            leaves it to the load, after its data has been read and checked).

    Raises:
        UsageError: Bad options, weights, extensions, or a missing exporter package.
        OutputError: A destination that cannot be written.
        ModelLoadError: A member file that is missing or not a regular file.
    """
    from fuse_cli.export import artifact_destination, artifact_path, check_artifact
    from fuse_cli.formats.screening import check_model_path

    given, normalized = check_options(len(files), options)
    check_model_suffix(out)
    exports = tuple((fmt, artifact_path(out, fmt)) for fmt in options.exports)
    with quiet_native_logs(options.quiet):  # an exporter's import may start TensorFlow
        for fmt, path in exports:
            check_artifact(fmt, path, verify=options.verify)
    destinations = (
        Destination("-o", out),
        *(artifact_destination(f"--export {fmt.value}", fmt, path) for fmt, path in exports),
        *writes,
    )
    if options.recompute_bn is not None:
        reads = [*reads, options.recompute_bn]
    replaces = check_destinations(destinations, [*files, *reads], force=options.force)
    for path in files if member_paths else ():  # after the destinations
        check_model_path(path)
    return Request(tuple(files), options, out, tuple(given), tuple(normalized), destinations,
                   tuple(replaces), exports)


@dataclass(frozen=True)
class MergePlan:
    """Everything a merge will do, checked: step 2's result (see the module's docstring).

    Attributes:
        request: Options, weights and destinations (step 1).
        members: The loaded members, in order.
        labels: How each member is named in reports and messages.
        combination: Output heads, input plan, appended activations.
        sharing: The backbone members compute once, or None.
        provenance: What the merged file will record about itself.
        warnings: For the report (e.g. code-carrying layers allowed by `--unsafe`).
    """

    request: Request
    members: tuple[LoadedModel, ...]
    labels: tuple[str, ...]
    combination: Combination
    sharing: SharingPlan | None
    provenance: Provenance
    warnings: tuple[str, ...] = field(default=())
    # `fuse tune --calibrate temperature`: one temperature per output head, applied after
    # the combination (`fuse_cli.calibration`); empty: none.
    calibration: tuple[float, ...] = ()

    @property
    def options(self) -> MergeOptions:
        """The merge options."""
        return self.request.options

    @property
    def method(self) -> MergeMethod:
        """The merge method."""
        return self.request.options.method

    @property
    def weights(self) -> tuple[float, ...]:
        """The normalized weights."""
        return self.request.weights

    @property
    def output(self) -> Path:
        """OUT."""
        return self.request.output

    @property
    def models(self) -> list[keras.Model]:
        """The members' Keras models."""
        return [m.model for m in self.members]

    def formula(self) -> str:
        """The formula in words, with what `--to-probabilities` appends."""
        labels = [_wrapped(label, added) for label, added
                  in zip(self.labels, self.combination.transforms, strict=True)]
        text = self.method.formula_text(labels, self.weights, self.options.renormalize)
        if not self.calibration:
            return text
        temperature = self.calibration[0]
        if self.combination.heads[0].shape[-1:] == (1,):
            return f"sigmoid(logit({text}) / {temperature:.6g})"
        return f"softmax(log({text}) / {temperature:.6g})"

    def with_weights(
        self,
        weights: Sequence[float],
        tuning: dict[str, Any],
        preprocessing: dict[str, Any] | None = None,
        calibration: Sequence[float] = (),
    ) -> MergePlan:
        """The same plan with the weights `fuse tune` chose, how it chose them, the
        preprocessing of the data it chose them on, and any temperatures it fitted.

        Raises:
            UsageError: Weights that are all zero or do not add up.
        """
        given = tuple(float(w) for w in weights)
        normalized = tuple(normalize(given))
        request = replace(self.request, weights_given=given, weights=normalized,
                          options=replace(self.options, weight=None, weights=given))
        provenance = replace(self.provenance, weights_given=given, weights=normalized,
                             tuning=tuning, preprocessing=preprocessing)
        return replace(self, request=request, provenance=provenance,
                       calibration=tuple(float(t) for t in calibration))

    def keep(self, kept: Sequence[int]) -> MergePlan:
        """The same plan with only the members `kept` (indices, in order; at least two).

        What was checked of each member holds for a subset; the shared backbone is found
        again among the members kept.
        """
        from fuse_cli.sharing import find_sharing

        members = tuple(self.members[i] for i in kept)
        labels = tuple(self.labels[i] for i in kept)
        transforms = [self.combination.transforms[i] for i in kept]
        inputs = self.combination.plan
        specs = inputs.specs if inputs.shared else [inputs.specs[i] for i in kept]
        image = tuple(inputs.image[i] for i in kept) if inputs.image else None
        combination = Combination(self.combination.heads,
                                  InputPlan(inputs.shared, specs, image), transforms)
        sharing = find_sharing([m.model for m in members]) if self.sharing else None
        given = tuple(self.request.weights_given[i] for i in kept)
        request = replace(self.request, files=tuple(m.path for m in members),
                          weights_given=given, weights=tuple(normalize(given)))
        provenance = replace(
            self.provenance, members=tuple(self.provenance.members[i] for i in kept),
            weights_given=request.weights_given, weights=request.weights,
            to_probabilities=appended_record([m.path.name for m in members], transforms),
            sharing=sharing.record() if sharing else self.provenance.sharing,
        )
        return replace(self, request=request, members=members, labels=labels,
                       combination=combination, sharing=sharing, provenance=provenance)


def check_combination(
    models: Sequence[keras.Model], labels: Sequence[str], options: MergeOptions
) -> Combination:
    """Whether the members can be combined as `options` say: outputs, the method's own
    rules (output kinds, signs), inputs.

    Raises:
        IncompatibleModelsError: The members cannot be combined, naming each file.
    """
    heads = check_outputs(models, labels)
    transforms = options.method.check_members(models, labels, options)
    if options.inputs is InputsMode.IMAGE:
        plan = plan_image(models, labels)
    else:
        plan = plan_inputs(models, labels, options.inputs)
    return Combination(heads=heads, plan=plan, transforms=transforms)


def make_plan(request: Request, loaded: Sequence[LoadedModel]) -> MergePlan:
    """Step 2: every check on the loaded members, once, and what the merge will build.

    Raises:
        IncompatibleModelsError: The members cannot be combined.
        ModelLoadError: A member too large to check (with verification on).
    """
    from fuse_cli.formula import check_batch_bound
    from fuse_cli.sharing import find_sharing

    options = request.options
    labels = file_labels([m.path for m in loaded])
    models = [m.model for m in loaded]
    combination = check_combination(models, labels, options)
    if options.verify:  # the check batch must be numeric and bounded: say so before building
        for m in loaded:
            check_batch_bound(m.model, str(m.path))
    shared = combination.plan.shared
    combines = options.method.combines_outputs  # a soup is one model: nothing to share
    image = combination.plan.image is not None  # each member its own preprocessing
    sharing = (find_sharing(models) if options.share and shared and combines and not image
               else None)
    provenance = Provenance(
        mode=options.mode.value,
        weights=request.weights,
        weights_given=request.weights_given,
        renormalize=options.renormalize,
        inputs="image" if image else "shared" if shared else "separate",
        members=tuple(member_record(m.path, m.model.name, m.sha256, m.migrations)
                      for m in loaded),
        allow_mixed_outputs=options.allow_mixed_outputs,
        to_probabilities=appended_record([m.path.name for m in loaded], combination.transforms),
        sharing=(sharing.record() if sharing else sharing_record([], enabled=options.share)
                 if combines else None),
    )
    if request.recipe is not None:
        provenance = replace(provenance, build=request.recipe)
    warnings = options.method.plan_warnings(options)
    warnings += _unsafe_warnings(loaded, labels) if options.unsafe else []
    return MergePlan(request, tuple(loaded), tuple(labels), combination, sharing, provenance,
                     tuple(warnings))


def _wrapped(label: str, added: Sequence[str | None]) -> str:
    """`softmax(b.h5)` for a member whose (single) output gets softmax appended."""
    names = {a for a in added if a}
    return f"{'/'.join(sorted(names))}({label})" if names else label


def _unsafe_warnings(loaded: Sequence[LoadedModel], labels: Sequence[str]) -> list[str]:
    from fuse_cli.formats._keras_private import all_layers

    found = []
    for member, label in zip(loaded, labels, strict=True):
        for layer in all_layers(member.model):
            if type(layer).__name__ in _CODE_LAYERS:
                found.append(
                    f"--unsafe: {label}: allowed code-carrying layer {layer.name!r} "
                    f"({type(layer).__name__})"
                )
    return found
