"""`fuse tune` as a library call: weights from data, then one verified merged file.

`tune_files` loads each member once, runs it once over the data (batched), keeps
the predictions, splits the rows into a part to fit on and a held-out part, searches
the weights on the fit part only (`fuse_cli.search`), scores members and ensemble on
both parts, and writes the ensemble through `merge.merge_loaded`, verification
included, with the tuning recorded in the file's provenance.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuse_cli.choices import Metric, Mode
from fuse_cli.data import SPLIT_SEED, Dataset, check_inputs, read_data, split_rows
from fuse_cli.ensemble import check_combination, input_specs
from fuse_cli.errors import DataError, IncompatibleModelsError, UsageError
from fuse_cli.evaluation import (
    BATCH_SIZE,
    Advance,
    Say,
    check_batch_size,
    checked_labels,
    labels_for,
    output_shape,
    predict,
)
from fuse_cli.files import check_destination, check_output, check_writes, publish
from fuse_cli.formats import load_models, sha256_of
from fuse_cli.merge import MergeOptions, check_options, merge_loaded
from fuse_cli.report import MergeReport, file_labels
from fuse_cli.search import (
    Ensembler,
    Scores,
    SearchResult,
    are_probabilities,
    as_rows,
    score,
    search_weights,
)
from fuse_cli.verification import apply_activation, reference

HOLDOUT = 0.3
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@dataclass
class PartScores:
    """Scores on one part of the data: each member, the tuned ensemble, equal weights."""

    rows: int
    members: list[Scores]
    ensemble: Scores
    equal_weights: Scores

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "rows": self.rows,
            "members": [s.to_dict() for s in self.members],
            "ensemble": self.ensemble.to_dict(),
            "equal_weights": self.equal_weights.to_dict(),
        }


@dataclass
class TuneOptions:
    """The options of `fuse tune`; the merge options keep `fuse merge`'s defaults."""

    mode: Mode = Mode.SUM
    metric: Metric = Metric.LOG_LOSS
    holdout: float = HOLDOUT
    batch_size: int = BATCH_SIZE
    renormalize: bool = False
    assume_nonnegative: bool = False
    allow_mixed_outputs: bool = False
    to_probabilities: bool = False
    name: str = "ensemble"
    force: bool = False
    verify: bool = True
    unsafe: bool = False
    plot: Path | None = None
    share: bool = True


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return {
            "data": self.data,
            "rows": self.rows,
            "metric": self.metric,
            "method": self.method,
            "holdout": self.holdout,
            "seed": self.seed,
            "files": self.files,
            "weights": self.weights,
            "fit": self.fit.to_dict(),
            "heldout": self.heldout.to_dict() if self.heldout else None,
            "path": self.path,
            "merge": self.merge.to_dict(),
            "plot": self.plot,
            "elapsed_seconds": self.elapsed_seconds,
            "warnings": self.warnings,
        }


def check_tune_options(out: Path, options: TuneOptions) -> None:
    """Check what can be checked before reading data or loading models.

    Raises:
        UsageError: A bad holdout, batch size, plot file type, or a missing matplotlib.
        OutputError: The plot file exists without `force`, or its folder is missing.
    """
    if not 0 <= options.holdout < 1:
        raise UsageError(f"--holdout must be at least 0 and below 1; got {options.holdout}")
    check_batch_size(options.batch_size)
    plot = options.plot
    if plot is None:
        return
    if plot.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(
            f"--plot {plot}: must end in {', '.join(PLOT_SUFFIXES)}; got "
            f"{plot.suffix or 'no extension'!r}"
        )
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'fuse-cli[plot]'")
    if plot.resolve() == out.resolve():
        raise UsageError(f"--plot {plot}: is also the output model")
    check_destination(plot, [], force=options.force)


def tune_files(
    paths: Sequence[str | Path],
    data_path: str | Path,
    out: str | Path,
    options: TuneOptions | None = None,
    progress: Say | None = None,
    advance: Advance | None = None,
) -> TuneReport:
    """Find the weights from data, then merge, write and verify `out`.

    Args:
        paths: Two or more member files.
        data_path: The .npz data file (see `fuse_cli.data`).
        out: The merged model file (`.keras`, `.h5` or `.hdf5`).
        options: Mode, metric, holdout and the merge options.
        progress: Called with a short description before each slow step.
        advance: Called with (member, rows done, rows in all) while predicting.

    Returns:
        The scores on both parts, the chosen weights, the search path and the merge.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    start = time.perf_counter()
    options = options or TuneOptions()
    say = progress or (lambda _message: None)
    files, out = [Path(p) for p in paths], Path(out)
    merge_options = MergeOptions(
        mode=options.mode,
        renormalize=options.renormalize,
        assume_nonnegative=options.assume_nonnegative,
        allow_mixed_outputs=options.allow_mixed_outputs,
        to_probabilities=options.to_probabilities,
        name=options.name,
        force=options.force,
        verify=options.verify,
        unsafe=options.unsafe,
        share=options.share,
    )
    check_options(len(files), merge_options)
    check_tune_options(out, options)
    check_output(out, files, force=options.force)
    plot = [("--plot", options.plot)] if options.plot is not None else []
    check_writes([("-o", out), *plot], [*files, Path(data_path)])
    data = read_data(data_path)
    loaded = load_models(files, unsafe=options.unsafe, progress=say)
    labels = file_labels(files)

    outputs, y = _member_outputs(loaded, labels, data, options, say, advance)
    fit_rows, held_rows = split_rows(y, options.holdout)
    metric = options.metric.value
    say(f"searching weights ({metric}) on {len(fit_rows)} rows")
    fit = Ensembler([as_rows(o[fit_rows]) for o in outputs], y[fit_rows], options.mode)
    result = search_weights(fit, metric)  # type: ignore[arg-type]
    fit_scores = _part_scores(outputs, y, fit_rows, result.weights, options)
    held_scores = (
        _part_scores(outputs, y, held_rows, result.weights, options) if len(held_rows) else None
    )
    path = _path_scores(result, outputs, y, held_rows, options.mode)

    notes = _tune_warnings(labels, result.weights, held_scores, options)
    merge_options.weights = result.weights
    merge_options.extra_provenance = {
        "tuning": _provenance(data, result.method, options, fit_scores, held_scores)
    }
    merged = merge_loaded(loaded, out, merge_options, progress=progress, start=start)

    report = TuneReport(
        data=str(data.path),
        rows=data.rows,
        metric=metric,
        method=result.method,
        holdout=options.holdout,
        seed=SPLIT_SEED,
        files=labels,
        weights=merged.weights,
        fit=fit_scores,
        heldout=held_scores,
        path=path,
        merge=merged,
        plot=None,
        elapsed_seconds=0.0,
        warnings=notes + merged.warnings,
    )
    if options.plot is not None:
        say(f"plotting {options.plot}")
        plot_search(report, result.chosen, options.plot)
        report.plot = str(options.plot)
    report.elapsed_seconds = time.perf_counter() - start
    return report


def _provenance(
    data: Dataset,
    method: str,
    options: TuneOptions,
    fit: PartScores,
    held: PartScores | None,
) -> dict[str, Any]:
    """What the merged file records about its tuning (beside `fuse merge`'s keys)."""
    return {
        "metric": options.metric.value,
        "method": method,
        "data": {"file": data.path.name, "sha256": sha256_of(data.path), "rows": data.rows},
        "holdout": options.holdout,
        "seed": SPLIT_SEED,
        "fit": {"rows": fit.rows, **fit.ensemble.to_dict()},
        "heldout": {"rows": held.rows, **held.ensemble.to_dict()} if held else None,
    }


def _member_outputs(
    loaded: Sequence[Any],
    labels: Sequence[str],
    data: Dataset,
    options: TuneOptions,
    say: Say,
    advance: Advance | None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Check every member against the data, then run each once; outputs and labels."""
    models = [m.model for m in loaded]
    combination = check_combination(
        models, labels, mode=options.mode, assume_nonnegative=options.assume_nonnegative,
        allow_mixed_outputs=options.allow_mixed_outputs,
        to_probabilities=options.to_probabilities,
    )
    heads = combination.heads
    output_shape(models[0], labels[0])
    for model, label in zip(models, labels, strict=True):
        check_inputs(data, input_specs(model), label)
    found = labels_for(data, heads[0].shape, labels[0])

    outputs: list[np.ndarray] = []
    for model, label, added in zip(models, labels, combination.transforms, strict=True):
        say(f"predicting with {label}")
        output = predict(model, data, label=label, batch_size=options.batch_size,
                         advance=advance)
        # `--to-probabilities`: search on what the merged model will compute.
        output = apply_activation(output.astype(np.float64), added[0]).astype(output.dtype)
        if outputs and output.shape != outputs[0].shape:
            raise IncompatibleModelsError(
                f"{label}: outputs {output.shape} on {data.name}, but {labels[0]} outputs "
                f"{outputs[0].shape}"
            )
        if options.mode is Mode.PRODUCT and output.min() < 0:
            raise IncompatibleModelsError(
                f"{label}: product mode needs outputs >= 0, but it yields {output.min():.4g} "
                f"on {data.name}"
            )
        if options.metric is Metric.LOG_LOSS and not are_probabilities(output):
            raise DataError(
                f"{label}: --metric log_loss needs probabilities, but its outputs on "
                f"{data.name} range from {output.min():.4g} to {output.max():.4g}; "
                "use --metric accuracy"
            )
        outputs.append(output)
    return outputs, checked_labels(data, outputs[0], found, labels[0])


def _ensemble_output(
    outputs: Sequence[np.ndarray], rows: np.ndarray, weights: Sequence[float], options: TuneOptions
) -> np.ndarray:
    members = [[o[rows]] for o in outputs]
    return reference(members, weights, options.mode, options.renormalize)[0]


def _part_scores(
    outputs: Sequence[np.ndarray],
    y: np.ndarray,
    rows: np.ndarray,
    weights: Sequence[float],
    options: TuneOptions,
) -> PartScores:
    """Exact scores (float64, the formula of DESIGN §2) on the given rows."""
    labels = y[rows]
    equal = [1 / len(outputs)] * len(outputs)
    return PartScores(
        rows=len(rows),
        members=[score(o[rows], labels) for o in outputs],
        ensemble=score(_ensemble_output(outputs, rows, weights, options), labels),
        equal_weights=score(_ensemble_output(outputs, rows, equal, options), labels),
    )


def _path_scores(
    result: SearchResult,
    outputs: Sequence[np.ndarray],
    y: np.ndarray,
    held_rows: np.ndarray,
    mode: Mode,
) -> list[dict[str, Any]]:
    """The search path with its fit scores and, computed afterwards, its held-out scores."""
    held: list[dict[str, float | None]] | list[None] = [None] * len(result.path)
    if len(held_rows):
        part = Ensembler([as_rows(o[held_rows]) for o in outputs], y[held_rows], mode)
        accuracy, log_loss = part.scores(result.path)
        held = [
            {"accuracy": float(a), "log_loss": None if math.isnan(loss) else float(loss)}
            for a, loss in zip(accuracy, log_loss, strict=True)
        ]
    return [
        {"weights": w, "fit": s.to_dict(), "heldout": h}
        for w, s, h in zip(result.path, result.scores, held, strict=True)
    ]


def _tune_warnings(
    labels: Sequence[str],
    weights: Sequence[float],
    held: PartScores | None,
    options: TuneOptions,
) -> list[str]:
    notes = []
    for label, weight in zip(labels, weights, strict=True):
        if weight < 0.01:
            notes.append(
                f"{label}: weight {weight:.3g}; it adds its full cost to every prediction "
                "and almost nothing to the result: consider leaving it out"
            )
    if held is None:
        notes.append("--holdout 0: every score is on the rows the weights were fitted to")
        return notes
    metric = options.metric.value
    ensemble = held.ensemble.get(metric)
    found = [(s.get(metric), label) for s, label in zip(held.members, labels, strict=True)]
    members = [(value, label) for value, label in found if value is not None]
    if ensemble is None or not members:
        return notes
    higher = metric == "accuracy"
    best, label = max(members) if higher else min(members)
    if (ensemble < best) if higher else (ensemble > best):
        notes.append(
            f"on the held-out rows the ensemble ({metric} {ensemble:.4g}) does worse "
            f"than {label} alone ({best:.4g}): the weights may not generalize"
        )
    return notes


def plot_search(report: TuneReport, chosen: int, path: Path) -> None:
    """Draw the score along the search (two members: against the first weight).

    Written through `fuse_cli.files.publish`, like the model. Needs matplotlib (`pip install
    'fuse-cli[plot]'`).

    Raises:
        OutputError: The file cannot be written.
    """
    from matplotlib.figure import Figure  # optional: the plot extra

    metric = report.metric
    points = report.path
    two = len(report.files) == 2
    xs = [p["weights"][0] for p in points] if two else list(range(1, len(points) + 1))
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.subplots()
    for part, style in (("fit", "-"), ("heldout", "--")):
        ys = [p[part][metric] if p[part] else None for p in points]
        if any(v is not None for v in ys):
            rows = report.fit.rows if part == "fit" else (report.heldout or report.fit).rows
            name = "fit" if part == "fit" else "held out"
            axes.plot(xs, [float("nan") if v is None else v for v in ys], style,
                      label=f"{name} ({rows} rows)")
    axes.axvline(xs[chosen], color="gray", linewidth=0.8, label="chosen")
    axes.set_xlabel(f"weight of {report.files[0]} ({report.files[1]}: 1 - w)" if two
                    else "round of greedy selection")
    axes.set_ylabel(metric.replace("_", "-"))
    axes.set_title(f"fuse tune: {report.merge.mode}, {len(report.files)} members")
    axes.legend()
    publish(path, lambda tmp: figure.savefig(tmp), label=f"--plot {path}")
