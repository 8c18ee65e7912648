"""`fuse tune --plot`: the score along the weight search, drawn with matplotlib (the
`plot` extra), written through `files.publish` like every other file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fuse_cli.files import publish

if TYPE_CHECKING:
    from fuse_cli.tuning import TuneReport


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
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.subplots()
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
    publish(path, lambda tmp: figure.savefig(tmp), label=f"--plot {path}", replace=replace)
