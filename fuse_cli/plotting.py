"""`fuse tune --plot` (the score along the weight search) and `fuse evaluate --plot`
(reliability diagrams), drawn with matplotlib (the `plot` extra), written through
`files.publish` like every other file."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.errors import UsageError
from fuse_cli.files import Destination, publish

if TYPE_CHECKING:
    from fuse_cli.tuning import TuneReport

SUFFIXES = (".png", ".svg", ".pdf")


def check_plot(path: Path, option: str = "--plot") -> Destination:
    """A plot file's destination, once its type and matplotlib are known to be there.

    Raises:
        UsageError: Another file type, or no matplotlib.
    """
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"{option} {path}: must end in {', '.join(SUFFIXES)}; got "
                         f"{path.suffix or 'no extension'!r}")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{option} needs matplotlib: pip install 'fuse-cli[plot]'")
    return Destination(option, path)


def plot_reliability(
    curves: Sequence[tuple[str, np.ndarray]], y: np.ndarray, path: Path, *,
    replace: bool = True, title: str = "reliability (15 equal-width bins)",
) -> None:
    """One reliability diagram: accuracy against confidence per bin, one line per model,
    the diagonal for a calibrated model; ECE in each label."""
    from matplotlib.figure import Figure  # optional: the plot extra

    figure = Figure(figsize=(5.0, 5.0), layout="constrained")
    _reliability(figure.subplots(), curves, y, title)
    publish(path, lambda tmp: figure.savefig(tmp), label=f"--plot {path}", replace=replace)


def _reliability(axes: Any, curves: Sequence[tuple[str, np.ndarray]], y: np.ndarray,
                 title: str) -> None:
    from fuse_cli.calibration import ece, reliability

    axes.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
    for label, p in curves:
        confidence, accuracy, _ = reliability(p, y)
        axes.plot(confidence, accuracy, "o-", markersize=3,
                  label=f"{label} (ECE {ece(p, y):.4f})")
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")


def plot_search(report: TuneReport, chosen: int, path: Path, *, replace: bool = True) -> None:
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
    calibration = report.calibration
    figure = Figure(figsize=(11.0 if calibration else 6.4, 4.0), layout="constrained")
    axes = figure.subplots(1, 2)[0] if calibration else figure.subplots()
    for part, style in (("fit", "-"), ("heldout", "--")):
        ys = [p[part][metric] if p[part] else None for p in points]
        if any(v is not None for v in ys):
            rows = report.fit.rows if part == "fit" else (report.heldout or report.fit).rows
            name = "fit" if part == "fit" else "held out"
            axes.plot(xs, [float("nan") if v is None else v for v in ys], style,
                      label=f"{name} ({rows} rows)")
    axes.axvline(report.weights[0] if two else xs[chosen], color="gray", linewidth=0.8,
                 label="chosen")
    axes.set_xlabel(f"weight of {report.files[0]} ({report.files[1]}: 1 - w)" if two
                    else "round of greedy selection")
    axes.set_ylabel(metric.replace("_", "-"))
    axes.set_title(f"fuse tune: {report.merge.mode}, {len(report.files)} members")
    axes.legend()
    if calibration is not None and calibration.curves is not None:
        pooled, calibrated, labels = calibration.curves
        _reliability(figure.axes[1], [("before", pooled),
                                      (f"after, T = {calibration.temperature:.3g}", calibrated)],
                     labels, f"ensemble, {calibration.scored_on} ({calibration.rows} rows)")
    publish(path, lambda tmp: figure.savefig(tmp), label=f"--plot {path}", replace=replace)
