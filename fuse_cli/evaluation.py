"""`fuse evaluate` as a library call: each model's accuracy and log-loss on labelled data.

Also the batched prediction pass that `fuse tune` shares.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

import fuse_cli.layers  # noqa: F401  (merged models refer to its layers)
from fuse_cli.data import Dataset, check_inputs, class_labels, read_data
from fuse_cli.ensemble import input_specs, output_specs
from fuse_cli.errors import DataError, IncompatibleModelsError, UsageError, first_line
from fuse_cli.formats import check_keras, check_model_path, load_model
from fuse_cli.report import file_labels
from fuse_cli.search import are_probabilities, score

Say = Callable[[str], None]
Advance = Callable[[str, int, int], None]  # (model label, rows done, rows in all)

BATCH_SIZE = 256


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
    bad = int(output.size - np.count_nonzero(np.isfinite(output)))
    if bad:
        raise IncompatibleModelsError(
            f"{label}: yields NaN or inf in {bad} values on {data.name}; it cannot be scored"
        )
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
    start = time.perf_counter()
    say = progress or (lambda _message: None)
    files = [Path(p) for p in paths]
    if not files:
        raise UsageError("give at least one model to evaluate")
    check_batch_size(batch_size)
    data = read_data(data_path)
    for path in files:
        check_model_path(path)
    check_keras()

    models, notes = [], []
    for path, label in zip(files, file_labels(files), strict=True):
        say(f"loading {path}")
        model = load_model(path, unsafe=unsafe).model
        shape = output_shape(model, label)
        check_inputs(data, input_specs(model), label)
        found = labels_for(data, shape, label)
        say(f"predicting with {label}")
        output = predict(model, data, label=label, batch_size=batch_size, advance=advance)
        labels = checked_labels(data, output, found, label)
        scores = score(output, labels)
        if not are_probabilities(output):
            notes.append(f"{label}: outputs are not probabilities (values below 0 or above "
                         "1 for one column): no log-loss")
        models.append(ModelEvaluation(label, model.name, shape_text(output.shape[1:]),
                                      scores.accuracy, scores.log_loss))
        del model
    return EvaluationReport(
        data=str(data.path),
        rows=data.rows,
        models=models,
        elapsed_seconds=time.perf_counter() - start,
        warnings=notes,
    )


def shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(["None", *(str(d) for d in shape)]) + ")"


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1; got {batch_size}")
