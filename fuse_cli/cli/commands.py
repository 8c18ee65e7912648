"""The commands: parse options, call one library function, show its report.

Each command checks what needs no model first, then imports Keras quietly, then runs
one library call under `emit`, which shows progress, warnings and the report (or the
JSON object).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fuse_cli import render
from fuse_cli.choices import Backend, Calibrate, EngineKind, ExportFormat, InputsMode, Metric, Mode
from fuse_cli.cli.app import app, command, emit, import_keras_quietly, quiet_retracing
from fuse_cli.cli.options import (
    AddressOption,
    AllowMixedOption,
    AssumeNonnegativeOption,
    BatchSizeOption,
    ClassNamesOption,
    CropOption,
    DataOption,
    DebugOption,
    EngineOption,
    FileNamesAreNotOptions,
    InputsOption,
    InterpolationOption,
    JsonOption,
    MembersArgument,
    ModeOption,
    NameOption,
    NoShareOption,
    NoVerifyOption,
    OffsetOption,
    OutputOption,
    RecomputeBnOption,
    RenormalizeOption,
    RescaleOption,
    SeedOption,
    SkipBadOption,
    SubsetOption,
    ToProbabilitiesOption,
    UnsafeOption,
    ValidationSplitOption,
    WorkersOption,
    engine_options,
    image_options,
    merge_options,
)
from fuse_cli.errors import UsageError

if TYPE_CHECKING:
    from fuse_cli.report import MergeReport


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
    inputs: InputsOption = InputsMode.AUTO,
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
    recompute_bn: RecomputeBnOption = False,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", show_default=False,
                     help="Soup with --recompute-bn: the inputs to estimate the statistics "
                     "on, an .npz file or a folder of images (labels unused).")
    ] = None,
    rescale: RescaleOption = None,
    offset: OffsetOption = None,
    batch_size: BatchSizeOption = None,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Merge MODELS into one weighted-sum, weighted-product or soup model and verify it.

    Examples:

      fuse merge a.keras b.h5 --weight 0.3 -o ensemble.keras    # 0.3·a + 0.7·b

      fuse merge a.keras b.keras c.keras --mode product -o ens.keras

      fuse merge run1.keras run2.keras --mode soup -o soup.keras    # weights averaged

      fuse merge a.keras b.h5 -o ensemble.keras --dry-run     # check only, write nothing
    """
    with command("merge", debug=debug, json_output=json_output):
        from fuse_cli.planning import check_request

        if (data is None) == recompute_bn:
            raise UsageError("--recompute-bn needs --data" if recompute_bn else
                             "--data is read by --recompute-bn only (fuse tune chooses "
                             "weights from data)")
        images = image_options(rescale, offset, False, "bilinear", False,
                                None, (None, None, None))
        options = merge_options(
            mode=mode, inputs=inputs, weight=weight, weights=weights, renormalize=renormalize,
            assume_nonnegative=assume_nonnegative, allow_mixed_outputs=allow_mixed_outputs,
            to_probabilities=to_probabilities, name=name, force=force, no_verify=no_verify,
            no_share=no_share, unsafe=unsafe, debug=debug, exports=export,
            recompute_bn=data, images=images, batch_size=batch_size,
        )
        # Every check that needs no model, before TensorFlow is imported.
        request = check_request(models, output, options)
        import_keras_quietly(debug)
        from fuse_cli.merge import merge_request, plan_request

        if dry_run:
            emit("merge", json_output, lambda say: plan_request(request, progress=say),
                 render.print_merge_plan)
            return
        emit("merge", json_output, lambda say: merge_request(request, progress=say),
             _show_merge)


def _show_merge(report: MergeReport) -> None:
    render.print_merge_report(report)
    render.print_exports(report.exports)


# --- export, inspect and verify ---


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
    with command("export", debug=debug, json_output=json_output):
        from fuse_cli.export import check_export, export_file

        check_export(merged, [(fmt, output)], force=force, verify=not no_verify,
                     quiet=not debug)  # before TensorFlow is imported
        import_keras_quietly(debug)

        emit("export", json_output,
             lambda say: export_file(merged, [(fmt, output)], force=force,
                                     verify=not no_verify, unsafe=unsafe, quiet=not debug,
                                     progress=say),
             lambda run: render.print_exports(run.exports))


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
    with command("inspect", debug=debug, json_output=json_output):
        import_keras_quietly(debug)
        from fuse_cli.inspection import inspect_files

        emit("inspect", json_output,
             lambda say: inspect_files(models, unsafe=unsafe, progress=say),
             render.print_inspect_report)


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
    backend: Annotated[
        Backend | None,
        typer.Option("--backend", case_sensitive=False, show_default=False,
                     help="Run the checks on this Keras backend (a fresh process with "
                     "KERAS_BACKEND set), the one you will serve with; its package must be "
                     "installed. Default: this process's backend (tensorflow)."),
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

      fuse verify ensemble.keras --backend jax
    """
    with command("verify", debug=debug, json_output=json_output):
        if backend is not None:
            from fuse_cli.backends import verify_on_backend

            emit("verify", json_output,
                 lambda say: verify_on_backend(merged, members or [], backend, unsafe=unsafe),
                 render.print_verify_report)
            return
        import_keras_quietly(debug)
        from fuse_cli.verification import verify_file

        emit("verify", json_output,
             lambda say: verify_file(merged, members or [], unsafe=unsafe, progress=say),
             render.print_verify_report)


# --- evaluate and tune ---


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
    interpolation: InterpolationOption = "bilinear",
    crop_to_aspect_ratio: CropOption = False,
    class_names: ClassNamesOption = None,
    validation_split: ValidationSplitOption = None,
    subset: SubsetOption = None,
    seed: SeedOption = None,
    batch_size: BatchSizeOption = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", show_default=False,
                     help="Draw a reliability diagram (accuracy against confidence, 15 bins; "
                     "one line per model with probability outputs). Needs pip install "
                     "'fuse-cli\\[plot]'."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the --save-predictions file (and the "
                           "plot) if it exists.")
    ] = False,
    engine: EngineOption = EngineKind.LOCAL,
    workers: WorkersOption = None,
    address: AddressOption = None,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Score each model on labelled data: accuracy, log-loss, Brier score and ECE.

    Log-loss divides each output row by its sum and clips the label's probability to
    [1e-7, 1 - 1e-7], as Keras's cross-entropy does; it is n/a for outputs that are not
    probabilities.

    Examples:

      fuse evaluate a.keras b.h5 ensemble.keras --data heldout.npz

      fuse evaluate a.keras b.keras --data photos/ --rescale 1/127.5 --offset -1

      fuse evaluate a.keras b.keras --data photos/ --save-predictions p.npz

      fuse evaluate a.keras b.keras --data shards/ --engine ray --workers 2
    """
    with command("evaluate", debug=debug, json_output=json_output):
        from fuse_cli.evaluation import check_evaluate, evaluate

        images = image_options(rescale, offset, skip_bad_images, interpolation,
                                crop_to_aspect_ratio, class_names,
                                (validation_split, subset, seed))
        # Every check that needs no model (the data read too), before TensorFlow.
        request = check_evaluate(models, data, batch_size=batch_size, unsafe=unsafe,
                                 images=images, save=save_predictions, force=force,
                                 plot=plot, engine=engine_options(engine, workers, address, debug))
        import_keras_quietly(debug)
        quiet_retracing(debug)
        emit("evaluate", json_output,
             lambda say, advance: evaluate(request, progress=say, advance=advance),
             render.print_evaluation, bars=True)


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
    interpolation: InterpolationOption = "bilinear",
    crop_to_aspect_ratio: CropOption = False,
    class_names: ClassNamesOption = None,
    validation_split: ValidationSplitOption = None,
    subset: SubsetOption = None,
    seed: SeedOption = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", show_default=False,
                     help="Plot the score against the weight (two models) or along the "
                     "search (more). Needs pip install 'fuse-cli\\[plot]'."),
    ] = None,
    inputs: InputsOption = InputsMode.AUTO,
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
    keep_zero_weights: Annotated[
        bool, typer.Option("--keep-zero-weights",
                           help="Keep members the search gave weight 0 in OUTPUT (by default "
                           "they are left out: they cost a forward pass and add nothing).")
    ] = False,
    recompute_bn: RecomputeBnOption = False,
    calibrate: Annotated[
        Calibrate, typer.Option("--calibrate", case_sensitive=False,
                                help="temperature: after the weights, fit one temperature T "
                                "on the ensemble's out-of-fold probabilities (log-loss) and "
                                "build softmax(log(p)/T) into OUTPUT; reports ECE and Brier "
                                "before and after.")
    ] = Calibrate.NONE,
    even_if_worse: Annotated[
        bool, typer.Option("--even-if-worse",
                           help="Soup: write the soup even if it does not beat the best "
                           "member (by default that is exit 4, nothing written).")
    ] = False,
    engine: EngineOption = EngineKind.LOCAL,
    workers: WorkersOption = None,
    address: AddressOption = None,
    unsafe: UnsafeOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Find the weights from labelled data, then merge MODELS with them and verify.

    Each model runs once over the data (or not at all, with --predictions); the weights
    are searched (an exact grid for two models, Caruana's greedy selection for more) by
    K-fold cross-validation, each fold scored by weights that never saw it. With
    --mode soup: each member, the output ensemble, the uniform and the greedy soup
    scored on the same rows; the better soup is written only if it beats the best member.

    Examples:

      fuse tune a.keras b.h5 --data val.npz -o ensemble.keras --plot search.png

      fuse tune a.keras b.keras --data photos/ --rescale 1/127.5 --offset -1 -o ens.keras

      fuse tune a.keras b.keras --predictions p.npz -o ensemble.keras

      fuse tune run1.keras run2.keras run3.keras --mode soup --data val.npz -o soup.keras
    """
    with command("tune", debug=debug, json_output=json_output):
        images = image_options(rescale, offset, skip_bad_images, interpolation,
                                crop_to_aspect_ratio, class_names,
                                (validation_split, subset, seed))
        if recompute_bn and data is None:
            raise UsageError("--recompute-bn needs --data")
        merge = merge_options(
            mode=mode, inputs=inputs, renormalize=renormalize,
            assume_nonnegative=assume_nonnegative,
            allow_mixed_outputs=allow_mixed_outputs, to_probabilities=to_probabilities,
            name=name, force=force, no_verify=no_verify, no_share=no_share, unsafe=unsafe,
            debug=debug, recompute_bn=data if recompute_bn else None, images=images,
            batch_size=batch_size,
        )
        from fuse_cli.tuning import TuneOptions, check_tune, tune

        options = TuneOptions(merge=merge, metric=metric, holdout=holdout, cv=cv,
                              batch_size=batch_size, images=images,
                              predictions=predictions, plot=plot,
                              keep_zero_weights=keep_zero_weights,
                              even_if_worse=even_if_worse, calibrate=calibrate,
                              engine=engine_options(engine, workers, address, debug))
        request = check_tune(models, data, output, options)  # before TensorFlow
        import_keras_quietly(debug)
        quiet_retracing(debug)
        emit("tune", json_output,
             lambda say, advance: tune(request, progress=say, advance=advance),
             render.print_tune_report, bars=True)

