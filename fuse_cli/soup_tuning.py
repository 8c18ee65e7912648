"""`fuse tune --mode soup`: measure soups against the members and the output ensemble,
then write the better soup only if it beats the best member.

On the same rows, scored the same honest way (out of fold with `--cv K`, each fold's
choices made without it; on held-out rows with `--holdout`; else in-sample, said so):

- each member, and the best member (chosen on the rows the choice may see);
- the weighted output ensemble `fuse tune` would write (`--mode sum`, N forward passes);
- the uniform soup (every member's variables, equal weights);
- the greedy soup (Wortsman et al., 2022): members sorted by their own score, each added
  to the soup only if the soup's score does not get worse.

A soup is predicted over the data once per set of ingredients (cached), so the folds
cost little more than one greedy pass. The soup written is the greedy one chosen on
every row to fit, or the uniform one if that scores better; if neither beats the best
member it is exit 4 with the numbers, unless `--even-if-worse`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.choices import Mode
from fuse_cli.data import SPLIT_SEED, split_rows, stratified_folds
from fuse_cli.errors import IncompatibleModelsError
from fuse_cli.search import Ensembler, as_rows, score, search_weights

if TYPE_CHECKING:
    from fuse_cli.report import MergeReport
    from fuse_cli.search import Scores

# The output ensemble a soup is compared with: what `fuse tune` writes by default.
ENSEMBLE = Mode.SUM

Predict = Callable[[tuple[int, ...]], np.ndarray]


@dataclass
class Entry:
    """One row of the comparison: what it is, what it costs, how it scores."""

    name: str
    kind: str  # member, best member, output ensemble, uniform soup, greedy soup
    members: list[str]
    forward_passes: int
    accuracy: float
    log_loss: float | None


@dataclass
class SoupTuneReport:
    """What `fuse tune --mode soup` measured and wrote."""

    data: str
    rows: int
    metric: str
    scored_on: str  # "out of fold", "held out" or "in-sample"
    scored_rows: int
    folds: int
    entries: list[Entry]
    chosen: str  # "greedy soup" or "uniform soup"
    ingredients: list[str]
    written: bool
    merge: MergeReport | None
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)
    batchnorm: str = "averaged"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        data = asdict(self)
        data["merge"] = self.merge.to_dict() if self.merge else None
        return data


def better(metric: str) -> Callable[[Scores], float]:
    """A key where lower is better: log-loss, or minus accuracy."""
    if metric == "accuracy":
        return lambda s: -s.accuracy
    return lambda s: float("inf") if s.log_loss is None else s.log_loss


def greedy(
    members: int, member_key: Callable[[int], float], soup_key: Callable[[tuple[int, ...]], float]
) -> tuple[int, ...]:
    """The greedy soup: members in order of their own score (best first, ties by index);
    each is added if the soup's score with it is not worse.

    Args:
        members: How many members.
        member_key: A member's score (lower is better).
        soup_key: A soup's score, by its sorted ingredients (lower is better).
    """
    order = sorted(range(members), key=lambda i: (member_key(i), i))
    soup: tuple[int, ...] = (order[0],)
    best = member_key(order[0])
    for i in order[1:]:
        candidate = tuple(sorted((*soup, i)))
        found = soup_key(candidate)
        if found <= best:
            soup, best = candidate, found
    return soup


@dataclass
class _Rows:
    """Rows where choices are made (`fit`) and where they are scored (`test`)."""

    fit: np.ndarray
    test: np.ndarray


def compare_soups(
    outputs: Sequence[np.ndarray],
    y: np.ndarray,
    predict: Predict,
    labels: Sequence[str],
    *,
    metric: str,
    holdout: float,
    cv: int,
) -> tuple[list[Entry], str, int, tuple[int, ...], str, list[str]]:
    """Score every candidate on the same honest rows, and choose the soup to write.

    Args:
        outputs: Each member's outputs on every row.
        y: Class index of every row.
        predict: A soup's outputs on every row, by its sorted ingredients.
        labels: The members' names.
        metric: `accuracy` or `log_loss`.
        holdout: Share of rows held out of every choice and scored after.
        cv: Folds (0: choose and score on the same rows, in-sample).

    Returns:
        The entries, how and on how many rows they were scored, the soup to write (its
        ingredients), which soup it is, and notes.
    """
    n = len(outputs)
    key = better(metric)
    fit_rows, held_rows = split_rows(y, holdout)
    uniform = tuple(range(n))

    def soup_output(ingredients: tuple[int, ...]) -> np.ndarray:
        return outputs[ingredients[0]] if len(ingredients) == 1 else predict(ingredients)

    def choose(rows: np.ndarray) -> tuple[int, tuple[int, ...], list[float]]:
        def on(output: np.ndarray) -> float:
            return key(score(output[rows], y[rows]))
        best = min(range(n), key=lambda i: (on(outputs[i]), i))
        soup = greedy(n, lambda i: on(outputs[i]), lambda s: on(soup_output(s)))
        fit = Ensembler([as_rows(o[rows]) for o in outputs], y[rows], ENSEMBLE)
        return best, soup, search_weights(fit, metric).weights  # type: ignore[arg-type]

    splits, scored_on = _splits(y, fit_rows, held_rows, cv)
    scored = np.sort(np.concatenate([s.test for s in splits]))
    best_out = np.zeros_like(outputs[0], dtype=np.float64)
    soup_out = np.zeros_like(best_out)
    ensemble_out = np.zeros_like(best_out)
    passes = []
    for split in splits:
        best, soup, weights = choose(split.fit)
        best_out[split.test] = outputs[best][split.test]
        soup_out[split.test] = soup_output(soup)[split.test]
        ensemble_out[split.test] = sum(w * o[split.test].astype(np.float64)
                                       for w, o in zip(weights, outputs, strict=True))
        passes.append(sum(w > 0 for w in weights))
    _, final, _ = choose(fit_rows)

    def entry(name: str, kind: str, members: Sequence[int], cost: int,
              output: np.ndarray) -> Entry:
        found = score(output[scored], y[scored])
        return Entry(name, kind, [labels[i] for i in members], cost, found.accuracy,
                     found.log_loss)

    entries = [entry(labels[i], "member", [i], 1, outputs[i]) for i in range(n)]
    entries += [
        entry("best member", "best member", [], 1, best_out),
        entry("output ensemble", "output ensemble", range(n), max(passes), ensemble_out),
        entry("uniform soup", "uniform soup", uniform, 1, soup_output(uniform)),
        entry("greedy soup", "greedy soup", final, 1, soup_out),
    ]
    by_name = {e.kind: e for e in entries}
    scores = {kind: _as_scores(by_name[kind]) for kind in ("uniform soup", "greedy soup")}
    chosen = min(("greedy soup", "uniform soup"), key=lambda k: key(scores[k]))
    ingredients = final if chosen == "greedy soup" else uniform
    notes = []
    if scored_on == "in-sample":
        notes.append("soup: --cv 0 and no --holdout: the best member and the greedy soup "
                     "are chosen and scored on the same rows (in-sample, optimistic)")
    return entries, scored_on, len(scored), ingredients, chosen, notes


def _splits(y: np.ndarray, fit_rows: np.ndarray, held_rows: np.ndarray,
            cv: int) -> tuple[list[_Rows], str]:
    """Where choices are made and scored: held-out rows, K folds, or in-sample."""
    if len(held_rows):
        return [_Rows(fit_rows, held_rows)], "held out"
    if cv:
        folds = stratified_folds(y[fit_rows], cv)
        return ([_Rows(np.setdiff1d(fit_rows, fit_rows[f]), fit_rows[f]) for f in folds],
                "out of fold")
    return [_Rows(fit_rows, fit_rows)], "in-sample"


def _as_scores(entry: Entry) -> Scores:
    from fuse_cli.search import Scores

    return Scores(entry.accuracy, entry.log_loss)


def beats_best_member(entries: Sequence[Entry], chosen: str, metric: str) -> bool:
    """Whether the chosen soup scores better than the best member (ties do not count)."""
    key = better(metric)
    found = {e.kind: _as_scores(e) for e in entries}
    return key(found[chosen]) < key(found["best member"])


def refusal(entries: Sequence[Entry], metric: str, scored_on: str, rows: int) -> str:
    """The one-line exit 4 when no soup beats the best member."""
    shown = {e.kind: e for e in entries}

    def value(kind: str) -> str:
        found = _as_scores(shown[kind]).get(metric)
        return "n/a" if found is None else f"{found:.4g}"

    return (f"no soup beats the best member on {rows} {scored_on} rows ({metric}: best "
            f"member {value('best member')}, uniform soup {value('uniform soup')}, greedy "
            f"soup {value('greedy soup')}, output ensemble {value('output ensemble')}): the "
            "members may not share a starting point; nothing written (--even-if-worse "
            "writes it anyway)")


def tuning_of(entries: Sequence[Entry], chosen: str, metric: str, scored_on: str,
              rows: int, data: dict[str, Any], holdout: float, cv: int) -> dict[str, Any]:
    """What the soup's provenance records of its tuning."""
    from fuse_cli.provenance import tuning_record

    table = [{"name": e.name, "kind": e.kind, "accuracy": e.accuracy,
              "log_loss": e.log_loss, "forward_passes": e.forward_passes} for e in entries]
    record = tuning_record(metric=metric, method=chosen.replace(" ", "-"), data=data,
                           holdout=holdout, seed=SPLIT_SEED, cv={"k": cv} if cv else None,
                           fit={"rows": rows, "scored_on": scored_on}, heldout=None)
    record["soups"] = table
    return record


def raise_refusal(entries: Sequence[Entry], metric: str, scored_on: str, rows: int) -> None:
    """Raises IncompatibleModelsError (exit 4) with the numbers."""
    raise IncompatibleModelsError(refusal(entries, metric, scored_on, rows))
