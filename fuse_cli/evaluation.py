"""`fuse evaluate` as a library call: each model's accuracy and log-loss on labelled data.

Also the prediction pass that `fuse tune` shares: over an .npz file (`fuse_cli.data`)
or, streamed, over a folder of images (`fuse_cli.images`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.calibration import scores as calibration_scores
from fuse_cli.compatibility import input_specs, output_specs, shape_text
from fuse_cli.data import Dataset, check_inputs, class_labels, read_data
from fuse_cli.engines import EngineOptions, check_engine, open_engine
from fuse_cli.errors import DataError, IncompatibleModelsError, UsageError, first_line
from fuse_cli.files import Destination, check_destinations
from fuse_cli.formats import check_keras, check_model_path, load_model
from fuse_cli.formula import prediction_batch
from fuse_cli.image_pass import predict_folder, predict_table
from fuse_cli.images import (
    ImageFolder,
    ImageOptions,
    folder_labels,
    image_inputs,
    own_scaling,
    read_image_folder,
    scale_warning,
    screen_images,
    split_folder,
)
from fuse_cli.predictions import Predictions, save_predictions
from fuse_cli.report import Advance, Progress, file_labels
from fuse_cli.search import are_probabilities, score
from fuse_cli.tables import ImageTable, is_table, read_table, table_labels

if TYPE_CHECKING:
    import keras

    from fuse_cli.engines import Engine

BATCH_SIZE = 256  # rows of an .npz file per predict batch
IMAGE_BATCH_SIZE = 32  # images per batch, as keras.utils.image_dataset_from_directory

Data = Dataset | ImageFolder | ImageTable
IMAGE_KINDS = (ImageFolder, ImageTable)  # the data kinds read as encoded images


@dataclass
class ModelEvaluation:
    """One model's scores on a data file."""

    file: str
    name: str
    output_shape: str
    accuracy: float
    log_loss: float | None
    # Calibration (`fuse_cli.calibration`): Brier score and 15-bin ECE; None where the
    # outputs are not probabilities.
    brier: float | None = None
    ece: float | None = None


@dataclass
class EvaluationReport:
    """What `fuse evaluate` found, as shown in the table and in `--json`."""

    data: str
    rows: int
    models: list[ModelEvaluation]
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0
    predictions: str | None = None
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)


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
        raise DataError(f"{label}: cannot run on {data.name}: {first_line(exc)}") from None
    output = np.asarray(keras.tree.flatten(result)[0])
    check_finite(output, label, data.name)
    return output


def output_shape(model: keras.Model, label: str) -> tuple[int | None, ...]:
    specs = output_specs(model)
    if len(specs) != 1:
        raise DataError(
            f"{label}: has {len(specs)} outputs; evaluate and tune score models with one "
            "output (class probabilities)"
        )
    return specs[0].shape


def labels_for(data: Dataset, shape: tuple[int | None, ...], label: str) -> np.ndarray | None:
    """Class indices, or None while the class count is only known after predicting."""
    return class_labels(data, shape, label) if shape and shape[-1] is not None else None


def checked_labels(
    data: Dataset, output: np.ndarray, found: np.ndarray | None, label: str
) -> np.ndarray:
    """Class indices that fit the actual output (its `None` dims now known)."""
    labels = found if found is not None else class_labels(data, output.shape[1:], label)
    if labels.shape != output.shape[:-1]:
        raise DataError(
            f"{label}: outputs {output.shape} on {data.name}, which does not fit labels "
            f"of shape {labels.shape}"
        )
    return labels


def read_any(path: str | Path, images: ImageOptions | None = None) -> Data:
    """Read `--data`: a folder of images (names and labels only), or an .npz file.

    Raises:
        UsageError: Image options given with an .npz file.
        DataError, DataLoadError: See `read_data` and `read_image_folder`.
    """
    path = Path(path)
    if is_table(path):
        if images is not None and (images.class_names or images.validation_split is not None):
            raise UsageError("--class-names and --validation-split apply to a folder of "
                             f"images; {path} is Parquet (its 'label' column gives classes)")
        return read_table(path)
    if path.is_dir():
        folder = read_image_folder(path, images.class_names if images is not None else None)
        folder = split_folder(folder, images) if images is not None else folder
        screen_images(folder, skip_bad=images is not None and images.skip_bad)
        return folder
    if images is not None and images.given:
        raise UsageError(f"--rescale, --offset, --skip-bad-images and the other image "
                         f"options apply to a folder of images; {path} is a file")
    return read_data(path)


def check_data(data: Data, model: keras.Model, shape: tuple[int | None, ...], label: str) -> None:
    """Check, before predicting, that the data fits the model's inputs and classes.

    Raises:
        DataError: Inputs that do not fit (exit 2).
        IncompatibleModelsError: Class folders that do not match the outputs (exit 4).
    """
    if isinstance(data, ImageFolder):
        image_inputs(input_specs(model), label)
        folder_labels(data, shape, label)
    elif isinstance(data, ImageTable):
        image_inputs(input_specs(model), label)
        table_labels(data, shape, label)
    else:
        check_inputs(data, input_specs(model), label)


def model_outputs(
    model: keras.Model,
    data: Data,
    *,
    label: str,
    batch_size: int | None = None,
    images: ImageOptions | None = None,
    advance: Advance | None = None,
    engine: Engine | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run one model once over the data: its output, the labels, and the rows they cover.

    Every row of an .npz file; a folder's or table's images less those that cannot be
    decoded (with `skip_bad`). The pass runs on `engine` (`fuse_cli.engines`), or here.

    Raises:
        DataError, DataLoadError, IncompatibleModelsError: See `check_data` and `predict`.
    """
    shape = output_shape(model, label)
    check_data(data, model, shape, label)
    found = labels_for(data, shape, label) if isinstance(data, Dataset) else None
    default = IMAGE_BATCH_SIZE if isinstance(data, IMAGE_KINDS) else BATCH_SIZE
    batch = prediction_batch(model, batch_size or default, label)
    run = engine.outputs if engine is not None else local_outputs
    output, rows = run(model, data, label=label, batch_size=batch,
                       images=images or ImageOptions(), advance=advance)
    check_finite(output, label, data.name)
    if isinstance(data, Dataset):
        return output, checked_labels(data, output, found, label), rows
    return output, data.labels[rows], rows


def local_outputs(
    model: keras.Model, data: Data, *, label: str, batch_size: int, images: ImageOptions,
    advance: Advance | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The local engine: the pass in this process. The output rows, and the rows of the
    data they belong to (sorted)."""
    if isinstance(data, Dataset):
        output = predict(model, data, label=label, advance=advance, batch_size=batch_size)
        return output, np.arange(data.rows)
    reader = predict_folder if isinstance(data, ImageFolder) else predict_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reader(model, data, label=label,  # type: ignore[arg-type]
                      sizes=image_inputs(input_specs(model), label), options=images,
                      batch_size=batch_size, advance=advance)


def check_finite(output: np.ndarray, label: str, name: str) -> None:
    """Raises IncompatibleModelsError: the model yields NaN or inf."""
    bad = int(output.size - np.count_nonzero(np.isfinite(output)))
    if bad:
        raise IncompatibleModelsError(
            f"{label}: yields NaN or inf in {bad} values on {name}; it cannot be scored"
        )


def common_rows(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The rows every model's run covers (they differ only if a folder changed mid-run)."""
    rows = runs[0][2]
    for _, _, more in runs[1:]:
        rows = np.intersect1d(rows, more)
    return rows


def restrict(
    run: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One run's output and labels on `rows` (a subset of the rows it covers)."""
    output, labels, covered = run
    if len(covered) == len(rows):
        return output, labels
    where = np.searchsorted(covered, rows)
    return output[where], labels[where]


def data_notes(data: Data) -> list[str]:
    """Warnings about files a folder left out (not images) and images (skipped) that
    cannot be decoded."""
    if isinstance(data, Dataset):
        return []
    notes = []
    if isinstance(data, ImageFolder) and data.ignored:
        notes.append(f"{data.name}: ignored {len(data.ignored)} file"
                     f"{'s' if len(data.ignored) != 1 else ''} without an image extension "
                     f"(.bmp .gif .jpeg .jpg .png), e.g. {data.ignored[0]}")
    if data.bad:
        row = min(data.bad)
        where = data.files[row] if isinstance(data, ImageFolder) else data.row_name(row)
        notes.append(f"{data.name}: skipped {len(data.bad)} image"
                     f"{'s' if len(data.bad) != 1 else ''} that cannot be decoded "
                     f"(--skip-bad-images), e.g. {where}: {data.bad[row]}")
    return notes


@dataclass(frozen=True)
class EvaluateRequest:
    """`fuse evaluate` as checked before any model loads: files, data (read), options."""

    files: tuple[Path, ...]
    data_path: Path
    data: Data
    batch_size: int | None
    unsafe: bool
    images: ImageOptions | None
    save: Path | None
    force: bool
    plot: Path | None = None
    engine: EngineOptions = EngineOptions()


def check_evaluate(
    paths: Sequence[str | Path],
    data_path: str | Path,
    *,
    batch_size: int | None = None,
    unsafe: bool = False,
    images: ImageOptions | None = None,
    save: Path | None = None,
    force: bool = False,
    plot: Path | None = None,
    engine: EngineOptions | None = None,
) -> EvaluateRequest:
    """Every check `fuse evaluate` makes before a model loads (no Keras needed): options,
    the `--save-predictions` destination, the model paths, and the data, read.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise UsageError("give at least one model to evaluate")
    check_batch_size(batch_size)
    engine = replace(engine or EngineOptions(), unsafe=unsafe)
    check_engine(engine)
    writes = [Destination("--save-predictions", save)] if save is not None else []
    if plot is not None:
        from fuse_cli.plotting import check_plot

        writes.append(check_plot(plot))
    if writes:
        check_destinations(writes, [*files, Path(data_path)], force=force)
    data = read_any(data_path, images)
    for path in files:
        check_model_path(path)
    return EvaluateRequest(tuple(files), Path(data_path), data, batch_size, unsafe, images,
                           save, force, plot, engine)


def evaluate_files(
    paths: Sequence[str | Path],
    data_path: str | Path,
    *,
    batch_size: int | None = None,
    unsafe: bool = False,
    images: ImageOptions | None = None,
    save: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    advance: Advance | None = None,
) -> EvaluationReport:
    """Score each model (members or merged models alike) on labelled data.

    Models are loaded one at a time, run once over the data, and scored.

    Args:
        paths: One or more model files.
        data_path: The .npz data file (see `fuse_cli.data`) or a folder of images
            (see `fuse_cli.images`).
        batch_size: Rows per predict batch (default 256 for .npz rows, 32 for images).
        unsafe: Allow code-carrying layers, as `fuse merge --unsafe`.
        images: Preprocessing and bad-file handling for a folder of images.
        save: Also write every model's predictions there (see `fuse_cli.predictions`).
        force: Replace `save` if it exists.
        progress: Called with a short description before each slow step.
        advance: Called with (model, rows done, rows in all) while predicting.

    Returns:
        Accuracy and log-loss per model.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    request = check_evaluate(paths, data_path, batch_size=batch_size, unsafe=unsafe,
                             images=images, save=save, force=force)
    return evaluate(request, progress=progress, advance=advance)


def evaluate(
    request: EvaluateRequest, progress: Progress | None = None, advance: Advance | None = None
) -> EvaluationReport:
    """Load, run and score each model of a checked request; write its predictions."""
    start = time.perf_counter()
    say = progress or (lambda _message: None)
    files, data, save = list(request.files), request.data, request.save
    batch_size, images = request.batch_size, request.images
    check_keras()
    runs, digests, scaling = [], [], []
    with open_engine(request.engine) as engine:
        for path, label in zip(files, file_labels(files), strict=True):
            say(f"loading {path}")
            loaded = load_model(path, unsafe=request.unsafe)
            model = loaded.model
            digests.append(loaded.sha256)
            say(f"predicting with {label}")
            runs.append((model_outputs(model, data, label=label, batch_size=batch_size,
                                       images=images, advance=advance, engine=engine),
                         model.name))
            scaling.append(own_scaling(model))
            del model, loaded
        engine_notes = engine.notes if engine is not None else []
    rows = common_rows([r for r, _ in runs])
    models, outputs, labels, notes = _scores(runs, rows, file_labels(files))
    notes = data_notes(data) + notes + engine_notes
    if isinstance(data, IMAGE_KINDS):
        warning = scale_warning(file_labels(files), scaling, images)
        notes += [warning] if warning else []
    if save is not None:
        say(f"writing {save}")
        save_predictions(Predictions(
            path=save, y=labels, outputs=outputs, files=[p.name for p in files],
            sha256=digests,
            classes=data.classes if isinstance(data, ImageFolder) else None,
            data=request.data_path.name), save, replace=request.force)
    if request.plot is not None:
        from fuse_cli.plotting import plot_reliability

        say(f"plotting {request.plot}")
        plot_reliability([(label, output) for label, output, m
                          in zip(file_labels(files), outputs, models, strict=True)
                          if m.ece is not None], labels, request.plot, replace=request.force)
    return EvaluationReport(
        data=str(data.path),
        rows=len(rows),
        models=models,
        elapsed_seconds=time.perf_counter() - start,
        warnings=notes,
        skipped=len(data.bad) if isinstance(data, IMAGE_KINDS) else 0,
        predictions=str(save) if save is not None else None,
        plot=str(request.plot) if request.plot is not None else None,
    )


def _scores(
    runs: Sequence[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], str]],
    rows: np.ndarray,
    labels: Sequence[str],
) -> tuple[list[ModelEvaluation], list[np.ndarray], np.ndarray, list[str]]:
    """Each model's scores on the rows every run covers; its outputs there, the labels,
    and a note for each model whose outputs are not probabilities."""
    models, outputs, notes = [], [], []
    y = np.zeros(0)
    for (run, name), label in zip(runs, labels, strict=True):
        output, y = restrict(run, rows)
        outputs.append(output)
        scores = score(output, y)
        if not are_probabilities(output):
            notes.append(f"{label}: outputs are not probabilities (values below 0 or above "
                         "1 for one column): no log-loss")
        calibration = (calibration_scores(output, y) if scores.log_loss is not None
                       else {"brier": None, "ece": None})
        models.append(ModelEvaluation(label, name, shape_text(output.shape[1:]),
                                      scores.accuracy, scores.log_loss,
                                      calibration["brier"], calibration["ece"]))
    return models, outputs, y, notes


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {batch_size}")
