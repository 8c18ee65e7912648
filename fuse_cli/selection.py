"""Choosing the weights from predictions: hold rows out, cross-validate, search, and
score members, the chosen ensemble and equal weights, exactly (float64, the merge
method's own formula). numpy only: `fuse tune` runs the members, this decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fuse_cli.choices import Mode
from fuse_cli.data import split_rows, stratified_folds
from fuse_cli.methods import MergeMethod
from fuse_cli.report import Progress
from fuse_cli.search import (
    CrossValidation,
    Ensembler,
    Scores,
    SearchResult,
    as_rows,
    cross_validate,
    score,
    search_weights,
)


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


@dataclass(frozen=True)
class Search:
    """What the search found: the weights, and the scores and path that back them."""

    weights: list[float]
    result: SearchResult
    cv: CrossValidation | None
    fit: PartScores
    held: PartScores | None
    path: list[dict[str, Any]]
    # The rows the weights were fitted on and held out, and each fold's rows (row numbers
    # of every row; empty without --cv): what `--calibrate` fits on, the same split.
    fit_rows: np.ndarray = field(default_factory=lambda: np.arange(0))
    held_rows: np.ndarray = field(default_factory=lambda: np.arange(0))
    folds: tuple[np.ndarray, ...] = ()


def choose_weights(
    outputs: Sequence[np.ndarray],
    y: np.ndarray,
    *,
    method: MergeMethod,
    renormalize: bool,
    metric: str,
    holdout: float,
    cv: int,
    say: Progress,
) -> Search:
    """Hold rows out, cross-validate and search the weights, and score the result.

    Args:
        outputs: Each member's outputs on every row (what the merged model combines).
        y: The class index of every row.
        method: The merge method.
        renormalize: Product mode: renormalized (changes no score; kept for the record).
        metric: `accuracy` or `log_loss`.
        holdout: The share of rows held out of everything and scored after.
        cv: Folds for the weights (0: one search on every row to fit).
        say: Progress.
    """
    mode = Mode(method.name)
    fit_rows, held_rows = split_rows(y, holdout)
    folds_k = cv
    found = None
    folds: list[np.ndarray] = []
    if folds_k:
        say(f"cross-validating the weights ({metric}, {folds_k} folds) on "
            f"{len(fit_rows)} rows")
        folds = stratified_folds(y[fit_rows], folds_k)
        found = cross_validate([o[fit_rows] for o in outputs], y[fit_rows], folds,
                               mode, metric)  # type: ignore[arg-type]
    say(f"searching weights ({metric}) on {len(fit_rows)} rows")
    fit = Ensembler([as_rows(o[fit_rows]) for o in outputs], y[fit_rows], mode)
    result = search_weights(fit, metric)  # type: ignore[arg-type]
    weights = found.weights if found else result.weights

    def scores(rows: np.ndarray) -> PartScores:
        return _part_scores(outputs, y, rows, weights, method, renormalize)

    return Search(
        weights=weights,
        result=result,
        cv=found,
        fit=scores(fit_rows),
        held=scores(held_rows) if len(held_rows) else None,
        path=_path_scores(result, outputs, y, held_rows, mode),
        fit_rows=fit_rows,
        held_rows=held_rows,
        folds=tuple(fit_rows[f] for f in folds),
    )


def _ensemble_output(
    outputs: Sequence[np.ndarray],
    rows: np.ndarray,
    weights: Sequence[float],
    method: MergeMethod,
    renormalize: bool,
) -> np.ndarray:
    ys = [np.asarray(o[rows], dtype=np.float64) for o in outputs]
    return method.combine(ys, weights, renormalize)


def _part_scores(
    outputs: Sequence[np.ndarray],
    y: np.ndarray,
    rows: np.ndarray,
    weights: Sequence[float],
    method: MergeMethod,
    renormalize: bool,
) -> PartScores:
    """Exact scores (float64, the formula of DESIGN §2) on the given rows."""
    labels = y[rows]
    equal = [1 / len(outputs)] * len(outputs)
    return PartScores(
        rows=len(rows),
        members=[score(o[rows], labels) for o in outputs],
        ensemble=score(_ensemble_output(outputs, rows, weights, method, renormalize), labels),
        equal_weights=score(_ensemble_output(outputs, rows, equal, method, renormalize), labels),
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


def search_warnings(
    labels: Sequence[str], search: Search, metric: str, kept: Sequence[int]
) -> list[str]:
    """What a person should know of the weights found: members that add almost nothing
    (those `kept` in the file), scores on the rows fitted to, an ensemble worse than its
    best member where it was scored honestly."""
    weights, fit, held, cv = search.weights, search.fit, search.held, search.cv
    notes = []
    for i, (label, weight) in enumerate(zip(labels, weights, strict=True)):
        if weight < 0.01 and i in kept:  # one left out gets its own note
            notes.append(
                f"{label}: weight {weight:.3g}; it adds its full cost to every prediction "
                "and almost nothing to the result: consider leaving it out"
            )
    if held is not None:
        ensemble, members_scores, where = held.ensemble.get(metric), held.members, "held-out rows"
    elif cv is not None:
        summary = cv.summary(metric)
        ensemble = None if summary is None else summary[0]
        members_scores, where = fit.members, f"{len(cv.folds)} cross-validation folds"
    else:
        notes.append("--holdout 0 --cv 0: every score is on the rows the weights were "
                     "fitted to")
        return notes
    found = [(s.get(metric), label) for s, label in zip(members_scores, labels, strict=True)]
    members = [(value, label) for value, label in found if value is not None]
    if ensemble is None or not members:
        return notes
    higher = metric == "accuracy"
    best, label = max(members) if higher else min(members)
    if (ensemble < best) if higher else (ensemble > best):
        notes.append(
            f"on the {where} the ensemble ({metric} {ensemble:.4g}) does worse "
            f"than {label} alone ({best:.4g}): the weights may not generalize"
        )
    return notes
