"""`fuse tune` as a library call: weights from data, then one verified merged file.

`tune_files` loads each member once, runs it once over the data (batched; a folder of
images is streamed), or takes the predictions saved by `fuse evaluate
--save-predictions` instead, keeps the predictions, optionally holds a share of the
rows out, searches the weights on the rest by K-fold cross-validation
(`fuse_cli.search.cross_validate`; or one search, with `cv=0`), scores members and
ensemble, and writes the ensemble through `merge.merge_loaded`, verification included,
with the tuning recorded in the file's provenance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.calibration import Calibration, calibrate_search
from fuse_cli.choices import Calibrate, EngineKind, InputsMode, Metric, Mode
from fuse_cli.data import SPLIT_SEED
from fuse_cli.engines import EngineOptions, check_engine, open_engine
from fuse_cli.errors import DataError, IncompatibleModelsError, UsageError
from fuse_cli.evaluation import (
    IMAGE_KINDS,
    Advance,
    Data,
    check_batch_size,
    check_data,
    common_rows,
    data_notes,
    model_outputs,
    output_shape,
    read_any,
    restrict,
)
from fuse_cli.files import Destination
from fuse_cli.formats import load_models
from fuse_cli.formula import apply_activation
from fuse_cli.image_input import pipeline_options, wrapped_members
from fuse_cli.images import ImageOptions, own_scaling, scale_warning
from fuse_cli.merge import execute
from fuse_cli.planning import (
    MergeOptions,
    MergePlan,
    Request,
    check_request,
    make_plan,
    normalize,
)
from fuse_cli.plotting import plot_search
from fuse_cli.predictions import Predictions, check_provenance, read_predictions
from fuse_cli.report import MergeReport, Progress
from fuse_cli.search import (
    CrossValidation,
    are_probabilities,
)
from fuse_cli.selection import PartScores, Search, choose_weights, search_warnings
from fuse_cli.tuning_records import (
    describe_source,
    preprocessing_record,
    source_kind,
    tuning_of_search,
)

if TYPE_CHECKING:
    from fuse_cli.soup_tuning import SoupTuneReport

HOLDOUT = 0.0
CV_FOLDS = 5  # chosen by measurement: benchmarks/cv_default.py, README "Cross-validation"


@dataclass(frozen=True)
class TuneOptions:
    """The options of `fuse tune`: the merge's (`fuse merge`'s defaults; the weights are
    tune's to choose) and the search's."""

    merge: MergeOptions = field(default_factory=MergeOptions)
    metric: Metric = Metric.LOG_LOSS
    holdout: float = HOLDOUT
    cv: int = CV_FOLDS
    batch_size: int | None = None  # 256 rows of an .npz file, 32 images
    images: ImageOptions | None = None
    predictions: Path | None = None
    plot: Path | None = None
    # Keep members the search gave weight 0 in the file (default: leave them out).
    keep_zero_weights: bool = False
    # Soup: write the soup even if it does not beat the best member.
    even_if_worse: bool = False
    # Fit a temperature on the ensemble's out-of-fold probabilities and bake it in.
    calibrate: Calibrate = Calibrate.NONE
    # Where the members' pass over the data runs (`fuse_cli.engines`).
    engine: EngineOptions = field(default_factory=EngineOptions)

    @property
    def mode(self) -> Mode:
        """The merge method's name."""
        return self.merge.mode


@dataclass
class TuneReport:
    """The facts of one tuning run, as shown in the tables and in `--json`."""

    data: str
    rows: int
    metric: str
    method: str
    holdout: float
    seed: int
    files: list[str]
    weights: list[float]
    fit: PartScores
    heldout: PartScores | None
    path: list[dict[str, Any]]
    merge: MergeReport
    plot: str | None
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)
    cv: CrossValidation | None = None
    source: str = "data"
    calibration: Calibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return {
            "data": self.data,
            "rows": self.rows,
            "metric": self.metric,
            "method": self.method,
            "holdout": self.holdout,
            "seed": self.seed,
            "source": self.source,
            "cv": self.cv.to_dict() if self.cv else None,
            "files": self.files,
            "weights": self.weights,
            "fit": self.fit.to_dict(),
            "heldout": self.heldout.to_dict() if self.heldout else None,
            "path": self.path,
            "merge": self.merge.to_dict(),
            "plot": self.plot,
            "elapsed_seconds": self.elapsed_seconds,
            "warnings": self.warnings,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }


def check_tune_options(options: TuneOptions) -> list[Destination]:
    """Check what can be checked of tune's own options before anything is read.

    Returns:
        What tune writes besides the model (the plot), for `planning.check_request`.

    Raises:
        UsageError: A bad holdout, fold count, batch size, plot file type, a missing
            matplotlib, or weights given (tune chooses them).
    """
    if options.merge.weight is not None or options.merge.weights is not None:
        raise UsageError("fuse tune chooses the weights: give no --weight or --weights")
    averages = not options.merge.method.combines_outputs
    if averages and (options.predictions is not None or options.plot is not None):
        raise UsageError("--mode soup runs every soup it compares on the data: give --data, "
                         "not --predictions, and no --plot (it draws the weight search)")
    if options.even_if_worse and not averages:
        raise UsageError("--even-if-worse applies to --mode soup only")
    if options.predictions is not None and options.merge.inputs is InputsMode.IMAGE:
        raise UsageError("--inputs image runs each member through the file's own "
                         "preprocessing: give --data, not --predictions")
    if options.calibrate is not Calibrate.NONE and averages:
        raise UsageError("--calibrate applies to output ensembles (--mode sum or product)")
    if not 0 <= options.holdout < 1:
        raise UsageError(f"--holdout must be at least 0 and below 1; got {options.holdout}")
    if options.cv == 1 or options.cv < 0:
        raise UsageError(f"--cv must be 0 (one search) or at least 2 folds; got {options.cv}")
    check_batch_size(options.batch_size)
    if options.engine.kind is not EngineKind.LOCAL and options.predictions is not None:
        raise UsageError("--engine ray runs the pass over --data; --predictions were "
                         "computed already")
    check_engine(options.engine)
    if options.plot is None:
        return []
    from fuse_cli.plotting import check_plot

    return [check_plot(options.plot)]


def check_source(data_path: Path | None, options: TuneOptions) -> Path:
    """The one source of rows: `--data` or `--predictions`.

    Raises:
        UsageError: Both or neither, or image options with saved predictions.
    """
    if (data_path is None) == (options.predictions is None):
        raise UsageError("give either --data (a .npz file or a folder of images) or "
                         "--predictions (saved by fuse evaluate --save-predictions)")
    images = options.images
    if options.predictions is not None and images is not None and images.given:
        raise UsageError("--rescale, --offset, --skip-bad-images and the other image "
                         "options apply to --data DIR; --predictions were computed already")
    source = data_path if data_path is not None else options.predictions
    assert source is not None
    return source


def tune_files(
    paths: Sequence[str | Path],
    data_path: str | Path | None,
    out: str | Path,
    options: TuneOptions | None = None,
    progress: Progress | None = None,
    advance: Advance | None = None,
) -> TuneReport | SoupTuneReport:
    """Find the weights from data, then merge, write and verify `out`.

    Planned once as a merge is (`fuse_cli.planning`): the request (options and every
    destination) before anything is read, the plan once the members are loaded; the
    data pass and the search run on the plan's checked combination, and the plan is
    executed with the weights they chose.

    Args:
        paths: Two or more member files.
        data_path: The .npz data file (see `fuse_cli.data`) or a folder of images (see
            `fuse_cli.images`); None with `options.predictions`.
        out: The merged model file (`.keras`, `.h5` or `.hdf5`).
        options: Metric, holdout, folds, the data source and the merge options.
        progress: Called with a short description before each slow step.
        advance: Called with (member, rows done, rows in all) while predicting.

    Returns:
        The scores, the chosen weights, the folds, the search path and the merge.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    start = time.perf_counter()
    request = check_tune(paths, data_path, out, options)
    return tune(request, progress=progress, advance=advance, start=start)


@dataclass(frozen=True)
class TuneRequest:
    """`fuse tune` as checked before anything is read: the merge's request (options,
    every destination), the source of the rows, tune's options."""

    merge: Request
    source: Path
    options: TuneOptions


def check_tune(
    paths: Sequence[str | Path],
    data_path: str | Path | None,
    out: str | Path,
    options: TuneOptions | None = None,
) -> TuneRequest:
    """Every check `fuse tune` makes before reading data or loading a model (no Keras).

    Raises:
        UsageError, OutputError: Bad options, or a destination that cannot be written.
    """
    options = options or TuneOptions()
    source = check_source(None if data_path is None else Path(data_path), options)
    plot = check_tune_options(options)
    # The member files are checked when they load, after the data: a data error first.
    request = check_request([Path(p) for p in paths], Path(out), options.merge, writes=plot,
                            reads=[source], member_paths=False)
    return TuneRequest(request, source, options)


def tune(
    tune_request: TuneRequest,
    progress: Progress | None = None,
    advance: Advance | None = None,
    start: float | None = None,
) -> TuneReport | SoupTuneReport:
    """Read the rows, load the members, plan, search the weights, execute the plan
    (`--mode soup`: compare the soups, `fuse_cli.soup_data.tune_soup`).

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    start = time.perf_counter() if start is None else start
    say = progress or (lambda _message: None)
    request, source, options = tune_request.merge, tune_request.source, tune_request.options
    files = list(request.files)
    clock = time.perf_counter()
    saved = read_predictions(source) if options.predictions is not None else None
    data = read_any(source, options.images) if saved is None else None
    loaded = load_models(files, unsafe=options.merge.unsafe, progress=say)
    plan = make_plan(request, loaded)
    output_shape(loaded[0].model, plan.labels[0])  # tune scores one output
    parts = {"load and check": time.perf_counter() - clock}
    clock = time.perf_counter()
    engine_notes: list[str] = []  # what the engine saw (Ray: workers that died)
    if saved is not None:
        outputs, y = _saved_outputs(plan, saved, options)
    else:
        assert data is not None
        outputs, y, rows = _member_outputs(plan, data, options, say, advance, engine_notes)
    parts["predict"] = time.perf_counter() - clock
    if not plan.method.combines_outputs and data is not None:  # a soup: measured
        from fuse_cli.soup_data import tune_soup

        return tune_soup(plan, data, (outputs, y, rows), options, say, advance, start, parts,
                         preprocessing_record(data, plan, options))
    clock = time.perf_counter()
    search = choose_weights(outputs, y, method=options.merge.method,
                            renormalize=options.merge.renormalize, metric=options.metric.value,
                            holdout=options.holdout, cv=options.cv, say=say)
    calibration = _calibrate(outputs, y, search, plan, options, say)
    parts["search"] = time.perf_counter() - clock
    kept = _kept(search.weights, options)
    notes = _notes(data, plan, search, options, kept) + engine_notes
    tuning = tuning_of_search(describe_source(saved, data, len(y)), search, options)
    if calibration is not None:
        tuning["calibration"] = calibration.to_dict()
    chosen = plan if len(kept) == len(plan.members) else plan.keep(kept)
    merged = execute(chosen.with_weights([search.weights[i] for i in kept], tuning,
                                         preprocessing_record(data, plan, options),
                                         (calibration.temperature,) if calibration else ()),
                     progress=progress, start=start, parts=parts)
    report = TuneReport(
        data=str(source),
        rows=len(y),
        metric=options.metric.value,
        method=search.result.method,
        holdout=options.holdout,
        seed=SPLIT_SEED,
        files=list(plan.labels),
        weights=normalize(search.weights),
        fit=search.fit,
        heldout=search.held,
        path=search.path,
        merge=merged,
        plot=None,
        elapsed_seconds=0.0,
        warnings=notes + merged.warnings,
        cv=search.cv,
        source=source_kind(saved, data),
        calibration=calibration,
    )
    if options.plot is not None:
        say(f"plotting {options.plot}")
        plot_search(report, search.result.chosen, options.plot, replace=options.merge.force)
        report.plot = str(options.plot)
    report.elapsed_seconds = time.perf_counter() - start
    return report


def _calibrate(outputs: list[np.ndarray], y: np.ndarray, search: Search, plan: MergePlan,
               options: TuneOptions, say: Progress) -> Calibration | None:
    """`--calibrate temperature`: the temperature fitted after the search, or None."""
    if options.calibrate is Calibrate.NONE:
        return None
    say("fitting the temperature on the out-of-fold probabilities")
    return calibrate_search(outputs, y, search, plan.labels, options.merge.method,
                            renormalize=options.merge.renormalize)


def _notes(data: Data | None, plan: MergePlan, search: Search, options: TuneOptions,
           kept: list[int]) -> list[str]:
    """The warnings of a tune: the data, the search, the scaling, members left out."""
    notes = ([] if data is None else data_notes(data)) + search_warnings(
        list(plan.labels), search, options.metric.value, kept)
    if isinstance(data, IMAGE_KINDS):
        warning = scale_warning(plan.labels, [own_scaling(m) for m in plan.models],
                                options.images)
        notes += [warning] if warning else []
    return notes + [f"{plan.labels[i]}: weight 0: left out of {plan.output} (its "
                    "predictions cost and add nothing; --keep-zero-weights keeps it)"
                    for i in range(len(plan.members)) if i not in kept]


def _kept(weights: Sequence[float], options: TuneOptions) -> list[int]:
    """The members the file keeps: all, or those of weight above 0 while two remain."""
    nonzero = [i for i, w in enumerate(weights) if w > 0]
    if options.keep_zero_weights or len(nonzero) < 2:
        return list(range(len(weights)))
    return nonzero


def _member_outputs(
    plan: MergePlan,
    data: Data,
    options: TuneOptions,
    say: Progress,
    advance: Advance | None,
    notes: list[str],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Check every member against the data, then run each once; outputs, labels, and
    the rows they cover."""
    models, labels, combination = plan.models, plan.labels, plan.combination
    images = options.images
    if combination.plan.image is not None:  # each member behind the file's preprocessing
        models = wrapped_members(models, combination.plan, plan.options.images)
        images = pipeline_options(images)
    heads = combination.heads
    for model, label in zip(models, labels, strict=True):
        check_data(data, model, heads[0].shape, label)

    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with open_engine(replace(options.engine, unsafe=options.merge.unsafe)) as engine:
        for model, label, added in zip(models, labels, combination.transforms, strict=True):
            say(f"predicting with {label}")
            run = model_outputs(model, data, label=label, batch_size=options.batch_size,
                                images=images, advance=advance, engine=engine)
            # `--to-probabilities`: search on what the merged model will compute.
            output = apply_activation(run[0].astype(np.float64), added[0]).astype(run[0].dtype)
            run = (output, run[1], run[2])
            if runs and output.shape[1:] != runs[0][0].shape[1:]:
                raise IncompatibleModelsError(
                    f"{label}: outputs {output.shape} on {data.name}, but {labels[0]} outputs "
                    f"{runs[0][0].shape}"
                )
            _check_scorable(output, label, data.name, options)  # before the next member runs
            runs.append(run)
        notes += engine.notes if engine is not None else []
    rows = common_rows(runs)
    kept = [restrict(run, rows) for run in runs]
    return [output for output, _ in kept], kept[0][1], rows


def _check_scorable(output: np.ndarray, label: str, name: str, options: TuneOptions) -> None:
    """Raises: IncompatibleModelsError (product of negatives); DataError (log-loss)."""
    options.merge.method.check_scores(output, label, name)
    if options.metric is Metric.LOG_LOSS and not are_probabilities(output):
        raise DataError(
            f"{label}: --metric log_loss needs probabilities, but its outputs on "
            f"{name} range from {output.min():.4g} to {output.max():.4g}; "
            "use --metric accuracy"
        )


def _saved_outputs(
    plan: MergePlan, saved: Predictions, options: TuneOptions
) -> tuple[list[np.ndarray], np.ndarray]:
    """The saved predictions, once they are shown to be these members' on their outputs.

    Raises:
        DataError: Predictions of other files (SHA-256), or of another output shape.
    """
    labels, combination = plan.labels, plan.combination
    check_provenance(saved, labels, [m.sha256 for m in plan.members])
    heads = combination.heads
    expected = heads[0].shape
    found = saved.outputs[0].shape[1:]
    if len(found) != len(expected) or any(
        e is not None and e != f for e, f in zip(expected, found, strict=True)
    ):
        raise DataError(f"{saved.name}: predictions have shape {saved.outputs[0].shape}, but "
                        f"{labels[0]} outputs {(None, *expected)}")
    # `--to-probabilities`: search on what the merged model will compute.
    outputs = [
        apply_activation(o.astype(np.float64), added[0]).astype(np.float32)
        for o, added in zip(saved.outputs, combination.transforms, strict=True)
    ]
    for output, label in zip(outputs, labels, strict=True):
        _check_scorable(output, label, saved.name, options)
    return outputs, saved.y.astype(np.int64)
