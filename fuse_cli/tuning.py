"""`fuse evaluate` and `fuse tune` as library calls: scores and weights from data.

`tune_files` loads each member once, runs it once over the data (batched), keeps
the predictions, splits the rows into a part to fit on and a held-out part, searches
the weights on the fit part only (`fuse_cli.search`), scores members and ensemble on
both parts, and writes the ensemble through `merge.merge_loaded`, verification
included, with the tuning recorded in the file's provenance.

numpy, Keras and the search are imported inside the functions, so the CLI can read
`Metric` without them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli.ensemble import Mode
from fuse_cli.errors import DataError, IncompatibleModelsError, OutputError, UsageError

if TYPE_CHECKING:
    import keras
    import numpy as np

    from fuse_cli.data import Dataset
    from fuse_cli.report import MergeReport
    from fuse_cli.search import Scores, SearchResult

Say = Callable[[str], None]
Advance = Callable[[str, int, int], None]  # (model label, rows done, rows in all)

HOLDOUT = 0.3
BATCH_SIZE = 256
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


class Metric(str, Enum):
    """What `fuse tune` optimizes."""

    ACCURACY = "accuracy"
    LOG_LOSS = "log_loss"


@dataclass
class ModelEvaluation:
    """One model's scores on a data file."""

    file: str
    name: str
    output_shape: str
    accuracy: float
    log_loss: float | None


@dataclass
class EvaluationReport:
    """What `fuse evaluate` found, as shown in the table and in `--json`."""

    data: str
    rows: int
    models: list[ModelEvaluation]
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)


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
    name: str = "ensemble"
    force: bool = False
    verify: bool = True
    unsafe: bool = False
    plot: Path | None = None


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


def predict(
    model: keras.Model,
    data: Dataset,
    *,
    label: str,
    batch_size: int = BATCH_SIZE,
    advance: Advance | None = None,
) -> np.ndarray:
    """Run `model` once over the data, batched, and return its (single) output.

    Raises:
        DataError: Keras refuses the data (dtype, shape).
        IncompatibleModelsError: The model yields NaN or inf.
    """
    import keras
    import numpy as np

    rows = data.rows
    callbacks = []
    if advance is not None:
        report = advance

        class _Progress(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
                report(label, min((batch + 1) * batch_size, rows), rows)

        report(label, 0, rows)
        callbacks.append(_Progress())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = model.predict(
                data.model_input(), batch_size=batch_size, verbose=0, callbacks=callbacks
            )
    except (ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataError(f"{label}: cannot run on {data.name}: {first}") from None
    output = np.asarray(keras.tree.flatten(result)[0])
    bad = int(output.size - np.count_nonzero(np.isfinite(output)))
    if bad:
        raise IncompatibleModelsError(
            f"{label}: yields NaN or inf in {bad} values on {data.name}; it cannot be scored"
        )
    return output


def _output_shape(model: keras.Model, label: str) -> tuple[int | None, ...]:
    from fuse_cli.ensemble import output_specs

    specs = output_specs(model)
    if len(specs) != 1:
        raise DataError(
            f"{label}: has {len(specs)} outputs; evaluate and tune score models with one "
            "output (class probabilities)"
        )
    return specs[0].shape


def _labels_for(data: Dataset, shape: tuple[int | None, ...], label: str) -> np.ndarray | None:
    """Class indices, or None while the class count is only known after predicting."""
    from fuse_cli.data import class_labels

    return class_labels(data, shape, label) if shape and shape[-1] is not None else None


def _checked_labels(
    data: Dataset, output: np.ndarray, found: np.ndarray | None, label: str
) -> np.ndarray:
    """Class indices that fit the actual output (its `None` dims now known)."""
    from fuse_cli.data import class_labels

    labels = found if found is not None else class_labels(data, output.shape[1:], label)
    if labels.shape != output.shape[:-1]:
        raise DataError(
            f"{label}: outputs {output.shape} on {data.name}, which does not fit labels "
            f"of shape {labels.shape}"
        )
    return labels


def evaluate_files(
    paths: Sequence[str | Path],
    data_path: str | Path,
    *,
    batch_size: int = BATCH_SIZE,
    unsafe: bool = False,
    progress: Say | None = None,
    advance: Advance | None = None,
) -> EvaluationReport:
    """Score each model (members or merged models alike) on a data file.

    Models are loaded one at a time, run once over the data, and scored.

    Args:
        paths: One or more model files.
        data_path: The .npz data file (see `fuse_cli.data`).
        batch_size: Rows per predict batch.
        unsafe: Allow code-carrying layers, as `fuse merge --unsafe`.
        progress: Called with a short description before each slow step.
        advance: Called with (model, rows done, rows in all) while predicting.

    Returns:
        Accuracy and log-loss per model.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    from fuse_cli.data import check_inputs, read_data
    from fuse_cli.ensemble import input_specs
    from fuse_cli.merge import file_labels  # not at import time: merge imports numpy
    from fuse_cli.model_io import check_keras, check_model_path, load_model
    from fuse_cli.search import are_probabilities, score

    start = time.perf_counter()
    say = progress or (lambda _message: None)
    files = [Path(p) for p in paths]
    if not files:
        raise UsageError("give at least one model to evaluate")
    _check_batch_size(batch_size)
    data = read_data(data_path)
    for path in files:
        check_model_path(path)
    check_keras()
    import fuse_cli.layers  # noqa: F401  (merged models refer to its layers)

    models, notes = [], []
    for path, label in zip(files, file_labels(files), strict=True):
        say(f"loading {path}")
        model = load_model(path, unsafe=unsafe).model
        shape = _output_shape(model, label)
        check_inputs(data, input_specs(model), label)
        found = _labels_for(data, shape, label)
        say(f"predicting with {label}")
        output = predict(model, data, label=label, batch_size=batch_size, advance=advance)
        labels = _checked_labels(data, output, found, label)
        scores = score(output, labels)
        if not are_probabilities(output):
            notes.append(f"{label}: outputs are not probabilities (values below 0 or above "
                         "1 for one column): no log-loss")
        models.append(ModelEvaluation(label, model.name, _shape_text(output.shape[1:]),
                                      scores.accuracy, scores.log_loss))
        del model
    return EvaluationReport(
        data=str(data.path),
        rows=data.rows,
        models=models,
        elapsed_seconds=time.perf_counter() - start,
        warnings=notes,
    )


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(["None", *(str(d) for d in shape)]) + ")"


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {batch_size}")


def check_tune_options(out: Path, options: TuneOptions) -> None:
    """Check what can be checked before reading data or loading models.

    Raises:
        UsageError: A bad holdout, batch size, plot file type, or a missing matplotlib.
        OutputError: The plot file exists without `force`, or its folder is missing.
    """
    if not 0 <= options.holdout < 1:
        raise UsageError(f"--holdout must be at least 0 and below 1; got {options.holdout}")
    _check_batch_size(options.batch_size)
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
    folder = plot.parent if str(plot.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"--plot {plot}: folder {folder} does not exist")
    if plot.resolve() == out.resolve():
        raise UsageError(f"--plot {plot}: is also the output model")
    if (plot.exists() or plot.is_symlink()) and not options.force:
        raise OutputError(f"--plot {plot}: already exists; pass --force to replace it")


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
    from fuse_cli.data import SPLIT_SEED, read_data, split_rows
    from fuse_cli.merge import (
        MergeOptions,
        check_options,
        file_labels,
        load_members,
        merge_loaded,
    )
    from fuse_cli.model_io import check_output
    from fuse_cli.search import Ensembler, as_rows, search_weights

    start = time.perf_counter()
    options = options or TuneOptions()
    say = progress or (lambda _message: None)
    files, out = [Path(p) for p in paths], Path(out)
    merge_options = MergeOptions(
        mode=options.mode,
        renormalize=options.renormalize,
        assume_nonnegative=options.assume_nonnegative,
        name=options.name,
        force=options.force,
        verify=options.verify,
        unsafe=options.unsafe,
    )
    check_options(len(files), merge_options)
    check_tune_options(out, options)
    check_output(out, files, force=options.force)
    data = read_data(data_path)
    loaded = load_members(files, unsafe=options.unsafe, progress=say)
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
    from fuse_cli.data import SPLIT_SEED
    from fuse_cli.model_io import sha256_of

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
    from fuse_cli.data import check_inputs
    from fuse_cli.ensemble import check_nonnegative, check_outputs, input_specs
    from fuse_cli.search import are_probabilities

    models = [m.model for m in loaded]
    heads = check_outputs(models, labels)
    if options.mode is Mode.PRODUCT:
        check_nonnegative(models, labels, assume=options.assume_nonnegative)
    _output_shape(models[0], labels[0])
    for model, label in zip(models, labels, strict=True):
        check_inputs(data, input_specs(model), label)
    found = _labels_for(data, heads[0].shape, labels[0])

    outputs: list[np.ndarray] = []
    for model, label in zip(models, labels, strict=True):
        say(f"predicting with {label}")
        output = predict(model, data, label=label, batch_size=options.batch_size,
                         advance=advance)
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
    return outputs, _checked_labels(data, outputs[0], found, labels[0])


def _ensemble_output(
    outputs: Sequence[np.ndarray], rows: np.ndarray, weights: Sequence[float], options: TuneOptions
) -> np.ndarray:
    from fuse_cli.verification import reference

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
    from fuse_cli.search import score

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
    from fuse_cli.search import Ensembler, as_rows

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

    Written atomically, like the model. Needs matplotlib (`pip install
    'fuse-cli[plot]'`).

    Raises:
        OutputError: The file cannot be written.
    """
    from matplotlib.figure import Figure

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
    folder = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=folder)
    os.close(fd)
    try:
        figure.savefig(name)
        os.replace(name, path)
    except OSError as exc:
        raise OutputError(f"--plot {path}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
