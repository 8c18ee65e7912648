"""`fuse merge` as a library call: plan once (`fuse_cli.planning`), then execute.

`merge_files` checks the request (options, weights, every destination), loads the
members, makes the plan, and executes it: build the graph (`fuse_cli.ensemble`), write
OUT through `files.publish`, reload it and prove it computes the formula before it
takes OUT's place, then export any artifacts from the model verification reloaded.
`dry_run` stops after the plan; `merge_loaded` starts from loaded members; `fuse tune`
executes a plan with the weights it chose.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fuse_cli.compatibility import input_specs, last_activations, output_kind, output_specs
from fuse_cli.export import export_model
from fuse_cli.formats import LoadedModel, load_model, load_models, save_model
from fuse_cli.planning import (
    MergeOptions,
    MergePlan,
    Request,
    check_options,
    check_request,
    make_plan,
    resolve_weights,
)
from fuse_cli.report import MemberReport, MergeReport, PlanReport, Progress

if TYPE_CHECKING:
    import keras


__all__ = [
    "MergeOptions",
    "MergePlan",
    "Progress",
    "check_options",
    "dry_run",
    "execute",
    "merge_files",
    "merge_loaded",
    "merge_request",
    "plan_request",
    "resolve_weights",
]


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
    request = check_request([Path(p) for p in paths], Path(out), options or MergeOptions())
    return merge_request(request, progress=progress, start=start)


def merge_request(
    request: Request, progress: Progress | None = None, start: float | None = None
) -> MergeReport:
    """Load the members of a checked request (`planning.check_request`), plan, execute."""
    began = time.perf_counter()
    loaded = load_models(request.files, unsafe=request.options.unsafe, progress=progress)
    plan = make_plan(request, loaded)
    return execute(plan, progress=progress, start=start,
                   parts={"load and check": time.perf_counter() - began})


def dry_run(
    paths: Sequence[str | Path],
    out: str | Path,
    options: MergeOptions | None = None,
    progress: Progress | None = None,
) -> PlanReport:
    """`fuse merge --dry-run`: make the plan `merge_files` would execute, write nothing.

    The same steps run as in `merge_files`, once each, so a plan that comes back means
    the real merge gets as far as writing; a failure raises the same error (exit 2, 3,
    4 or 5).

    Returns:
        The plan: members, input plan, formula, and where each file would go.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    start = time.perf_counter()
    request = check_request([Path(p) for p in paths], Path(out), options or MergeOptions())
    return plan_request(request, progress=progress, start=start)


def plan_request(
    request: Request, progress: Progress | None = None, start: float | None = None
) -> PlanReport:
    """Load the members of a checked request and make the plan, writing nothing."""
    start = time.perf_counter() if start is None else start
    loaded = load_models(request.files, unsafe=request.options.unsafe, progress=progress)
    return describe(make_plan(request, loaded), time.perf_counter() - start)


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
    request = check_request([m.path for m in loaded], Path(out), options or MergeOptions())
    return execute(make_plan(request, loaded), progress=progress, start=start)


def execute(
    plan: MergePlan,
    progress: Progress | None = None,
    start: float | None = None,
    parts: dict[str, float] | None = None,
) -> MergeReport:
    """Build, write, verify and export what `plan` says; every check has run already.

    Returns:
        The report; its `exports` lists the artifacts written beside OUT.

    Raises:
        OutputError: OUT or an artifact cannot be written.
        VerificationError: The written file does not compute the formula (OUT is left
            as it was).
    """
    start = time.perf_counter() if start is None else start
    say = progress or (lambda _message: None)
    options, out = plan.options, plan.output
    parts = dict(parts or {})
    began = time.perf_counter()
    members = member_reports(plan)  # before the build renames the members in place
    say("building the ensemble" if plan.method.combines_outputs else "averaging the variables")
    merged, built = plan.method.build(plan, say)
    parts["build"] = time.perf_counter() - began
    began = time.perf_counter()
    errors: list[float] = []
    reloaded: list[keras.Model] = []

    def verify(written: Path) -> None:
        say(f"verifying {out}")
        model = load_model(written, unsafe=options.unsafe).model
        reloaded.append(model)
        errors.append(plan.method.check_written(model, merged, plan, str(out)))

    say(f"writing {out}")
    record = {**plan.provenance.to_record(), **built}
    size = save_model(merged, out, check=verify if options.verify else None,
                      replace=options.force, provenance=record)
    report = MergeReport(
        output=str(out),
        mode=options.mode.value,
        formula=plan.formula(),
        inputs=plan.provenance.inputs,
        renormalize=options.renormalize,
        members=members,
        size=size,
        verified=options.verify,
        max_abs_error=errors[0] if errors else None,
        elapsed_seconds=0.0,
        warnings=list(plan.warnings),
        sharing=plan.provenance.sharing,
        loads_without_fuse=not refers_to_fuse(merged),
        built=built,
    )
    parts["write and verify" if options.verify else "write"] = time.perf_counter() - began
    began = time.perf_counter()
    # From the model verification reloaded from OUT (or, with --no-verify, the one just
    # saved): OUT is not loaded again for the artifacts.
    written = reloaded[0] if reloaded else merged
    for fmt, path in plan.request.exports:
        say(f"exporting {path} ({fmt.value})")
        report.exports.append(
            export_model(written, fmt, path, verify=options.verify, quiet=options.quiet,
                         replace=options.force)
        )
    if plan.request.exports:
        parts["export"] = time.perf_counter() - began
    report.parts = parts
    report.elapsed_seconds = time.perf_counter() - start
    return report


def refers_to_fuse(model: keras.Model) -> bool:
    """Whether loading `model` from a file needs fuse's registered objects (the product's
    layer, the Keras 2 activation a legacy member keeps): its config names them."""
    import json

    text = json.dumps(model.get_config(), default=str)
    return '"fuse>' in text or "fuse_cli." in text


def describe(plan: MergePlan, elapsed: float) -> PlanReport:
    """What `--dry-run` reports of a plan."""
    request = plan.request
    return PlanReport(
        output=str(plan.output),
        replaces=request.replaces[0],
        mode=plan.options.mode.value,
        formula=plan.formula(),
        inputs=plan.provenance.inputs,
        input_shapes=[[str(spec) for spec in group] for group in plan.combination.plan.specs],
        output_shapes=[str(head) for head in plan.combination.heads],
        renormalize=plan.options.renormalize,
        members=member_reports(plan),
        verify=plan.options.verify,
        exports=[{"format": fmt.value, "path": str(path), "replaces": replaces}
                 for (fmt, path), replaces in zip(request.exports, request.replaces[1:],
                                                  strict=False)],
        elapsed_seconds=elapsed,
        warnings=list(plan.warnings),
    )


def member_reports(plan: MergePlan) -> list[MemberReport]:
    """Each member as loaded and placed in the plan."""
    reports = []
    for m, label, given, weight, added in zip(
        plan.members, plan.labels, plan.request.weights_given, plan.weights,
        plan.combination.transforms, strict=True,
    ):
        activations = last_activations(m.model)
        reports.append(MemberReport(
            file=label,
            name=m.model.name,
            format=m.format,
            sha256=m.sha256,
            size=m.size,
            input_shapes=[str(s) for s in input_specs(m.model)],
            output_shapes=[str(s) for s in output_specs(m.model)],
            params=int(m.model.count_params()),
            weight_given=given,
            weight=weight,
            last_activations=activations,
            output_kinds=[output_kind(a) for a in activations],
            to_probabilities=list(added) if any(added) else [],
            keras_version=m.keras_version,
            migrations=list(m.migrations),
            input_dims=[[None, *s.shape] for s in input_specs(m.model)],
            output_dims=[[None, *s.shape] for s in output_specs(m.model)],
        ))
    return reports
