"""The options the commands share, declared once, and the parsers of their values.

`merge` and `tune` share the merge option group (mode, inputs, output kinds, name,
sharing, safety): one declaration each here, one `merge_options` that turns them into
the library's `MergeOptions`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from fuse_cli import render
from fuse_cli.choices import EngineKind, ExportFormat, InputsMode, Mode
from fuse_cli.errors import UsageError

if TYPE_CHECKING:
    from fuse_cli.engines import EngineOptions
    from fuse_cli.images import ImageOptions
    from fuse_cli.planning import MergeOptions

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
                       help="sum: Σ w_i·y_i. product: Π y_i^w_i (weighted geometric mean). "
                       "soup: one model whose variables are Σ w_i·θ_i (members fine-tuned "
                       "from one starting point).")
]
InputsOption = Annotated[
    InputsMode,
    typer.Option("--inputs", case_sensitive=False,
                 help="shared: one input fed to every member; separate: one input per "
                 "member, in the order given; image: one raw-image input at the largest "
                 "member's size, each member's resize, grayscale and --rescale/--offset "
                 "built in; auto: shared when compatible."),
]
RecomputeBnOption = Annotated[
    bool, typer.Option("--recompute-bn",
                       help="Soup: estimate BatchNormalization's moving statistics again "
                       "on --data (one streamed pass, as SWA) instead of averaging them.")
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


NoVerifyOption = Annotated[
    bool, typer.Option("--no-verify", help="Skip running the artifact and checking its parity.")
]


DataOption = Annotated[
    Path,
    typer.Option("--data", "-d", show_default=False,
                 help="An .npz file: 'x' (or 'x0', 'x1', ... for several inputs) and 'y' "
                 "(class indices or one-hot), one row per example; or a folder of images "
                 "with one subfolder per class (keras.utils.image_dataset_from_directory), "
                 "streamed and resized to each model's input size; or Parquet (a file or "
                 "folder) with 'image' (encoded bytes) and 'label' columns."),
]
EngineOption = Annotated[
    EngineKind,
    typer.Option("--engine", case_sensitive=False,
                 help="Where the pass over --data runs: local (this process) or ray (Ray "
                 "Data: an actor pool per model, on this machine or a cluster; needs pip "
                 "install 'fuse-cli\\[ray]')."),
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", metavar="N", show_default=False,
                 help="--engine ray: actors per model, each loading it once (default 1)."),
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", metavar="ADDRESS", show_default=False,
                 help="--engine ray: a running cluster (auto, HOST:PORT or ray://HOST:PORT). "
                 "Default: start Ray on this machine's cores and stop it after."),
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
InterpolationOption = Annotated[
    str, typer.Option("--interpolation", metavar="METHOD",
                      help="Images: how they are resized to each model's size, as Keras's "
                      "image_dataset_from_directory: bilinear, nearest, bicubic, area, "
                      "lanczos3, lanczos5, gaussian or mitchellcubic.")
]
CropOption = Annotated[
    bool, typer.Option("--crop-to-aspect-ratio",
                       help="Images: crop the largest centred part of the model's aspect "
                       "ratio before resizing, as Keras's crop_to_aspect_ratio.")
]
ClassNamesOption = Annotated[
    str | None, typer.Option("--class-names", metavar="A,B,...", show_default=False,
                             help="Images: the class folders to read, in this order (class 0 "
                             "first); default: every folder, sorted, as Keras.")
]
ValidationSplitOption = Annotated[
    float | None, typer.Option("--validation-split", metavar="FRACTION", show_default=False,
                               help="Images: use one subset of the folder, as Keras's "
                               "validation_split (needs --subset and --seed).")
]
SubsetOption = Annotated[
    str | None, typer.Option("--subset", metavar="training|validation", show_default=False,
                             help="Images: which subset of --validation-split.")
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", show_default=False,
                             help="Images: the shuffle seed of --validation-split, as Keras.")
]
SkipBadOption = Annotated[
    bool, typer.Option("--skip-bad-images",
                       help="Images: leave out files that cannot be decoded, counted in a "
                       "warning, instead of stopping (exit 3).")
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


def merge_options(
    *,
    mode: Mode,
    inputs: InputsMode = InputsMode.AUTO,
    weight: float | None = None,
    weights: str | None = None,
    renormalize: bool,
    assume_nonnegative: bool,
    allow_mixed_outputs: bool,
    to_probabilities: bool,
    name: str,
    force: bool,
    no_verify: bool,
    no_share: bool,
    unsafe: bool,
    debug: bool,
    exports: list[ExportFormat] | None = None,
    recompute_bn: Path | None = None,
    images: ImageOptions | None = None,
    batch_size: int | None = None,
) -> MergeOptions:
    """The merge option group as the library's `MergeOptions` (merge's and tune's)."""
    from fuse_cli.planning import MergeOptions

    return MergeOptions(
        recompute_bn=recompute_bn, images=images, batch_size=batch_size,
        mode=mode, weight=weight, weights=parse_weights(weights), inputs=inputs,
        renormalize=renormalize, assume_nonnegative=assume_nonnegative,
        allow_mixed_outputs=allow_mixed_outputs, to_probabilities=to_probabilities,
        name=name, force=force, verify=not no_verify, unsafe=unsafe, share=not no_share,
        exports=list(exports or []), quiet=not debug,
    )


class FileNamesAreNotOptions(TyperCommand):
    """A command that refuses an option whose name is also a file in the working folder.

    `fuse merge * -o OUT` in a folder holding a file named `--unsafe` would otherwise
    turn unsafe mode on: the shell expands `*` to that name, and it reads as the option.
    Nothing after `--` is an option, so `fuse merge -o OUT -- *` is always safe.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        panels = {**PANELS, **MERGE_PANELS} if self.name == "merge" else PANELS
        for param in self.params:  # help: a flag takes no value, so it shows no `<bool>`
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            if param.param_type_name == "argument":  # usage: MODELS..., not {models}...
                param._usage_display_name = _usage_name(param)  # type: ignore[attr-defined]
            elif param.name in panels and getattr(param, "rich_help_panel", None) is None:
                param.rich_help_panel = panels[param.name]  # type: ignore[attr-defined]

    def get_help_option(self, ctx: Any) -> Any:
        """`--help` is a flag too."""
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        """Check the raw arguments before they are parsed as options."""
        refuse_options_named_like_files(args)
        return super().parse_args(ctx, args)


# Help panels: the options of merge and tune in groups a reader can skip.
_COMBINING = "Combining outputs"
_IMAGES = "Images (a folder as --data)"
_SEARCH = "Search and calibration"
_SOUP = "Soup"
PANELS = {
    **dict.fromkeys(("inputs", "renormalize", "assume_nonnegative", "allow_mixed_outputs",
                     "to_probabilities", "no_share"), _COMBINING),
    **dict.fromkeys(("rescale", "offset", "skip_bad_images", "interpolation",
                     "crop_to_aspect_ratio", "class_names", "validation_split", "subset",
                     "seed"), _IMAGES),
    **dict.fromkeys(("metric", "cv", "holdout", "plot", "keep_zero_weights", "calibrate",
                     "batch_size"), _SEARCH),
    **dict.fromkeys(("recompute_bn", "even_if_worse"), _SOUP),
    **dict.fromkeys(("engine", "workers", "address"), "Engine (the pass over --data)"),
    **dict.fromkeys(("unsafe", "json_output", "debug"), "Safety and reports"),
}
# In merge, the data options serve --recompute-bn only.
MERGE_PANELS = dict.fromkeys(("data", "rescale", "offset", "batch_size"), _SOUP)


def _usage_name(param: Any) -> Any:
    """How an argument reads on the usage line: `MODELS...`, `[MEMBERS]...`."""
    name = param.metavar if param.metavar is not None else (param.name or "").upper()
    text = name if param.required else f"[{name}]"
    text += "..." if param.nargs != 1 else ""
    return lambda: text


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


def image_options(
    scale: str | None, offset: float | None, skip_bad: bool, interpolation: str,
    crop: bool, class_names: str | None, split: tuple[float | None, str | None, int | None],
) -> ImageOptions:
    """The image options of evaluate and tune, as checked (`--rescale` parsed)."""
    from fuse_cli.image_input import parse_scale  # numpy, not Keras
    from fuse_cli.images import ImageOptions

    names = tuple(n.strip() for n in class_names.split(",")) if class_names is not None else None
    return ImageOptions(rescale=parse_scale(scale), offset=offset, skip_bad=skip_bad,
                        interpolation=interpolation.lower(), crop_to_aspect_ratio=crop,
                        class_names=names, validation_split=split[0], subset=split[1],
                        seed=split[2])


def engine_options(kind: EngineKind, workers: int | None, address: str | None,
            debug: bool) -> EngineOptions:
    """`--engine`, `--workers`, `--address` as one value (checked later, with the request)."""
    from fuse_cli.engines import EngineOptions

    return EngineOptions(kind=EngineKind(kind), workers=workers, address=address, debug=debug)
