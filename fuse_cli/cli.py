"""The `fuse` command line: parse options, call the library, print the report.

This is the only module that imports typer or writes to the terminal. Keras and
TensorFlow are imported inside the commands, so `fuse --help` starts instantly.
"""

from __future__ import annotations

import gc
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
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
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
    # TensorFlow and Keras leave ~360k objects that live as long as the process; frozen,
    # no later garbage collection walks them again.
    gc.freeze()


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
    """Merge saved Keras models into one verified weighted-sum or weighted-product ensemble.

    Loading a merged .keras file from Python needs `import fuse_cli.layers` first.

    Exit codes: 0 ok, 1 internal error (a bug), 2 usage, 3 a model cannot be loaded,
    4 the models cannot be combined, 5 the output cannot be written, 6 verification
    failed.
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


MembersArgument = Annotated[
    list[Path],
    typer.Argument(help="Two or more model files (.keras or legacy .h5).", show_default=False),
]
OutputOption = Annotated[
    Path,
    typer.Option("--output", "-o", help="The merged model: .keras (default format), "
                 ".h5 or .hdf5 (legacy).", show_default=False),
]
ModeOption = Annotated[
    Mode, typer.Option("--mode", "-m", case_sensitive=False,
                       help="sum: Σ w_i·y_i. product: Π y_i^w_i (weighted geometric mean).")
]
RenormalizeOption = Annotated[
    bool, typer.Option("--renormalize", help="Product mode: divide by the sum over the last axis.")
]
AssumeNonnegativeOption = Annotated[
    bool, typer.Option("--assume-nonnegative",
                       help="Product mode: accept members whose last activation does not "
                       "prove outputs >= 0.")
]
NameOption = Annotated[str, typer.Option("--name", help="Name of the merged model.")]


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
    models: MembersArgument,
    output: OutputOption,
    mode: ModeOption = Mode.SUM,
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
    renormalize: RenormalizeOption = False,
    assume_nonnegative: AssumeNonnegativeOption = False,
    name: NameOption = "ensemble",
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip reloading OUTPUT and checking the formula "
                           "(and the parity of --export artifacts).")
    ] = False,
    export: Annotated[
        list[ExportFormat] | None,
        typer.Option("--export", case_sensitive=False, show_default=False,
                     help="Also write a deployable artifact beside OUTPUT, checked for parity "
                     "(repeatable): saved_model → OUT_saved_model/, litert → OUT.tflite, "
                     "onnx → OUT.onnx."),
    ] = None,
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
        requests = _merge_export_requests(output, export, force=force, verify=not no_verify)
        with _spinner(not json_output) as progress:
            report = merge_files(models, output, options, progress=progress)
            exported = _export_merged(output, requests, force=force, verify=not no_verify,
                                      unsafe=unsafe, debug=debug, progress=progress)
        for warning in report.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}")
        if json_output:
            extra = {"exports": exported.to_dict()["exports"]} if exported else {}
            console.print_json(json.dumps({"ok": True, **report.to_dict(), **extra}))
        else:
            print_merge_report(report)
            if exported:
                print_exports(exported)


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
    _print_written(report)
    console.print(f"elapsed:  {report.elapsed_seconds:.1f} s")


def _print_written(report: MergeReport) -> None:
    """The formula, the file written and its verification: merge's and tune's last lines."""
    console.print(f"formula:  {escape(report.formula)}")
    console.print(f"output:   {escape(report.output)} ({_size_text(report.size)})")
    if report.verified and report.max_abs_error is not None:
        console.print(f"verified: reloaded and matches the formula, max abs error "
                      f"{report.max_abs_error:.2e}")
    else:
        console.print("verified: skipped (--no-verify)")


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# --- export, inspect and verify commands (issue 5) ---

# typer needs this Enum when it builds the commands; fuse_cli.export imports no Keras.
from fuse_cli.export import ExportFormat  # noqa: E402

if TYPE_CHECKING:
    from fuse_cli.export import ExportRun
    from fuse_cli.inspection import InspectReport, ModelInfo, VerifyReport

NoVerifyOption = Annotated[
    bool, typer.Option("--no-verify", help="Skip running the artifact and checking its parity.")
]


@app.command("export")
def export_command(
    merged: Annotated[
        Path, typer.Argument(help="A model file written by `fuse merge` (or any .keras / .h5 "
                             "model).", show_default=False)
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", case_sensitive=False, show_default=False,
                     help="saved_model: a TensorFlow SavedModel folder; litert: a .tflite file; "
                     "onnx: a .onnx file (needs pip install 'fuse-cli\\[onnx]')."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the artifact.",
                           show_default=False)
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    no_verify: NoVerifyOption = False,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Export MERGED as a SavedModel, LiteRT or ONNX artifact that needs nothing of fuse.

    The artifact is run in its own runtime (tf.saved_model, the LiteRT interpreter,
    onnxruntime) on a fixed batch and compared with the Keras model; if it disagrees
    (beyond 1e-5), nothing is written and the exit code is 6.

    Examples:

      fuse export ensemble.keras --format onnx -o ensemble.onnx

      fuse export ensemble.keras --format saved_model -o ensemble_saved_model
    """
    with _exit_on_error(debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.export import export_file

        with _spinner(not json_output) as progress:
            run = export_file(merged, [(fmt, output)], force=force, verify=not no_verify,
                              unsafe=unsafe, quiet=not debug, progress=progress)
        if json_output:
            console.print_json(json.dumps({"ok": True, **run.to_dict()}))
        else:
            print_exports(run)


def _merge_export_requests(
    output: Path, formats: list[ExportFormat] | None, *, force: bool, verify: bool
) -> list[tuple[ExportFormat, Path]]:
    """`merge --export`: where each artifact goes, checked before any model is loaded."""
    from fuse_cli.export import artifact_path, plan_exports

    requests = [(fmt, artifact_path(output, fmt)) for fmt in dict.fromkeys(formats or [])]
    plan_exports(output, requests, force=force, verify=verify)
    return requests


def _export_merged(
    output: Path,
    requests: list[tuple[ExportFormat, Path]],
    *,
    force: bool,
    verify: bool,
    unsafe: bool,
    debug: bool,
    progress: Any,
) -> ExportRun | None:
    """`merge --export`: write the artifacts once OUTPUT is written and verified."""
    if not requests:
        return None
    from fuse_cli.export import export_file

    return export_file(output, requests, force=force, verify=verify, unsafe=unsafe,
                       quiet=not debug, progress=progress)


def print_exports(run: ExportRun) -> None:
    """The human-readable export report on stdout."""
    for item in run.exports:
        console.print(f"exported: {escape(item.path)} ({item.format}, {_size_text(item.size)})")
        if item.verified and item.max_abs_error is not None:
            console.print(f"parity:   matches the Keras model in {escape(str(item.runtime))}, "
                          f"max abs error {item.max_abs_error:.2e} (atol {item.atol:g})")
        else:
            console.print("parity:   skipped (--no-verify)")


@app.command("inspect")
def inspect_command(
    models: Annotated[
        list[Path], typer.Argument(help="One or more model files (.keras or legacy .h5).",
                                   show_default=False)
    ],
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show each model's format, inputs, outputs, activations, size and SHA-256.

    For a merged file: its mode, weights and each member's source file and SHA-256.
    For several files: whether `fuse merge` can combine them and, if not, why.
    """
    with _exit_on_error(debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.inspection import inspect_files

        with _spinner(not json_output) as progress:
            report = inspect_files(models, unsafe=unsafe, progress=progress)
        if json_output:
            console.print_json(json.dumps({"ok": True, **report.to_dict()}))
        else:
            print_inspect_report(report)


def print_inspect_report(report: InspectReport) -> None:
    """The human-readable inspect report on stdout."""
    for i, info in enumerate(report.models):
        if i:
            console.print()
        _print_model_info(info)
    c = report.compatibility
    if c is None:
        return
    console.print()
    if not c.mergeable:
        console.print(f"can merge: [red]no[/]: {escape(str(c.reason))}")
        return
    console.print(f"can merge: yes, with {c.inputs} inputs; outputs {', '.join(c.outputs)}")
    if c.product:
        console.print("           --mode product too: every output is >= 0")
    else:
        console.print(f"           not --mode product: {escape(str(c.product_reason))}")


def _tensor_text(t: Any) -> str:
    shape = "(" + ", ".join("None" if d is None else str(d) for d in t.shape) + ")"
    return f"{escape(t.name)} {shape} {t.dtype}"


def _print_model_info(info: ModelInfo) -> None:
    written = f", written by Keras {info.keras_version}" if info.keras_version else ""
    console.print(f"[bold]{escape(info.file)}[/] ({info.format}{written}): model "
                  f"{escape(info.name)!r}")
    console.print(f"  inputs:     {'; '.join(_tensor_text(t) for t in info.inputs)}")
    console.print(f"  outputs:    {'; '.join(_tensor_text(t) for t in info.outputs)}")
    activations = ", ".join(a or "unknown" for a in info.last_activations)
    if info.ensemble is not None:
        members = "; ".join(", ".join(a or "unknown" for a in m["last_activations"])
                            for m in info.ensemble.members)
        activations = f"weighted {info.ensemble.mode} of the members' {members}"
    console.print(f"  activation: {escape(activations)}")
    console.print(f"  params:     {info.params:,}")
    console.print(f"  size:       {_size_text(info.size)}")
    console.print(f"  sha256:     {info.sha256}")
    e = info.ensemble
    if e is None:
        return
    renormalized = ", renormalized" if e.renormalize else ""
    weights = ", ".join(f"{w:.4g}" for w in e.weights)
    if e.weights_given is not None:
        weights = f"{', '.join(f'{w:g}' for w in e.weights_given)} → {weights}"
    console.print(f"  ensemble:   {e.mode}{renormalized}, {e.inputs} inputs, weights {weights}"
                  + (f" ({escape(e.tool)})" if e.tool else ""))
    for m in e.members:
        source = escape(str(m["file"])) if m["file"] else "(not recorded)"
        digest = m["sha256"] or "(no SHA-256 recorded)"
        console.print(f"    member {m['index']}: {source} → {escape(m['layer'])}, sha256 {digest}")
    if e.tuning:
        console.print(f"  tuned:      {escape(_tuning_text(e.tuning))}")


def _tuning_text(tuning: dict[str, Any]) -> str:
    """One line on how `fuse tune` chose the weights, from the file's provenance."""
    data = tuning.get("data") or {}
    text = (f"{tuning.get('method')} on {tuning.get('metric')}, data {data.get('file')} "
            f"({data.get('rows')} rows, holdout {tuning.get('holdout')})")
    held = tuning.get("heldout") or {}
    scores = ", ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in held.items()
                       if k in ("accuracy", "log_loss") and isinstance(v, float))
    return f"{text}; held out: {scores}" if scores else text


@app.command("verify")
def verify_command(
    merged: Annotated[
        Path, typer.Argument(help="A model file written by `fuse merge`.", show_default=False)
    ],
    members: Annotated[
        list[Path] | None,
        typer.Argument(help="The original member files, in the order they were merged: each "
                       "must have the recorded SHA-256 and compute what its embedded copy "
                       "does.", show_default=False),
    ] = None,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Re-check MERGED: its formula on its embedded members, and its recorded members.

    Exit code 6 on any disagreement.

    Examples:

      fuse verify ensemble.keras

      fuse verify ensemble.keras a.keras b.h5
    """
    with _exit_on_error(debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.inspection import verify_file

        with _spinner(not json_output) as progress:
            report = verify_file(merged, members or [], unsafe=unsafe, progress=progress)
        if json_output:
            console.print_json(json.dumps({"ok": True, **report.to_dict()}))
        else:
            print_verify_report(report)


def print_verify_report(report: VerifyReport) -> None:
    """The human-readable verify report on stdout."""
    console.print(f"verified: {escape(report.file)} computes its {report.mode} formula on its "
                  f"{len(report.members)} embedded members, max abs error "
                  f"{report.formula_max_abs_error:.2e}")
    if not report.provenance_recorded:
        console.print("          (the file records no provenance)")
    for m in report.members:
        if m.given is None:
            continue
        error = f"{m.max_abs_error:.2e}" if m.max_abs_error is not None else "n/a"
        console.print(f"member {m.index}: {escape(m.given)} has the recorded SHA-256 and "
                      f"matches its embedded copy, max abs error {error}")



# --- evaluate and tune commands (issue 6) ---

# typer needs this Enum when it builds the commands; fuse_cli.tuning imports no numpy.
from fuse_cli.tuning import Metric  # noqa: E402

if TYPE_CHECKING:
    from fuse_cli.search import Scores
    from fuse_cli.tuning import EvaluationReport, TuneReport

DataOption = Annotated[
    Path,
    typer.Option("--data", "-d", show_default=False,
                 help="An .npz file: 'x' (or 'x0', 'x1', ... for several inputs) and 'y' "
                 "(class indices or one-hot), one row per example."),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Rows per predict batch.")]


def _quiet_retracing(debug: bool) -> None:
    """Silence TensorFlow's retracing notices (kept with --debug).

    Each model's predict function traces once for full batches and once for the last,
    shorter one; TensorFlow counts those traces across models and warns.
    """
    if not debug:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[tuple[Any, Any]]:
    """A status line and one bar per model while predicting, on stderr, only on a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield None, None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bars:
        status = bars.add_task("starting", total=None)
        tasks: dict[str, Any] = {}

        def say(message: str) -> None:
            bars.update(status, description=escape(message))

        def advance(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(f"predicting with {escape(label)}", total=total)
            bars.update(tasks[label], completed=done)

        yield say, advance


@app.command("evaluate")
def evaluate_command(
    models: Annotated[
        list[Path], typer.Argument(help="Model files: members or merged models.",
                                   show_default=False)
    ],
    data: DataOption,
    batch_size: BatchSizeOption = 256,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Score each model on labelled data: accuracy and log-loss.

    Log-loss divides each output row by its sum and clips the label's probability to
    [1e-7, 1 - 1e-7], as Keras's cross-entropy does; it is n/a for outputs that are not
    probabilities.

    Example:

      fuse evaluate a.keras b.h5 ensemble.keras --data heldout.npz
    """
    with _exit_on_error(debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        _quiet_retracing(debug)
        from fuse_cli.tuning import evaluate_files

        with _progress_bars(not json_output) as (say, advance):
            report = evaluate_files(models, data, batch_size=batch_size, unsafe=unsafe,
                                    progress=say, advance=advance)
        for warning in report.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}")
        if json_output:
            console.print_json(json.dumps({"ok": True, **report.to_dict()}))
        else:
            print_evaluation(report)


def print_evaluation(report: EvaluationReport) -> None:
    """The human-readable evaluation table on stdout."""
    table = Table(title=f"{report.data}: {report.rows} rows", title_justify="left")
    for column in ("model", "output shape", "accuracy", "log-loss"):
        table.add_column(column, justify="left" if column in ("model", "output shape")
                         else "right", overflow="fold")
    for m in report.models:
        table.add_row(escape(m.file), m.output_shape, f"{m.accuracy:.4f}",
                      "n/a" if m.log_loss is None else f"{m.log_loss:.4f}")
    console.print(table)


@app.command("tune")
def tune_command(
    models: MembersArgument,
    data: DataOption,
    output: OutputOption,
    mode: ModeOption = Mode.SUM,
    metric: Annotated[
        Metric, typer.Option("--metric", case_sensitive=False,
                             help="What the weights optimize on the fit part.")
    ] = Metric.LOG_LOSS,
    holdout: Annotated[
        float, typer.Option("--holdout", metavar="FRACTION",
                            help="Share of the rows held out of the search and scored after "
                            "it (fixed seed, stratified); 0 fits on every row.")
    ] = 0.3,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", show_default=False,
                     help="Plot the score against the weight (two models) or along the "
                     "search (more). Needs pip install 'fuse-cli\\[plot]'."),
    ] = None,
    renormalize: RenormalizeOption = False,
    assume_nonnegative: AssumeNonnegativeOption = False,
    name: NameOption = "ensemble",
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUTPUT (and the plot) if it exists.")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip reloading OUTPUT and checking the formula.")
    ] = False,
    batch_size: BatchSizeOption = 256,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Find the weights from labelled data, then merge MODELS with them and verify.

    Each model runs once over the data; the weights are searched on part of the rows
    (an exact grid for two models, Caruana's greedy selection for more) and scored on
    the rest, which the search never saw.

    Example:

      fuse tune a.keras b.h5 --data val.npz -o ensemble.keras --plot search.png
    """
    with _exit_on_error(debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        _quiet_retracing(debug)
        from fuse_cli.tuning import TuneOptions, tune_files

        options = TuneOptions(
            mode=mode, metric=metric, holdout=holdout, batch_size=batch_size,
            renormalize=renormalize, assume_nonnegative=assume_nonnegative, name=name,
            force=force, verify=not no_verify, unsafe=unsafe, plot=plot,
        )
        with _progress_bars(not json_output) as (say, advance):
            report = tune_files(models, data, output, options, progress=say, advance=advance)
        for warning in report.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}")
        if json_output:
            console.print_json(json.dumps({"ok": True, **report.to_dict()}))
        else:
            print_tune_report(report)


_SEARCHES = {
    "grid": "exact grid over the first weight, 0 to 1 in steps of 0.01",
    "greedy": "greedy selection with replacement (Caruana), 100 rounds",
}


def print_tune_report(report: TuneReport) -> None:
    """The human-readable tuning report on stdout."""
    fit, held = report.fit, report.heldout
    split = (f"{fit.rows} to fit the weights, {held.rows} held out (--holdout "
             f"{report.holdout:g}, seed {report.seed})" if held else
             f"all {fit.rows} to fit the weights (--holdout 0)")
    console.print(f"data:     {escape(report.data)}, {report.rows} rows: {split}")
    console.print(f"search:   {_SEARCHES.get(report.method, report.method)}; "
                  f"metric {report.metric}")
    table = Table(title_justify="left")
    table.add_column("model", overflow="fold")
    table.add_column("weight", justify="right")
    for part in ("fit", "held out") if held else ("fit",):
        table.add_column(f"{part}\naccuracy", justify="right")
        table.add_column(f"{part}\nlog-loss", justify="right")
    parts = [fit, held] if held else [fit]
    for i, (label, weight) in enumerate(zip(report.files, report.weights, strict=True)):
        table.add_row(escape(label), f"{weight:.4g}", *_score_cells([p.members[i] for p in parts]))
    equal = f"{1 / len(report.files):.4g} each"
    table.add_row("equal weights", equal, *_score_cells([p.equal_weights for p in parts]))
    table.add_row("[bold]tuned ensemble[/]", "", *_score_cells([p.ensemble for p in parts]),
                  style="bold")
    console.print(table)
    _print_written(report.merge)
    if report.plot:
        console.print(f"plot:     {escape(report.plot)}")
    console.print(f"elapsed:  {report.elapsed_seconds:.1f} s")


def _score_cells(scores: list[Scores]) -> list[str]:
    cells = []
    for s in scores:
        cells.append(f"{s.accuracy:.4f}")
        cells.append("n/a" if s.log_loss is None else f"{s.log_loss:.4f}")
    return cells


def main() -> None:
    """Entry point of the `fuse` console script."""
    try:
        app()
    finally:
        # Skip the interpreter's last garbage collection over everything TensorFlow
        # allocated (1-2 s at exit); the process is ending, the OS frees it all.
        gc.freeze()
