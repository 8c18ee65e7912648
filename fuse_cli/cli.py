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
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

from fuse_cli import __version__, render
from fuse_cli.choices import ExportFormat, InputsMode, Metric, Mode
from fuse_cli.errors import FuseError, UsageError
from fuse_cli.render import console
from fuse_cli.schemas import JSON_SCHEMA

if TYPE_CHECKING:
    from fuse_cli.images import ImageOptions

app = typer.Typer(
    name="fuse",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


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
        _fail(command, f"internal error: {type(exc).__name__}: {exc}{hint}", 1, json_output)


def _fail(command: str, message: str, code: int, json_output: bool) -> None:
    render.print_error(message)
    if json_output:
        _print_json(command, {"ok": False, "exit_code": code, "error": message})
    raise typer.Exit(code)


def _print_json(command: str, data: dict[str, object]) -> None:
    """One JSON object on stdout, under the versioned contract (`fuse_cli/schemas/`)."""
    console.print_json(json.dumps({"schema": JSON_SCHEMA, "command": command, **data}))


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
AllowMixedOption = Annotated[
    bool, typer.Option("--allow-mixed-outputs",
                       help="Sum mode: add members whose outputs are of different kinds "
                       "(probabilities from softmax/sigmoid, raw scores from a linear last "
                       "layer) as they are. Default: exit 4.")
]
ToProbabilitiesOption = Annotated[
    bool, typer.Option("--to-probabilities",
                       help="Append softmax (sigmoid for a single unit) to raw-score members "
                       "before combining, so they add up with probability members.")
]
NoShareOption = Annotated[
    bool, typer.Option("--no-share", help="Keep every member whole: do not compute a backbone "
                       "that members fed one input share (same config and bit-identical "
                       "weights) only once.")
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


class FileNamesAreNotOptions(TyperCommand):
    """A command that refuses an option whose name is also a file in the working folder.

    `fuse merge * -o OUT` in a folder holding a file named `--unsafe` would otherwise
    turn unsafe mode on: the shell expands `*` to that name, and it reads as the option.
    Nothing after `--` is an option, so `fuse merge -o OUT -- *` is always safe.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        """Check the raw arguments before they are parsed as options."""
        refuse_options_named_like_files(args)
        return super().parse_args(ctx, args)


def refuse_options_named_like_files(args: list[str]) -> None:
    """Exit 2 if an option on the command line (before `--`) names a file in this folder."""
    for arg in args:
        if arg == "--":
            return
        if arg.startswith("-") and arg != "-" and os.path.lexists(arg):
            render.print_error(
                f"{arg} is given as an option but is also a file in this folder (a glob such "
                f"as * may have expanded to it); put -- before the file names, e.g. "
                f"fuse merge -o OUT -- *"
            )
            raise typer.Exit(2)


@app.command(cls=FileNamesAreNotOptions)
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
    allow_mixed_outputs: AllowMixedOption = False,
    to_probabilities: ToProbabilitiesOption = False,
    name: NameOption = "ensemble",
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip reloading OUTPUT and checking the formula "
                           "(and the parity of --export artifacts).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Load and check everything, print the plan (members, "
                           "inputs, formula, where each file would go) and write nothing. "
                           "Exit code as the merge would give: 0, 2, 3, 4 or 5.")
    ] = False,
    export: Annotated[
        list[ExportFormat] | None,
        typer.Option("--export", case_sensitive=False, show_default=False,
                     help="Also write a deployable artifact beside OUTPUT, checked for parity "
                     "(repeatable): saved_model → OUT_saved_model/, litert → OUT.tflite, "
                     "onnx → OUT.onnx."),
    ] = None,
    no_share: NoShareOption = False,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Merge MODELS into one weighted-sum or weighted-product model and verify it.

    Examples:

      fuse merge a.keras b.h5 --weight 0.3 -o ensemble.keras    # 0.3·a + 0.7·b

      fuse merge a.keras b.keras c.keras --mode product -o ens.keras

      fuse merge a.keras b.h5 -o ensemble.keras --dry-run     # check only, write nothing
    """
    with _exit_on_error("merge", debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.merge import MergeOptions, merge_files, plan_merge

        options = MergeOptions(
            mode=mode,
            weight=weight,
            weights=parse_weights(weights),
            inputs=inputs,
            renormalize=renormalize,
            assume_nonnegative=assume_nonnegative,
            allow_mixed_outputs=allow_mixed_outputs,
            to_probabilities=to_probabilities,
            name=name,
            force=force,
            verify=not no_verify,
            unsafe=unsafe,
            share=not no_share,
            exports=list(export or []),
            quiet=not debug,
        )
        if dry_run:
            with render.spinner(not json_output) as progress:
                plan = plan_merge(models, output, options, progress=progress)
            render.print_warnings(plan.warnings)
            if json_output:
                _print_json("merge", {"ok": True, **plan.to_dict()})
            else:
                render.print_merge_plan(plan)
            return
        with render.spinner(not json_output) as progress:
            report = merge_files(models, output, options, progress=progress)
        render.print_warnings(report.warnings)
        if json_output:
            _print_json("merge", {"ok": True, **report.to_dict()})
        else:
            render.print_merge_report(report)
            render.print_exports(report.exports)


# --- export, inspect and verify ---

NoVerifyOption = Annotated[
    bool, typer.Option("--no-verify", help="Skip running the artifact and checking its parity.")
]


@app.command("export", cls=FileNamesAreNotOptions)
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
    with _exit_on_error("export", debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.export import export_file

        with render.spinner(not json_output) as progress:
            run = export_file(merged, [(fmt, output)], force=force, verify=not no_verify,
                              unsafe=unsafe, quiet=not debug, progress=progress)
        if json_output:
            _print_json("export", {"ok": True, **run.to_dict()})
        else:
            render.print_exports(run.exports)


@app.command("inspect", cls=FileNamesAreNotOptions)
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
    with _exit_on_error("inspect", debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.inspection import inspect_files

        with render.spinner(not json_output) as progress:
            report = inspect_files(models, unsafe=unsafe, progress=progress)
        if json_output:
            _print_json("inspect", {"ok": True, **report.to_dict()})
        else:
            render.print_inspect_report(report)


@app.command("verify", cls=FileNamesAreNotOptions)
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
    with _exit_on_error("verify", debug=debug, json_output=json_output):
        _import_keras_quietly(debug)
        from fuse_cli.verification import verify_file

        with render.spinner(not json_output) as progress:
            report = verify_file(merged, members or [], unsafe=unsafe, progress=progress)
        if json_output:
            _print_json("verify", {"ok": True, **report.to_dict()})
        else:
            render.print_verify_report(report)


# --- evaluate and tune ---

DataOption = Annotated[
    Path,
    typer.Option("--data", "-d", show_default=False,
                 help="An .npz file: 'x' (or 'x0', 'x1', ... for several inputs) and 'y' "
                 "(class indices or one-hot), one row per example; or a folder of images "
                 "with one subfolder per class (keras.utils.image_dataset_from_directory), "
                 "streamed and resized to each model's input size."),
]
BatchSizeOption = Annotated[
    int | None,
    typer.Option("--batch-size", show_default=False,
                 help="Rows per predict batch. Default: 256 rows of an .npz file, 32 images."),
]
RescaleOption = Annotated[
    str | None,
    typer.Option("--rescale", metavar="SCALE", show_default=False,
                 help="Images: multiply pixel values (0-255) by SCALE, as "
                 "keras.layers.Rescaling; a number or a fraction such as 1/255 or 1/127.5."),
]
OffsetOption = Annotated[
    float | None,
    typer.Option("--offset", metavar="OFFSET", show_default=False,
                 help="Images: add OFFSET after --rescale (Teachable Machine models: "
                 "--rescale 1/127.5 --offset -1)."),
]
SkipBadOption = Annotated[
    bool, typer.Option("--skip-bad-images",
                       help="Images: leave out files that cannot be decoded, counted in a "
                       "warning, instead of stopping (exit 3).")
]


def parse_scale(text: str | None) -> float | None:
    """Parse `--rescale 0.5`, `1/255` or `1/127.5`.

    Raises:
        UsageError: Not a finite number or fraction.
    """
    if text is None:
        return None
    try:
        top, _, bottom = text.partition("/")
        value = float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--rescale: {text!r} is not a number or a fraction such as 1/255"
                         ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"--rescale: {text!r} is not finite")
    return value


def _image_options(scale: float | None, offset: float | None, skip_bad: bool) -> ImageOptions:
    from fuse_cli.images import ImageOptions  # imports Keras: after _import_keras_quietly

    return ImageOptions(rescale=scale, offset=offset, skip_bad=skip_bad)


def _quiet_retracing(debug: bool) -> None:
    """Silence TensorFlow's retracing notices (kept with --debug).

    Each model's predict function traces once for full batches and once for the last,
    shorter one; TensorFlow counts those traces across models and warns.
    """
    if not debug:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


@app.command("evaluate", cls=FileNamesAreNotOptions)
def evaluate_command(
    models: Annotated[
        list[Path], typer.Argument(help="Model files: members or merged models.",
                                   show_default=False)
    ],
    data: DataOption,
    save_predictions: Annotated[
        Path | None,
        typer.Option("--save-predictions", metavar="P.npz", show_default=False,
                     help="Also write every model's predictions, the labels and each "
                     "model's SHA-256 to P.npz, for fuse tune --predictions."),
    ] = None,
    rescale: RescaleOption = None,
    offset: OffsetOption = None,
    skip_bad_images: SkipBadOption = False,
    batch_size: BatchSizeOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the --save-predictions file if it exists.")
    ] = False,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Score each model on labelled data: accuracy and log-loss.

    Log-loss divides each output row by its sum and clips the label's probability to
    [1e-7, 1 - 1e-7], as Keras's cross-entropy does; it is n/a for outputs that are not
    probabilities.

    Examples:

      fuse evaluate a.keras b.h5 ensemble.keras --data heldout.npz

      fuse evaluate a.keras b.keras --data photos/ --rescale 1/127.5 --offset -1

      fuse evaluate a.keras b.keras --data photos/ --save-predictions p.npz
    """
    with _exit_on_error("evaluate", debug=debug, json_output=json_output):
        scale = parse_scale(rescale)
        _import_keras_quietly(debug)
        _quiet_retracing(debug)
        images = _image_options(scale, offset, skip_bad_images)
        from fuse_cli.evaluation import evaluate_files

        with render.progress_bars(not json_output) as (say, advance):
            report = evaluate_files(models, data, batch_size=batch_size, unsafe=unsafe,
                                    images=images, save=save_predictions,
                                    force=force, progress=say, advance=advance)
        render.print_warnings(report.warnings)
        if json_output:
            _print_json("evaluate", {"ok": True, **report.to_dict()})
        else:
            render.print_evaluation(report)


@app.command("tune", cls=FileNamesAreNotOptions)
def tune_command(
    models: MembersArgument,
    output: OutputOption,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", show_default=False,
                     help="An .npz file ('x' and 'y') or a folder of images with one "
                     "subfolder per class; see fuse evaluate --help."),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", metavar="P.npz", show_default=False,
                     help="Search on predictions saved by fuse evaluate --save-predictions "
                     "(or written elsewhere in its format) instead of running the members; "
                     "refused if their SHA-256s are not the MODELS'."),
    ] = None,
    mode: ModeOption = Mode.SUM,
    metric: Annotated[
        Metric, typer.Option("--metric", case_sensitive=False,
                             help="What the weights optimize on the fit part.")
    ] = Metric.LOG_LOSS,
    cv: Annotated[
        int, typer.Option("--cv", metavar="K",
                          help="Choose the weights by K-fold cross-validation (stratified, "
                          "fixed seed): search on K-1 folds, score on the one left out, "
                          "average the K weights; 0: one search on every row to fit.")
    ] = 5,
    holdout: Annotated[
        float, typer.Option("--holdout", metavar="FRACTION",
                            help="Share of the rows held out of everything (the search and "
                            "the folds) and scored after it (fixed seed, stratified).")
    ] = 0.0,
    rescale: RescaleOption = None,
    offset: OffsetOption = None,
    skip_bad_images: SkipBadOption = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", show_default=False,
                     help="Plot the score against the weight (two models) or along the "
                     "search (more). Needs pip install 'fuse-cli\\[plot]'."),
    ] = None,
    renormalize: RenormalizeOption = False,
    assume_nonnegative: AssumeNonnegativeOption = False,
    allow_mixed_outputs: AllowMixedOption = False,
    to_probabilities: ToProbabilitiesOption = False,
    name: NameOption = "ensemble",
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUTPUT (and the plot) if it exists.")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip reloading OUTPUT and checking the formula.")
    ] = False,
    batch_size: BatchSizeOption = None,
    no_share: NoShareOption = False,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Find the weights from labelled data, then merge MODELS with them and verify.

    Each model runs once over the data (or not at all, with --predictions); the weights
    are searched (an exact grid for two models, Caruana's greedy selection for more) by
    K-fold cross-validation, each fold scored by weights that never saw it.

    Examples:

      fuse tune a.keras b.h5 --data val.npz -o ensemble.keras --plot search.png

      fuse tune a.keras b.keras --data photos/ --rescale 1/127.5 --offset -1 -o ens.keras

      fuse tune a.keras b.keras --predictions p.npz -o ensemble.keras
    """
    with _exit_on_error("tune", debug=debug, json_output=json_output):
        scale = parse_scale(rescale)
        _import_keras_quietly(debug)
        _quiet_retracing(debug)
        images = _image_options(scale, offset, skip_bad_images)
        from fuse_cli.tuning import TuneOptions, tune_files

        options = TuneOptions(
            mode=mode, metric=metric, holdout=holdout, cv=cv, batch_size=batch_size,
            images=images,
            predictions=predictions,
            renormalize=renormalize, assume_nonnegative=assume_nonnegative,
            allow_mixed_outputs=allow_mixed_outputs, to_probabilities=to_probabilities,
            name=name, force=force, verify=not no_verify, unsafe=unsafe, plot=plot,
            share=not no_share,
        )
        with render.progress_bars(not json_output) as (say, advance):
            report = tune_files(models, data, output, options, progress=say, advance=advance)
        render.print_warnings(report.warnings)
        if json_output:
            _print_json("tune", {"ok": True, **report.to_dict()})
        else:
            render.print_tune_report(report)


def main() -> None:
    """Entry point of the `fuse` console script."""
    try:
        app()
    finally:
        # Skip the interpreter's last garbage collection over everything TensorFlow
        # allocated (1-2 s at exit); the process is ending, the OS frees it all.
        gc.freeze()
