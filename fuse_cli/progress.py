"""Progress on stderr while a command runs: a status line and bars on a terminal,
timestamped lines in a CI log with `FUSE_PROGRESS=lines`, nothing otherwise (so that a
failure's stderr is its one line)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fuse_cli.render import err_console, literal


@contextmanager
def spinner(enabled: bool) -> Iterator[Any]:
    """A status line on stderr while slow steps run, only on a terminal (or, with
    `FUSE_PROGRESS=lines`, timestamped lines for a CI log)."""
    if enabled and sys.stderr.isatty():
        with err_console.status("starting") as status:
            yield lambda message: status.update(literal(message))
    elif enabled and progress_lines():
        yield log_line
    else:
        yield None


def progress_lines() -> bool:
    """`FUSE_PROGRESS=lines`: progress as plain timestamped lines on stderr where it is not
    a terminal (a CI log). Off by default, so that a failure's stderr is its one line."""
    return os.environ.get("FUSE_PROGRESS", "").lower() == "lines"


def log_line(message: str) -> None:
    """One progress line for a log: `12:03:04 loading a.keras`."""
    err_console.print(f"{time.strftime('%H:%M:%S')} {literal(message)}", soft_wrap=True)


def say_at_once(message: str) -> None:
    """A line on a terminal's stderr before a slow import, erased by `said_at_once`."""
    if sys.stderr.isatty():
        sys.stderr.write(message)
        sys.stderr.flush()
    elif progress_lines():
        log_line(message)


def said_at_once() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


@contextmanager
def progress_bars(enabled: bool) -> Iterator[tuple[Any, Any]]:
    """A status line and one bar per pass over the data, on stderr, only on a terminal.

    Each bar shows the rows done, the rate (rows per second) and the time left.
    """
    if enabled and not sys.stderr.isatty() and progress_lines():
        yield log_line, _logged_advance()
        return
    if not (enabled and sys.stderr.isatty()):
        yield None, None
        return
    from rich.progress import Progress

    with Progress(*bar_columns(), console=err_console, transient=True) as bars:
        status = bars.add_task("starting", total=None, count="", rate="")
        tasks: dict[str, Any] = {}

        def say(message: str) -> None:
            bars.update(status, description=literal(message))

        def advance(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(f"predicting with {literal(label)}", total=total,
                                             count="", rate="")
            task = tasks[label]
            bars.update(task, completed=done, total=total, count=f"{done:,}/{total:,} rows")
            speed = next((t.speed for t in bars.tasks if t.id == task), None)
            if speed:
                bars.update(task, rate=f"{speed:,.0f} rows/s")

        yield say, advance


def _logged_advance() -> Any:
    """Row progress as log lines: at the start, at each quarter, at the end."""
    shown: dict[str, int] = {}

    def advance(label: str, done: int, total: int) -> None:
        quarter = 4 * done // max(total, 1)
        if shown.get(label) != quarter:
            shown[label] = quarter
            log_line(f"predicting with {label}: {done:,}/{total:,} rows")

    return advance


def bar_columns() -> tuple[Any, ...]:
    """The bars' columns, made for 80: the description gives way (an ellipsis), never
    the numbers (rows done, rate, time left)."""
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeRemainingColumn
    from rich.table import Column

    def fixed(text: str) -> Any:
        return TextColumn(text, table_column=Column(no_wrap=True))

    return (SpinnerColumn(),
            TextColumn("{task.description}",
                       table_column=Column(max_width=30, no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=12), fixed("{task.fields[count]}"),
            fixed("{task.fields[rate]}"), TimeRemainingColumn())
