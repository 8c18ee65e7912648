"""Scores and the ensemble-weight search, on predictions already made: numpy only.

Scores follow Keras's metrics on probabilities:

- **accuracy**: the argmax over the last axis equals the label (for a single sigmoid
  column `p`, the prediction is 1 when `p > 0.5`), averaged over every row and
  position.
- **log-loss**: each row divided by its sum (what Keras's categorical cross-entropy
  does with `from_logits=False`), the true class's probability clipped to
  `[EPSILON, 1 - EPSILON]`, then `-log` averaged. A sigmoid column `p` is read as the
  two classes `(1 - p, p)`. It is defined only for outputs that are probabilities
  (`>= 0`, and `<= 1` for a sigmoid column); otherwise it is reported as missing.

A weighted product's output is scored the same way, so renormalizing it or not
changes no score. The search never sees the rows it is not given: the caller hands it
the part of the data to fit on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fuse_cli.choices import Mode
from fuse_cli.methods import method_for

MetricName = Literal["accuracy", "log_loss"]

EPSILON = 1e-7
GRID_STEPS = 100  # two members: the first weight runs over 0, 0.01, ..., 1
GREEDY_ROUNDS = 100  # more members: weights are multiples of 1/rounds
LOG_LOSS_TIE = 1e-6  # log-losses closer than this are equal for the search
_BLOCK = 1 << 20  # elements per block of a vectorized evaluation


@dataclass(frozen=True)
class Scores:
    """Accuracy and log-loss of one set of predictions.

    Attributes:
        accuracy: Share of rows (and positions) whose predicted class is the label.
        log_loss: Mean clipped negative log-probability of the label; None when the
            outputs are not probabilities.
    """

    accuracy: float
    log_loss: float | None

    def get(self, metric: str) -> float | None:
        """The value of `metric`."""
        return self.accuracy if metric == "accuracy" else self.log_loss

    def to_dict(self) -> dict[str, float | None]:
        """A JSON-ready dictionary."""
        return {"accuracy": self.accuracy, "log_loss": self.log_loss}


@dataclass
class SearchResult:
    """The chosen weights and the path that led to them.

    Attributes:
        weights: One weight per member, summing to 1.
        method: `grid` (two members) or `greedy` (more).
        path: The weight vectors the search went through, in order: the whole grid
            for two members, the ensemble after each round for more.
        scores: The fit part's scores along `path`.
        chosen: The index of `weights` in `path`.
    """

    weights: list[float]
    method: str
    path: list[list[float]]
    scores: list[Scores]
    chosen: int


def as_rows(output: np.ndarray) -> np.ndarray:
    """Flatten `(N, ..., C)` outputs to `(M, C)` rows, one per row and position."""
    return output.reshape(-1, output.shape[-1])


def are_probabilities(output: np.ndarray) -> bool:
    """Whether log-loss is defined: values >= 0, and <= 1 for a single sigmoid column."""
    if output.size == 0:
        return True
    if output.shape[-1] == 1:
        return bool(np.min(output) >= 0 and np.max(output) <= 1)
    return bool(np.min(output) >= 0)


class Ensembler:
    """Scores many weight vectors at once over the kept outputs of the members.

    The outputs are kept class-major, `(K, C, rows)`, in blocks of rows, so that the
    reductions over classes run along contiguous memory; the search works in float32
    (as the models do) and sums in float64.

    Args:
        outputs: Each member's outputs as `(M, C)` rows (see `as_rows`), same shape.
        labels: The class index of every row, `(M,)`.
        mode: Weighted sum, or weighted product (computed in log space).
        dtype: The precision of the element-wise work; float64 for exact reports.
    """

    def __init__(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray,
        mode: Mode,
        dtype: type[np.floating[Any]] = np.float32,
    ) -> None:
        self.mode = mode
        self.method = method_for(mode)
        self.dtype = np.dtype(dtype)
        self.members = len(outputs)
        self.rows, self.classes = np.shape(outputs[0])
        self.probabilities = all(are_probabilities(np.asarray(o)) for o in outputs)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != self.rows or any(np.shape(o) != np.shape(outputs[0]) for o in outputs):
            raise ValueError(
                f"outputs {[np.shape(o) for o in outputs]} and labels {labels.shape} differ"
            )
        step = max(1, _BLOCK // (self.members * self.classes))
        self._blocks = []
        for start in range(0, self.rows, step):
            block = np.stack([np.asarray(o[start : start + step]).T for o in outputs])
            self._blocks.append((self._values(block), labels[start : start + step]))

    def _values(self, block: np.ndarray) -> np.ndarray:
        return self.method.search_values(np.ascontiguousarray(block, dtype=self.dtype))

    def scores(
        self, weights: np.ndarray | Sequence[Sequence[float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy and log-loss of the ensemble for each weight vector.

        Args:
            weights: `(G, K)`, one weight vector per row.

        Returns:
            Two `(G,)` arrays: accuracy and log-loss (NaN when the outputs are not
            probabilities).
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        correct = np.zeros(len(w))
        loss = np.zeros(len(w))
        for values, t in self._blocks:
            group = max(1, _BLOCK // values[0].size)
            for g in range(0, len(w), group):
                hits, losses = self._block_scores(_combine(w[g : g + group], values), t)
                correct[g : g + group] += hits
                loss[g : g + group] += losses
        rows = max(self.rows, 1)
        log_loss = loss / rows if self.probabilities else np.full(len(w), np.nan)
        return correct / rows, log_loss

    def _block_scores(self, z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hits and summed -log p per weight vector, for `z` shaped `(G, C, m)`.

        Overflow and division by zero in float32 are expected at the search's edges
        (weights 0 and 1, outputs of 0) and are clipped away: numpy is told so, rather
        than printing a RuntimeWarning to the user.
        """
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            return self._block_scores_of(z, t)

    def _block_scores_of(self, z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = self.dtype.type(EPSILON), self.dtype.type(1 - EPSILON)
        if self.classes == 1:
            q = self.method.probabilities(z[:, 0])
            hits = (q > 0.5) == (t == 1)
            log_p = np.log(np.clip(np.where(t == 1, q, 1 - q), low, high))
        else:
            true = z[:, t, np.arange(len(t))]
            top = z.max(axis=1)
            hits = _first_max(z, true, top, t)
            log_p = self.method.label_log_probability(z, true, top, low, high)
        return hits.sum(axis=-1), -log_p.sum(axis=-1, dtype=np.float64)


def _combine(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`(G, K) x (K, C, m) -> (G, C, m)`, one multiply-add per member.

    Faster than a matrix product for the few members an ensemble has (BLAS is slow
    with an inner dimension of 2 to 10).
    """
    w = weights.astype(values.dtype)[:, :, None, None]
    z = w[:, 0] * values[0]
    for k in range(1, values.shape[0]):
        z += w[:, k] * values[k]
    return z


def _first_max(z: np.ndarray, true: np.ndarray, top: np.ndarray, t: np.ndarray) -> np.ndarray:
    """`argmax(z, axis=1) == t` (ties go to the first class, as argmax), computed from
    the maximum, which is several times faster; only tied rows take the slow path."""
    hits = true >= top
    tied = hits & ((z == top[:, None]).sum(axis=1) > 1)
    if tied.any():
        g, r = np.nonzero(tied)
        hits[g, r] = np.argmax(z[g, :, r], axis=1) == t[r]
    return hits


def score(output: np.ndarray, labels: np.ndarray) -> Scores:
    """Accuracy and log-loss of one model's (or ensemble's) outputs.

    Args:
        output: `(N, ..., C)` outputs.
        labels: `(N, ...)` class indices.
    """
    ensembler = Ensembler([as_rows(output)], labels, Mode.SUM, dtype=np.float64)
    accuracy, log_loss = ensembler.scores([[1.0]])
    return _scores(accuracy[0], log_loss[0])


def _scores(accuracy: float, log_loss: float) -> Scores:
    return Scores(float(accuracy), None if math.isnan(log_loss) else float(log_loss))


def _best(
    accuracy: np.ndarray, log_loss: np.ndarray, metric: MetricName, tie: np.ndarray
) -> int:
    """The index with the best `metric`.

    Log-losses within `LOG_LOSS_TIE` of each other count as equal (smaller differences
    are float32 rounding, not evidence). Ties go to the better other metric, then to
    the smallest `tie`.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    log_loss = np.nan_to_num(np.asarray(log_loss, dtype=np.float64), nan=0.0)
    keys = [(-accuracy, 0.0), (log_loss, LOG_LOSS_TIE)]
    if metric != "accuracy":
        keys.reverse()
    candidates = np.arange(len(accuracy))
    for values, tolerance in keys:
        values = values[candidates]
        candidates = candidates[values <= values.min() + tolerance]
    return int(candidates[np.argmin(np.asarray(tie)[candidates])])


def grid_search(ensembler: Ensembler, metric: MetricName, steps: int = GRID_STEPS) -> SearchResult:
    """Two members: score every weight `a = 0, 1/steps, ..., 1` for `(a, 1 - a)`.

    Ties (see `_best`) go to the better other metric, then to the weight closest to 0.5.
    """
    a = np.arange(steps + 1) / steps
    grid = np.stack([a, np.arange(steps, -1, -1) / steps], axis=1)  # exact complements
    accuracy, log_loss = ensembler.scores(grid)
    chosen = _best(accuracy, log_loss, metric, tie=np.abs(a - 0.5))
    return SearchResult(
        weights=[float(x) for x in grid[chosen]],
        method="grid",
        path=grid.tolist(),
        scores=[_scores(x, y) for x, y in zip(accuracy, log_loss, strict=True)],
        chosen=chosen,
    )


def greedy_search(
    ensembler: Ensembler, metric: MetricName, rounds: int = GREEDY_ROUNDS
) -> SearchResult:
    """Caruana et al.'s ensemble selection with replacement (ICML 2004), as AutoGluon.

    Each round adds the member that makes the running ensemble score best (a member
    may be added again); the weights are the counts divided by the round. The result
    is the best ensemble along the way (the earliest on ties).
    """
    k = ensembler.members
    counts = np.zeros(k)
    eye = np.eye(k)
    path, accuracies, log_losses = [], [], []
    for r in range(1, rounds + 1):
        candidates = (counts + eye) / r
        accuracy, log_loss = ensembler.scores(candidates)
        pick = _best(accuracy, log_loss, metric, tie=np.arange(k))
        counts += eye[pick]
        path.append(candidates[pick])
        accuracies.append(accuracy[pick])
        log_losses.append(log_loss[pick])
    chosen = _best(np.array(accuracies), np.array(log_losses), metric, tie=np.arange(rounds))
    return SearchResult(
        weights=[float(x) for x in path[chosen]],
        method="greedy",
        path=[p.tolist() for p in path],
        scores=[_scores(x, y) for x, y in zip(accuracies, log_losses, strict=True)],
        chosen=chosen,
    )


def search_weights(ensembler: Ensembler, metric: MetricName) -> SearchResult:
    """Choose the weights on the rows given (the part to fit on).

    Two members: the exact grid (`grid_search`, 101 weights). More: Caruana's greedy
    selection with replacement (`greedy_search`, 100 rounds of one candidate per
    member), which scales to many members where a grid cannot.
    """
    if ensembler.members == 2:
        return grid_search(ensembler, metric)
    return greedy_search(ensembler, metric)


@dataclass
class Fold:
    """One fold of a cross-validated search.

    Attributes:
        rows: The fold's rows, held out of its search.
        weights: The weights searched on the other folds.
        scores: Those weights' scores on this fold.
    """

    rows: int
    weights: list[float]
    scores: Scores

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"rows": self.rows, "weights": self.weights, **self.scores.to_dict()}


@dataclass
class CrossValidation:
    """A K-fold cross-validated search: each fold's result and the weights chosen.

    Attributes:
        folds: Per fold: the weights found without it, and their scores on it.
        weights: The mean of the folds' weights (the chosen weights).
    """

    folds: list[Fold]
    weights: list[float]

    def summary(self, metric: str) -> tuple[float, float] | None:
        """The mean and the standard deviation of `metric` over the folds, if defined."""
        values = [f.scores.get(metric) for f in self.folds]
        if any(v is None for v in values):
            return None
        array = np.array(values, dtype=np.float64)
        return float(array.mean()), float(array.std())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: folds, weights, and each metric's mean and spread."""
        spread = {}
        for metric in ("accuracy", "log_loss"):
            found = self.summary(metric)
            spread[metric] = None if found is None else {"mean": found[0], "std": found[1]}
        return {"k": len(self.folds), "folds": [f.to_dict() for f in self.folds],
                "weights": self.weights, **spread}


def cross_validate(
    outputs: Sequence[np.ndarray],
    labels: np.ndarray,
    folds: Sequence[np.ndarray],
    mode: Mode,
    metric: MetricName,
) -> CrossValidation:
    """Search the weights K times, each time without one fold, and score them on it.

    The chosen weights are the mean of the K weight vectors. Measured on the sample
    digits (benchmarks/cv_default.py), this generalizes as well as or slightly better
    than one search on every row, and better than a search on a single split.

    Args:
        outputs: Each member's outputs `(N, ..., C)`.
        labels: Class indices `(N, ...)`.
        folds: Row numbers of each fold (`fuse_cli.data.stratified_folds`).
        mode: Weighted sum or product.
        metric: What the search optimizes.
    """
    everything = np.arange(labels.shape[0])
    results = []
    for fold in folds:
        train = np.setdiff1d(everything, fold, assume_unique=True)
        fit = Ensembler([as_rows(o[train]) for o in outputs], labels[train], mode)
        weights = search_weights(fit, metric).weights
        held = Ensembler([as_rows(o[fold]) for o in outputs], labels[fold], mode,
                         dtype=np.float64)
        accuracy, log_loss = held.scores([weights])
        results.append(Fold(len(fold), weights, _scores(accuracy[0], log_loss[0])))
    mean = np.mean([f.weights for f in results], axis=0)
    return CrossValidation(results, [float(w) for w in mean / mean.sum()])
