"""The `fuse tune --mode soup`, `--calibrate` and `fuse build` reports on a terminal (the
rest is in `fuse_cli.render`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from fuse_cli.render import console, literal, parts_text, print_written

if TYPE_CHECKING:
    from fuse_cli.building import BuildReport
    from fuse_cli.calibration import Calibration
    from fuse_cli.soup_tuning import SoupTuneReport

_HOW = {
    "out of fold": "out of fold: each fold's choices (best member, greedy soup, ensemble "
                   "weights) made without it",
    "held out": "on the held-out rows, which no choice saw",
    "in-sample": "in-sample: chosen and scored on the same rows",
}


def print_soup_report(report: SoupTuneReport) -> None:
    """Members, best member, output ensemble and soups side by side; what was written."""
    folds = f", {report.folds} folds" if report.folds else ""
    console.print(f"data:     {literal(report.data)}, {report.rows} rows; scored on "
                  f"{report.scored_rows} rows {_HOW[report.scored_on]}{folds}")
    console.print(f"metric:   {report.metric}; BatchNormalization statistics "
                  f"{report.batchnorm} in every soup")
    table = Table(title_justify="left")
    for column in ("model", "cost", "accuracy", "log-loss"):
        table.add_column(column, justify="left" if column == "model" else "right",
                         overflow="fold")
    for entry in report.entries:
        name = literal(entry.name)
        style = "bold" if entry.kind == report.chosen else None
        log_loss = "n/a" if entry.log_loss is None else f"{entry.log_loss:.4f}"
        passes = f"{entry.forward_passes} model{'s' if entry.forward_passes != 1 else ''}"
        table.add_row(name, passes, f"{entry.accuracy:.4f}", log_loss, style=style)
    console.print(table)
    console.print(f"chosen:   {report.chosen} of {literal(', '.join(report.ingredients))}")
    if report.merge is not None:
        print_written(report.merge)
    parts = report.merge.parts if report.merge is not None else {}
    console.print(f"elapsed:  {report.elapsed_seconds:.1f} s{parts_text(parts)}")


def print_build_report(report: BuildReport) -> None:
    """What `fuse build` built or checked (after the merge's or tune's own report)."""
    console.print(f"recipe:   {literal(report.recipe)} (sha256 {report.recipe_sha256[:12]}…)")
    for line in report.checked:
        console.print(f"checked:  {literal(line)}")
    if report.action == "up to date":
        console.print(f"build:    {literal(report.output)} is up to date")
    else:
        console.print(f"build:    {literal(report.output)} built")
    if report.lock:
        console.print(f"lock:     {literal(report.lock)}")


def print_calibration(c: Calibration) -> None:
    """The temperature, and the ensemble's scores before and after it."""
    console.print(f"calibrate: temperature T = {c.temperature:.4g}, fitted on {c.rows} rows "
                  f"{c.scored_on}; softmax(log(p) / T) is built into the file")
    table = Table(title_justify="left")
    table.add_column("ensemble", overflow="fold")
    for column in ("accuracy", "log-loss", "Brier", "ECE"):
        table.add_column(column, justify="right")
    rows = [(f"before ({c.scored_on})", c.before),
            (f"after ({c.scored_on}; T fitted on these rows)", c.after)]
    if c.held_before is not None and c.held_after is not None:
        rows += [("before (held out)", c.held_before), ("after (held out)", c.held_after)]
    for name, s in rows:
        table.add_row(name, f"{s['accuracy']:.4f}", f"{s['log_loss']:.4f}",
                      f"{s['brier']:.4f}", f"{s['ece']:.4f}")
    console.print(table)
