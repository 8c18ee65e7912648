"""The `fuse` application: the root command, error handling and report output.

The commands live in `fuse_cli.cli.commands`, their shared options in
`fuse_cli.cli.options`; this package is the only place that imports typer or decides
what reaches the terminal (`fuse_cli.render` shows it). Keras and TensorFlow are
imported inside the commands, after every check that needs no model, so `fuse --help`
and usage errors come back at once.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer

from fuse_cli import __version__, progress, render
from fuse_cli.errors import FuseError, UsageError, first_line
from fuse_cli.native import quiet_native_logs
from fuse_cli.render import console
from fuse_cli.schemas import JSON_SCHEMA

Report = TypeVar("Report")

app = typer.Typer(
    name="fuse",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def import_keras_quietly(debug: bool) -> None:
    """Import Keras (and TensorFlow under it) without its C++ start-up chatter.

    TensorFlow writes oneDNN and CUDA notices to file descriptor 2 before its logging
    is set up, where TF_CPP_MIN_LOG_LEVEL cannot reach them; they would bury fuse's
    one-line messages (`fuse_cli.native`). With `--debug` they are left alone.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if debug or "keras" in sys.modules:
        return
    progress.say_at_once("importing TensorFlow…")  # the first seconds are not silent
    try:
        with quiet_native_logs(True):
            import keras  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"cannot import Keras: {first_line(exc)}; reinstall fuse-cli") from None
    except Exception as exc:  # Keras reads its config file and KERAS_BACKEND at import
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        raise UsageError(
            f"cannot import Keras: {first_line(exc)} (Keras reads "
            f"{os.path.join(home, 'keras.json')} and KERAS_BACKEND at import; fix or remove them)"
        ) from None
    finally:
        progress.said_at_once()
    # Keras reports through absl that .h5 is a legacy format: the user chose it.
    logging.getLogger("absl").setLevel(logging.ERROR)
    # TensorFlow and Keras leave ~360k objects that live as long as the process; frozen,
    # no later garbage collection walks them again.
    gc.freeze()


@contextmanager
def _exit_on_error(
    command: str, *, debug: bool = False, json_output: bool = False
) -> Iterator[None]:
    """Turn every failure into one message on stderr and its exit code (DESIGN §5)."""
    try:
        yield
    except FuseError as exc:
        _fail(command, str(exc), exc.exit_code, json_output)
    except KeyboardInterrupt:
        _fail(command, "interrupted", 130, json_output)
    except Exception as exc:  # a bug in fuse: say so, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run again with --debug for the traceback)"
        _fail(command, f"internal error: {type(exc).__name__}: {first_line(exc)}{hint}", 1,
              json_output)


def _fail(command: str, message: str, code: int, json_output: bool) -> None:
    render.print_error(message)
    if json_output:
        _print_json(command, {"ok": False, "exit_code": code, "error": message})
    raise typer.Exit(code)


def _print_json(command: str, data: dict[str, object]) -> None:
    """One JSON object on stdout, under the versioned contract (`fuse_cli/schemas/`)."""
    console.print_json(json.dumps({"schema": JSON_SCHEMA, "command": command, **data}))


# When the command started, as near the process's start as this module's import:
# "elapsed" is the whole command, TensorFlow's import included.
STARTED = time.perf_counter()


@contextmanager
def command(name: str, *, debug: bool, json_output: bool) -> Iterator[None]:
    """Run a command's body: every failure becomes one message and its exit code, and no
    raw Python warning (a numpy `RuntimeWarning` with its source line, a library's
    deprecation notice) reaches the terminal unless `--debug`."""
    with _exit_on_error(name, debug=debug, json_output=json_output), \
            warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
        yield


def emit(
    name: str,
    json_output: bool,
    run: Callable[..., Report],
    show: Callable[[Report], None],
    *,
    bars: bool = False,
) -> Report:
    """Run `run` under a progress display, then print its warnings and its report:
    one JSON object with `--json`, else `show`'s human-readable text.

    Args:
        name: The command, for the JSON object.
        json_output: `--json`.
        run: Called with the progress callback (and, with `bars`, the row advance).
        show: Prints the report for a person.
        bars: A bar per pass over data (evaluate, tune) instead of a spinner.
    """
    if bars:
        with progress.progress_bars(not json_output) as (say, advance):
            report = run(say, advance)
    else:
        with progress.spinner(not json_output) as say:
            report = run(say)
    if hasattr(report, "elapsed_seconds"):
        report.elapsed_seconds = time.perf_counter() - STARTED  # type: ignore[attr-defined]
    render.print_warnings(list(getattr(report, "warnings", [])))
    if json_output:
        data: Any = report
        _print_json(name, {"ok": True, **data.to_dict()})
    else:
        show(report)
    return report


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"fuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Merge saved Keras models into one verified weighted-sum or weighted-product ensemble.

    A weighted sum loads with plain keras.saving.load_model; a weighted product needs
    `import fuse_cli.layers` first.

    Exit codes: 0 ok, 1 internal error (a bug), 2 usage, 3 a model cannot be loaded,
    4 the models cannot be combined, 5 the output cannot be written, 6 verification
    failed, 7 fuse build --check: out of date.
    """
    global STARTED
    STARTED = time.perf_counter()  # each command, in a process that runs several (tests)


def main() -> None:
    """Entry point of the `fuse` console script."""
    try:
        app()
    finally:
        # Skip the interpreter's last garbage collection over everything TensorFlow
        # allocated (1-2 s at exit); the process is ending, the OS frees it all.
        gc.freeze()


def quiet_retracing(debug: bool) -> None:
    """Silence TensorFlow's retracing notices (kept with --debug).

    Each model's predict function traces once for full batches and once for the last,
    shorter one; TensorFlow counts those traces across models and warns.
    """
    if not debug:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
