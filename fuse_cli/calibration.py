"""Temperature scaling (Guo et al., 2017) of an ensemble's probabilities, and the
calibration scores: expected calibration error and the Brier score. numpy only.

A probability output `p` (rows over classes) becomes `softmax(log(p) / T)`; a single
sigmoid unit `p` becomes `sigmoid(logit(p) / T)`. One `T > 0` per output head, fitted to
minimize log-loss on out-of-fold predictions ("pool then calibrate": the ensemble is
calibrated, not each member). `T > 1` softens an over-confident output, `T < 1`
sharpens an under-confident one; the argmax never changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fuse_cli.methods import MergeMethod
    from fuse_cli.selection import Search

BINS = 15  # equal-width confidence bins for the expected calibration error
LOW, HIGH = 1e-7, 1 - 1e-7  # clipping of the label's probability, as Keras's log-loss
_SEARCH = (math.log(1e-2), math.log(1e2))  # T from 0.01 to 100
_STEPS = 100  # golden-section steps: the interval shrinks to 1e-21 of its width


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(p) / T)` over the last axis, or `sigmoid(logit(p) / T)` for one unit,
    in float64 (log(0) = -inf gives 0, as in the Keras graph)."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape[-1] == 1:
        with np.errstate(divide="ignore"):
            logit = _log(p) - _log(1.0 - p)
        return 1.0 / (1.0 + np.exp(-logit / temperature))
    a = _log(p) / temperature
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def as_classes(p: np.ndarray) -> np.ndarray:
    """A single sigmoid column as two classes `(1 - p, p)`; rows renormalized."""
    p = np.asarray(p, dtype=np.float64).reshape(-1, p.shape[-1])
    if p.shape[-1] == 1:
        p = np.concatenate([1.0 - p, p], axis=1)
    return p / np.maximum(p.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the label, clipped as Keras's cross-entropy."""
    q = as_classes(p)
    chosen = np.clip(q[np.arange(len(q)), y.reshape(-1)], LOW, HIGH)
    return float(-np.mean(np.log(chosen)))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of Σ_k (q_k - [k = label])²."""
    q = as_classes(p)
    truth = np.zeros_like(q)
    truth[np.arange(len(q)), y.reshape(-1)] = 1.0
    return float(np.mean(np.sum((q - truth) ** 2, axis=1)))


def reliability(
    p: np.ndarray, y: np.ndarray, bins: int = BINS
) -> tuple[list[float], list[float], list[int]]:
    """Per non-empty equal-width bin of the top probability (the last bin includes 1):
    its mean confidence, its accuracy and its rows (the reliability diagram's points)."""
    q = as_classes(p)
    confidence, correct = q.max(axis=1), q.argmax(axis=1) == y.reshape(-1)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    found: tuple[list[float], list[float], list[int]] = ([], [], [])
    for b in range(bins):
        rows = which == b
        if rows.any():
            found[0].append(float(confidence[rows].mean()))
            found[1].append(float(correct[rows].mean()))
            found[2].append(int(rows.sum()))
    return found


def ece(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the row-weighted mean |accuracy - confidence| over the
    bins of `reliability`."""
    confidence, accuracy, rows = reliability(p, y, bins)
    total = sum(n * abs(a - c) for c, a, n in zip(confidence, accuracy, rows, strict=True))
    return float(total / sum(rows))


def scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, log-loss, Brier score and ECE of probabilities `p` on labels `y`."""
    q = as_classes(p)
    return {"accuracy": float(np.mean(q.argmax(axis=1) == y.reshape(-1))),
            "log_loss": log_loss(p, y), "brier": brier(p, y), "ece": ece(p, y)}


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The `T` in [0.01, 100] that minimizes the log-loss of `apply_temperature(p, T)`
    (golden-section search on log T; the log-loss is unimodal in it)."""
    def loss(t: float) -> float:
        return log_loss(apply_temperature(p, math.exp(t)), y)

    golden = (math.sqrt(5) - 1) / 2
    a, b = _SEARCH
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2)


@dataclass(frozen=True)
class Calibration:
    """What `--calibrate temperature` fitted and measured.

    Attributes:
        temperature: `T` of the (one) output head.
        rows: The rows it was fitted and scored on.
        scored_on: `out of fold` or `in-sample` (`--cv 0`).
        before: Scores of the ensemble's probabilities on those rows.
        after: The same, calibrated.
        held_before: On `--holdout` rows, which the fit never saw (or None).
        held_after: The same, calibrated.
    """

    temperature: float
    rows: int
    scored_on: str
    before: dict[str, float]
    after: dict[str, float]
    held_before: dict[str, float] | None = None
    held_after: dict[str, float] | None = None
    # For the reliability diagram: the pooled probabilities, calibrated, and the labels.
    curves: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None,
                                                                       repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (also the provenance's record)."""
        return {"method": "temperature", "temperatures": [self.temperature],
                "rows": self.rows, "scored_on": self.scored_on, "before": self.before,
                "after": self.after, "heldout_before": self.held_before,
                "heldout_after": self.held_after}


def calibrate_ensemble(
    outputs: list[np.ndarray],
    y: np.ndarray,
    fold_rows: list[np.ndarray],
    fold_weights: list[list[float]],
    held: tuple[np.ndarray, list[float]] | None,
    combine: Any,
) -> Calibration:
    """Fit `T` on the ensemble's out-of-fold probabilities and score before and after.

    Args:
        outputs: Each member's outputs on every row.
        y: Labels of every row.
        fold_rows: Per fold, its rows (in-sample: one "fold", every row to fit).
        fold_weights: Per fold, the weights searched without it (in-sample: the final).
        held: The held-out rows and the final weights, or None.
        combine: The merge method's numpy formula, `(outputs, weights) -> output`.
    """
    rows = np.concatenate(fold_rows)
    pooled = np.concatenate([combine([o[f] for o in outputs], w)
                             for f, w in zip(fold_rows, fold_weights, strict=True)])
    labels = y[rows]
    temperature = fit_temperature(pooled, labels)
    held_before = held_after = None
    if held is not None:
        held_rows, weights = held
        p = combine([o[held_rows] for o in outputs], weights)
        held_before = scores(p, y[held_rows])
        held_after = scores(apply_temperature(p, temperature), y[held_rows])
    scored_on = "out of fold" if len(fold_rows) > 1 else "in-sample"
    calibrated = apply_temperature(pooled, temperature)
    return Calibration(temperature, len(rows), scored_on, scores(pooled, labels),
                       scores(calibrated, labels), held_before, held_after,
                       (pooled, calibrated, labels))


def calibrate_search(
    outputs: list[np.ndarray],
    y: np.ndarray,
    search: Search,
    labels: Sequence[str],
    method: MergeMethod,
    *,
    renormalize: bool,
) -> Calibration:
    """`--calibrate temperature` after tune's search: its split and folds, each fold's
    rows combined with the weights found without them.

    Raises:
        UsageError: A member whose outputs are not probabilities (exit 2).
    """
    from fuse_cli.errors import UsageError
    from fuse_cli.search import are_probabilities

    for output, label in zip(outputs, labels, strict=True):
        if not are_probabilities(output):
            raise UsageError(
                f"--calibrate temperature needs probabilities (softmax or sigmoid outputs): "
                f"{label} outputs range from {output.min():.4g} to {output.max():.4g} "
                "(raw scores: --to-probabilities)"
            )
    if search.cv is not None:  # the search's own folds, each with its weights
        fold_rows = list(search.folds)
        fold_weights = [f.weights for f in search.cv.folds]
    else:
        fold_rows, fold_weights = [search.fit_rows], [search.weights]

    def combine(parts: list[np.ndarray], weights: list[float]) -> np.ndarray:
        return np.asarray(method.combine([p.astype(np.float64) for p in parts], weights,
                                         renormalize))

    held = (search.held_rows, search.weights) if len(search.held_rows) else None
    return calibrate_ensemble(outputs, y, fold_rows, fold_weights, held, combine)
