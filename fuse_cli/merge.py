"""`fuse merge` as a library call: files in, one verified merged file out."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli import __version__
from fuse_cli.choices import ExportFormat, InputsMode, Mode
from fuse_cli.compatibility import (
    Combination,
    check_combination,
    input_specs,
    last_activations,
    output_kind,
    output_specs,
    resolve_weights,
)
from fuse_cli.ensemble import build_ensemble
from fuse_cli.errors import UsageError
from fuse_cli.export import artifact_path, export_model, plan_exports
from fuse_cli.files import check_output, check_writes, publish
from fuse_cli.formats import LoadedModel, cache_keras_skipsets, load_model, load_models
from fuse_cli.formula import batch_size, check_formula
from fuse_cli.report import MemberReport, MergePlan, MergeReport, file_labels, formula_text
from fuse_cli.sharing import find_sharing, sharing_record

if TYPE_CHECKING:
    import keras

Progress = Callable[[str], None]
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_CODE_LAYERS = ("Lambda", "TFOpLambda")


@dataclass
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
    # More provenance to record (e.g. `tuning` from `fuse tune`); never replaces a
    # standard key.
    extra_provenance: dict[str, Any] | None = None


def check_options(count: int, options: MergeOptions) -> tuple[list[float], list[float]]:
    """Check what can be checked without loading anything.

    Returns:
        The weights as given and normalized.

    Raises:
        UsageError: Bad weights, name, or option combination.
    """
    given, normalized = resolve_weights(count, options.weight, options.weights)
    if options.renormalize and options.mode is not Mode.PRODUCT:
        raise UsageError("--renormalize applies to --mode product only")
    if options.allow_mixed_outputs and options.mode is not Mode.SUM:
        raise UsageError("--allow-mixed-outputs applies to --mode sum only")
    if not _NAME.match(options.name):
        raise UsageError(
            f"--name {options.name!r}: use letters, digits, '_', '.' or '-' (at most 128)"
        )
    return given, normalized


def merge_files(
    paths: Sequence[str | Path],
    out: str | Path,
    options: MergeOptions | None = None,
    progress: Progress | None = None,
) -> MergeReport:
    """Load the member files, merge them, write `out` atomically and verify it.

    Args:
        paths: Two or more model files (`.keras` or legacy HDF5).
        out: The merged model file (`.keras`, `.h5` or `.hdf5`).
        options: Mode, weights and the rest; defaults to an equal-weight sum.
        progress: Called with a short description before each slow step.

    Returns:
        The report of what was merged, written and verified.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    start = time.perf_counter()
    options = options or MergeOptions()
    files = [Path(p) for p in paths]
    say = progress or (lambda _message: None)

    out = Path(out)
    requests = _check_paths(files, out, options)
    loaded = load_models(files, unsafe=options.unsafe, progress=say)
    report, written = _merge_and_write(loaded, out, options, progress=progress, start=start)
    for fmt, path in requests:
        # From the model verification reloaded from OUT (or, with --no-verify, the one
        # just saved): OUT is not loaded a second time for the artifacts.
        say(f"exporting {path} ({fmt.value})")
        report.exports.append(
            export_model(written, fmt, path, verify=options.verify, quiet=options.quiet)
        )
    return report


def plan_merge(
    paths: Sequence[str | Path],
    out: str | Path,
    options: MergeOptions | None = None,
    progress: Progress | None = None,
) -> MergePlan:
    """`fuse merge --dry-run`: load and check everything `merge_files` would, write nothing.

    The options, OUT and every `--export` destination, every member file, and the
    checks on outputs, output kinds, signs (product mode) and inputs run exactly as in
    `merge_files`, so a plan that comes back means the real merge gets as far as
    writing; a failure raises the same error (exit 2, 3, 4 or 5).

    Args:
        paths: Two or more model files (`.keras` or legacy HDF5).
        out: Where the merged model would go.
        options: Mode, weights and the rest; defaults to an equal-weight sum.
        progress: Called with a short description before each slow step.

    Returns:
        The plan: members, input plan, formula, and where each file would go.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    start = time.perf_counter()
    options = options or MergeOptions()
    files = [Path(p) for p in paths]
    out = Path(out)
    requests = _check_paths(files, out, options)
    loaded = load_models(files, unsafe=options.unsafe, progress=progress or (lambda _m: None))
    given, normalized = check_options(len(loaded), options)
    labels = file_labels(files)
    combination = _check_members(loaded, labels, options)
    transforms = combination.transforms
    members = [
        _member_report(m, lab, g, w, t)
        for m, lab, g, w, t in zip(loaded, labels, given, normalized, transforms, strict=True)
    ]
    return MergePlan(
        output=str(out),
        replaces=out.exists(),
        mode=options.mode.value,
        formula=formula_text(labels, normalized, options.mode.value, options.renormalize,
                             transforms),
        inputs="shared" if combination.plan.shared else "separate",
        input_shapes=[[str(spec) for spec in group] for group in combination.plan.specs],
        output_shapes=[str(head) for head in combination.heads],
        renormalize=options.renormalize,
        members=members,
        verify=options.verify,
        exports=[{"format": fmt.value, "path": str(path), "replaces": path.exists()}
                 for fmt, path in requests],
        elapsed_seconds=time.perf_counter() - start,
        warnings=_unsafe_warnings(loaded, labels) if options.unsafe else [],
    )


def _check_paths(
    files: Sequence[Path], out: Path, options: MergeOptions
) -> list[tuple[ExportFormat, Path]]:
    """The checks before any model loads: options, OUT, and every `--export` artifact."""
    check_options(len(files), options)
    check_output(out, files, force=options.force)
    requests = [(fmt, artifact_path(out, fmt)) for fmt in dict.fromkeys(options.exports)]
    check_writes([("-o", out), *((f"--export {fmt.value}", p) for fmt, p in requests)], files)
    plan_exports(out, requests, force=options.force, verify=options.verify)
    return requests


def _check_members(
    loaded: Sequence[LoadedModel], labels: Sequence[str], options: MergeOptions
) -> Combination:
    """Every check on the loaded members, before anything is built (and in a dry run)."""
    combination = check_combination(
        [m.model for m in loaded],
        labels,
        mode=options.mode,
        inputs=options.inputs,
        assume_nonnegative=options.assume_nonnegative,
        allow_mixed_outputs=options.allow_mixed_outputs,
        to_probabilities=options.to_probabilities,
    )
    if options.verify:  # the check batch must be numeric and bounded: say so before building
        for m in loaded:
            batch_size(input_specs(m.model), str(m.path), m.model)
    return combination


def merge_loaded(
    loaded: Sequence[LoadedModel],
    out: str | Path,
    options: MergeOptions | None = None,
    progress: Progress | None = None,
    start: float | None = None,
) -> MergeReport:
    """Merge members that are already loaded, write `out` atomically and verify it.

    The members' models are renamed in place (`member_<i>_<name>`) and become part of
    the merged graph; load them again to use them on their own.

    Args:
        loaded: Two or more members from `fuse_cli.formats.load_models`.
        out: The merged model file (`.keras`, `.h5` or `.hdf5`).
        options: Mode, weights and the rest; defaults to an equal-weight sum.
        progress: Called with a short description before each slow step.
        start: `time.perf_counter()` at the start of the whole job, for the report.

    Returns:
        The report of what was merged, written and verified.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    report, _written = _merge_and_write(loaded, out, options, progress=progress, start=start)
    return report


def _merge_and_write(
    loaded: Sequence[LoadedModel],
    out: str | Path,
    options: MergeOptions | None = None,
    progress: Progress | None = None,
    start: float | None = None,
) -> tuple[MergeReport, keras.Model]:
    """`merge_loaded`, also returning the model as written: the one verification
    reloaded from the file, or the one saved when verification is off."""
    start = time.perf_counter() if start is None else start
    options = options or MergeOptions()
    out = Path(out)
    say = progress or (lambda _message: None)
    given, normalized = check_options(len(loaded), options)
    check_output(out, [m.path for m in loaded], force=options.force)

    labels = file_labels([m.path for m in loaded])
    warnings = _unsafe_warnings(loaded, labels) if options.unsafe else []
    combination = _check_members(loaded, labels, options)
    plan, transforms = combination.plan, combination.transforms
    members = [
        _member_report(m, lab, g, w, t)
        for m, lab, g, w, t in zip(loaded, labels, given, normalized, transforms, strict=True)
    ]
    models = [m.model for m in loaded]
    provenance = _provenance(loaded, labels, given, normalized, options, plan.shared,
                             transforms)
    sharing = find_sharing(models) if options.share and plan.shared else None
    provenance["sharing"] = (
        sharing.record() if sharing else sharing_record([], enabled=options.share)
    )

    say("building the ensemble")
    merged = build_ensemble(
        models,
        normalized,
        mode=options.mode,
        inputs=InputsMode.SHARED if plan.shared else InputsMode.SEPARATE,
        renormalize=options.renormalize,
        assume_nonnegative=options.assume_nonnegative,
        allow_mixed_outputs=options.allow_mixed_outputs,
        to_probabilities=options.to_probabilities,
        name=options.name,
        labels=labels,
        provenance=provenance,
        share=sharing if sharing is not None else False,
    )

    errors: list[float] = []
    reloaded_models: list[keras.Model] = []

    def verify(written: Path) -> None:
        say(f"verifying {out}")
        reloaded = load_model(written, unsafe=options.unsafe).model
        reloaded_models.append(reloaded)
        errors.append(
            check_formula(
                reloaded,
                models,
                normalized,
                options.mode,
                renormalize=options.renormalize,
                shared_inputs=plan.shared,
                transforms=transforms,
                what=str(out),
            )
        )

    say(f"writing {out}")
    size = save_model(merged, out, check=verify if options.verify else None)
    report = MergeReport(
        output=str(out),
        mode=options.mode.value,
        formula=formula_text(labels, normalized, options.mode.value, options.renormalize,
                             transforms),
        inputs="shared" if plan.shared else "separate",
        renormalize=options.renormalize,
        members=members,
        size=size,
        verified=options.verify,
        max_abs_error=errors[0] if errors else None,
        elapsed_seconds=time.perf_counter() - start,
        warnings=warnings,
        sharing=provenance["sharing"],
    )
    return report, reloaded_models[0] if reloaded_models else merged


def save_model(
    model: keras.Model, out: Path, check: Callable[[Path], object] | None = None
) -> int:
    """Save `model` to `out` through `fuse_cli.files.publish` (checked before it lands).

    `.keras` writes the native format, `.h5`/`.hdf5` legacy HDF5.

    Returns:
        The size of the written file in bytes.
    """

    def write(tmp: Path) -> None:
        cache_keras_skipsets()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(tmp)

    suffix = ".keras" if out.suffix.lower() == ".keras" else ".h5"
    return publish(out, write, check=check, suffix=suffix)


def _member_report(
    loaded: LoadedModel,
    label: str,
    given: float,
    weight: float,
    appended: Sequence[str | None],
) -> MemberReport:
    model = loaded.model
    activations = last_activations(model)
    return MemberReport(
        file=label,
        name=model.name,
        format=loaded.format,
        sha256=loaded.sha256,
        size=loaded.size,
        input_shapes=[str(s) for s in input_specs(model)],
        output_shapes=[str(s) for s in output_specs(model)],
        params=int(model.count_params()),
        weight_given=given,
        weight=weight,
        last_activations=activations,
        output_kinds=[output_kind(a) for a in activations],
        to_probabilities=list(appended) if any(appended) else [],
        keras_version=loaded.keras_version,
        migrations=list(loaded.migrations),
    )


def _provenance(
    loaded: Sequence[LoadedModel],
    labels: Sequence[str],
    given: Sequence[float],
    normalized: Sequence[float],
    options: MergeOptions,
    shared: bool,
    transforms: Sequence[Sequence[str | None]],
) -> dict[str, Any]:
    provenance: dict[str, Any] = {
        "tool": f"fuse {__version__}",
        "mode": options.mode.value,
        "weights_given": list(given),
        "weights": list(normalized),
        "renormalize": options.renormalize,
        "inputs": "shared" if shared else "separate",
        "members": [
            {
                "file": Path(label).name,
                "name": m.model.name,
                "sha256": m.sha256,
                "migrations": list(m.migrations),
            }
            for m, label in zip(loaded, labels, strict=True)
        ],
    }
    if options.mode is Mode.SUM and options.allow_mixed_outputs:
        provenance["allow_mixed_outputs"] = True
    # `--to-probabilities`: which members had softmax/sigmoid appended, head by head.
    provenance["to_probabilities"] = [
        {"member": i, "file": Path(label).name, "appended": list(added)}
        for i, (label, added) in enumerate(zip(labels, transforms, strict=True))
        if any(added)
    ]
    for key, value in (options.extra_provenance or {}).items():
        provenance.setdefault(key, value)
    return provenance


def _unsafe_warnings(loaded: Sequence[LoadedModel], labels: Sequence[str]) -> list[str]:
    found = []
    for member, label in zip(loaded, labels, strict=True):
        for layer in _all_layers(member.model):
            if type(layer).__name__ in _CODE_LAYERS:
                found.append(
                    f"--unsafe: {label}: allowed code-carrying layer {layer.name!r} "
                    f"({type(layer).__name__})"
                )
    return found


def _all_layers(model: keras.Model) -> list[Any]:
    import keras

    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(_all_layers(layer))
    return layers
