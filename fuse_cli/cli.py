"""The `fuse` command line: parse options, call the library, print the report.

This is the only module that imports typer or writes to the terminal. Keras and
TensorFlow are imported inside the commands, so `fuse --help` starts instantly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fuse_cli import __version__
from fuse_cli.errors import FuseError, UsageError

if TYPE_CHECKING:
    from fuse_cli.ensemble import InputsMode, Mode
    from fuse_cli.report import MergeReport

app = typer.Typer(
    name="fuse",
    help="Merge saved Keras models into one verified weighted-sum or weighted-product ensemble.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# typer needs the Enum classes at import time; they live in a module without Keras.
from fuse_cli.ensemble import InputsMode, Mode  # noqa: E402


def _import_keras_quietly(debug: bool) -> None:
    """Import Keras (and TensorFlow under it) without its C++ start-up chatter.

    TensorFlow writes oneDNN and CUDA notices to file descriptor 2 before its logging
    is set up, where TF_CPP_MIN_LOG_LEVEL cannot reach them; they would bury fuse's
    one-line messages. With `--debug` they are left alone.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if debug or "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import keras  # noqa: F401
            finally:
                os.dup2(saved, 2)
    except ImportError as exc:
        raise UsageError(f"cannot import Keras: {exc}; reinstall fuse-cli") from None
    finally:
        os.close(saved)
    # Keras reports through absl that .h5 is a legacy format: the user chose it.
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextmanager
def _exit_on_error(*, debug: bool = False, json_output: bool = False) -> Iterator[None]:
    """Turn every failure into one message on stderr and its exit code (DESIGN §5)."""
    try:
        yield
    except FuseError as exc:
        _fail(str(exc), exc.exit_code, json_output)
    except KeyboardInterrupt:
        _fail("interrupted", 130, json_output)
    except Exception as exc:  # a bug in fuse: say so, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run again with --debug for the traceback)"
        _fail(f"internal error: {type(exc).__name__}: {exc}{hint}", 1, json_output)


def _fail(message: str, code: int, json_output: bool) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}")
    if json_output:
        console.print_json(json.dumps({"ok": False, "exit_code": code, "error": message}))
    raise typer.Exit(code)


@contextmanager
def _spinner(enabled: bool) -> Iterator[Any]:
    """A status line on stderr while slow steps run, only on a terminal."""
    if enabled and sys.stderr.isatty():
        with err_console.status("starting") as status:
            yield lambda message: status.update(escape(message))
    else:
        yield None


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
    """Merge saved Keras models into one verified ensemble model.

    Loading a merged .keras file from Python needs `import fuse_cli.layers` first.
    Exit codes: 0 ok, 1 internal error, 2 usage, 3 a model cannot be loaded,
    4 models cannot be combined, 5 output cannot be written, 6 verification failed.
    """


DebugOption = Annotated[
    bool, typer.Option("--debug", help="Show the traceback of an internal error.")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the report as one JSON object on stdout, only that.")
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--unsafe",
        help="Allow code-carrying layers (Lambda) from files you trust. Off by default: "
        "such files are refused (exit 3).",
    ),
]


def parse_weights(text: str | None) -> list[float] | None:
    """Parse `--weights 0.2,0.3,0.5`.

    Raises:
        UsageError: A value that is not a number.
    """
    if text is None:
        return None
    values = []
    for piece in text.split(","):
        try:
            values.append(float(piece.strip()))
        except ValueError:
            raise UsageError(
                f"--weights: {piece.strip()!r} is not a number (in {text!r})"
            ) from None
    return values


@app.command()
def merge(
    models: Annotated[
        list[Path], typer.Argument(help="Two or more model files (.keras or legacy .h5).",
                                   show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The merged model: .keras (default format), "
                     ".h5 or .hdf5 (legacy).", show_default=False),
    ],
    mode: Annotated[
        Mode, typer.Option("--mode", "-m", case_sensitive=False,
                           help="sum: Σ w_i·y_i. product: Π y_i^w_i (weighted geometric mean).")
    ] = Mode.SUM,
    weight: Annotated[
        float | None,
        typer.Option("--weight", "-w", help="Two models only: weights are (A, 1-A), 0 <= A <= 1.",
                     show_default=False),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", metavar="W1,W2,...", show_default=False,
                     help="One weight per model, >= 0, not all zero; normalized to sum to 1. "
                     "Default: equal weights."),
    ] = None,
    inputs: Annotated[
        InputsMode,
        typer.Option("--inputs", case_sensitive=False,
                     help="shared: one input fed to every member; separate: one input per "
                     "member, in the order given; auto: shared when compatible."),
    ] = InputsMode.AUTO,
    renormalize: Annotated[
        bool, typer.Option("--renormalize",
                           help="Product mode: divide by the sum over the last axis.")
    ] = False,
    assume_nonnegative: Annotated[
        bool, typer.Option("--assume-nonnegative",
                           help="Product mode: accept members whose last activation does not "
                           "prove outputs >= 0.")
    ] = False,
    name: Annotated[str, typer.Option("--name", help="Name of the merged model.")] = "ensemble",
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip reloading OUTPUT and checking the formula.")
    ] = False,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Merge MODELS into one weighted-sum or weighted-product model and verify it.

    Examples:

      fuse merge a.keras b.h5 --weight 0.3 -o ensemble.keras    # 0.3·a + 0.7·b

      fuse merge a.keras b.keras c.keras --mode product -o ens.keras
    """
    with _exit_on_error(debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.merge import MergeOptions, merge_files

        options = MergeOptions(
            mode=mode,
            weight=weight,
            weights=parse_weights(weights),
            inputs=inputs,
            renormalize=renormalize,
            assume_nonnegative=assume_nonnegative,
            name=name,
            force=force,
            verify=not no_verify,
            unsafe=unsafe,
        )
        with _spinner(not json_output) as progress:
            report = merge_files(models, output, options, progress=progress)
        for warning in report.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}")
        if json_output:
            console.print_json(json.dumps({"ok": True, **report.to_dict()}))
        else:
            print_merge_report(report)


def print_merge_report(report: MergeReport) -> None:
    """The human-readable merge report on stdout."""
    table = Table(title=f"members ({report.mode}, {report.inputs} inputs)", title_justify="left")
    for column in ("file", "input shape", "output shape", "params", "weight"):
        table.add_column(column, justify="right" if column in ("params", "weight") else "left")
    for m in report.members:
        weight = f"{m.weight:.4g}"
        if abs(m.weight_given - m.weight) > 1e-12:
            weight = f"{m.weight_given:g} → {weight}"
        table.add_row(escape(m.file), ", ".join(m.input_shapes), ", ".join(m.output_shapes),
                      f"{m.params:,}", weight)
    console.print(table)
    for m in report.members:
        if m.migrations:
            console.print(f"{escape(m.file)}: legacy file migrated by "
                          f"{escape(', '.join(m.migrations))}")
    console.print(f"formula:  {escape(report.formula)}")
    console.print(f"output:   {escape(report.output)} ({_size_text(report.size)})")
    if report.verified and report.max_abs_error is not None:
        console.print(f"verified: reloaded and matches the formula, max abs error "
                      f"{report.max_abs_error:.2e}")
    else:
        console.print("verified: skipped (--no-verify)")
    console.print(f"elapsed:  {report.elapsed_seconds:.1f} s")


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# --- export, inspect and verify commands (issue 5) ---


# --- evaluate and tune commands (issue 6) ---


def main() -> None:
    """Entry point of the `fuse` console script."""
    app()
