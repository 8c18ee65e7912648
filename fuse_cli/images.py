"""`--data DIR`: a folder of labelled images, in Keras's convention, read as a stream.

The layout is the one `keras.utils.image_dataset_from_directory` reads: one subfolder
per class, the class index is the position of the subfolder's name in sorted order,
and a class's images may sit in nested folders below it. Files whose extension is not
one of `.bmp .gif .jpeg .jpg .png` are ignored, as Keras ignores them (fuse counts them
in a warning).

The labels come from one pass over the file names; no image is read for them. Each
model then gets its own pass over the images: `tf.data` reads, decodes and resizes
them to that model's input size (bilinear, as Keras), in batches, with a bounded
prefetch, so memory does not grow with the number of images. Optional preprocessing
is Keras's `Rescaling`: `x * scale + offset`.

An image that cannot be read or decoded stops the run with its file name (exit 3),
or, with `skip_bad`, is counted and left out of every model's scores.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fuse_cli.compatibility import TensorSpec
from fuse_cli.errors import (
    DataError,
    DataLoadError,
    IncompatibleModelsError,
    UsageError,
)
from fuse_cli.files import within
from fuse_cli.image_headers import MAX_PIXELS, declared_size

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # keras.utils.image_dataset...
CHANNELS = {1: "grayscale", 3: "rgb", 4: "rgba"}
# keras.utils.image_dataset_from_directory's `interpolation` values (tf.image.resize's).
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")



@dataclass(frozen=True)
class ImageOptions:
    """How images become model inputs: `x * rescale + offset` (keras.layers.Rescaling).

    Attributes:
        rescale: The factor (None: 1, the pixel values 0-255 as decoded).
        offset: Added after scaling (None: 0).
        skip_bad: Leave out images that cannot be decoded, counted, instead of stopping.
    """

    rescale: float | None = None
    offset: float | None = None
    skip_bad: bool = False
    # Keras's `image_dataset_from_directory` options, with its meaning and defaults.
    interpolation: str = "bilinear"
    crop_to_aspect_ratio: bool = False
    class_names: tuple[str, ...] | None = None
    validation_split: float | None = None
    subset: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for option, value in (("--rescale", self.rescale), ("--offset", self.offset)):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{option} must be a finite number; got {value}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"--interpolation {self.interpolation!r}: use one of "
                             f"{', '.join(INTERPOLATIONS)}")
        split = self.validation_split
        if split is None:
            if self.subset is not None:
                raise UsageError("--subset needs --validation-split")
            return
        if not 0 < split < 1:
            raise UsageError(f"--validation-split must be between 0 and 1; got {split}")
        if self.subset not in ("training", "validation"):
            raise UsageError("--validation-split needs --subset training or validation")
        if self.seed is None:
            raise UsageError("--validation-split needs --seed (as Keras: the same seed gives "
                             "the same split, with no overlap between the subsets)")

    @property
    def given(self) -> bool:
        """Whether any option differs from its default (they apply to folders only)."""
        return self != ImageOptions()

    @property
    def resize(self) -> str:
        """How images are brought to a member's size, in words (for the provenance)."""
        how = f"{self.interpolation}, to each member's input size"
        return how + (", cropped to its aspect ratio first" if self.crop_to_aspect_ratio
                      else "")


@dataclass
class ImageFolder:
    """The file names and labels of one image folder; the images are read on demand.

    Attributes:
        path: The folder as the user named it.
        classes: The class subfolders' names, sorted: class `i` is `classes[i]`.
        files: Every image file, class by class, sorted within each class.
        labels: The class index of every file, int64 `(N,)`.
        ignored: Files without an image extension (not hidden ones), left out.
        bad: Images found unreadable while predicting, `(row, reason)`, with `skip_bad`.
    """

    path: Path
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    ignored: list[str] = field(default_factory=list)
    bad: dict[int, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """The number of image files."""
        return len(self.files)

    @property
    def name(self) -> str:
        """The folder's name, for messages."""
        return self.path.name or str(self.path)


def read_image_folder(path: str | Path, class_names: Sequence[str] | None = None) -> ImageFolder:
    """List the class subfolders and their image files (names only; nothing is decoded).

    Args:
        path: The folder.
        class_names: Keras's `class_names`: the classes to read, in this order (a subset
            of the subfolders); default: every subfolder, sorted by code point. Hidden
            subfolders (`.ipynb_checkpoints`) are never classes, as in Keras.

    Raises:
        DataLoadError: The folder is missing or unreadable.
        DataError: No class subfolders, no image in any of them, or `class_names` that
            are not subfolders.
    """
    path = Path(path)
    if not path.exists():
        raise DataLoadError(f"{path}: no such folder")
    if not path.is_dir():
        raise DataLoadError(f"{path}: is not a folder")
    try:
        classes = sorted(e.name for e in os.scandir(path)
                         if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot list: {exc.strerror or exc}") from None
    if class_names is not None:
        unknown = [name for name in class_names if name not in classes]
        if unknown or len(set(class_names)) != len(class_names) or not class_names:
            raise DataError(
                f"{path}: --class-names {','.join(class_names)}: each must be one of its "
                f"subfolders, once ({', '.join(classes) or 'none'})"
            )
        classes = list(class_names)
    inside = os.path.realpath(path)
    for name in classes:
        if not within(path / name, inside):
            raise DataLoadError(
                f"{path / name}: a link to {os.path.realpath(path / name)}, outside the "
                "folder; fuse reads the images inside the folder only (copy them in)"
            )
    if not classes:
        raise DataError(
            f"{path}: has no class subfolders; expected one folder per class holding its "
            "images (as keras.utils.image_dataset_from_directory)"
        )
    files: list[str] = []
    labels: list[int] = []
    ignored: list[str] = []
    for index, name in enumerate(classes):
        for file in _walk(path / name):
            if file.lower().endswith(IMAGE_SUFFIXES):
                files.append(file)
                labels.append(index)
            elif not os.path.basename(file).startswith("."):
                ignored.append(file)
    if not files:
        raise DataError(
            f"{path}: no images in its {len(classes)} class folders (looked for "
            f"{' '.join(IMAGE_SUFFIXES)})"
        )
    return ImageFolder(path, classes, files, np.asarray(labels, dtype=np.int64), ignored)


def split_folder(folder: ImageFolder, options: ImageOptions) -> ImageFolder:
    """Keras's `validation_split` / `subset` / `seed`: the files shuffled with
    `np.random.RandomState(seed)` (labels alike), the last `int(split x N)` the validation
    subset and the rest the training one, in that shuffled order.

    Raises:
        DataError: The split leaves a subset empty.
    """
    if options.validation_split is None:
        return folder
    files, labels = list(folder.files), list(folder.labels)
    np.random.RandomState(options.seed).shuffle(files)
    np.random.RandomState(options.seed).shuffle(labels)
    count = int(options.validation_split * len(files))
    if count == 0 or count == len(files):
        raise DataError(f"{folder.path}: --validation-split {options.validation_split} of "
                        f"{len(files)} images leaves a subset empty ({count} for validation)")
    keep = slice(None, -count) if options.subset == "training" else slice(-count, None)
    return ImageFolder(folder.path, folder.classes, files[keep],
                       np.asarray(labels[keep], dtype=np.int64), folder.ignored)


def screen_images(folder: ImageFolder, *, skip_bad: bool = False) -> None:
    """Check every image before any is decoded: a regular file inside the folder (no
    FIFO, device or link leaving it) that declares at most `MAX_PIXELS` pixels (frames
    included) in its header, whatever its suffix says.

    Args:
        folder: The listed folder.
        skip_bad: Record the files that fail in `folder.bad` (left out, counted)
            instead of stopping.

    Raises:
        DataLoadError: The first file that fails, without `skip_bad`.
    """
    inside = os.path.realpath(folder.path)
    for row, file in enumerate(folder.files):
        reason = refusal(file, inside)
        if reason is None:
            continue
        if not skip_bad:
            raise DataLoadError(f"{file}: {reason} (--skip-bad-images leaves such files out)")
        folder.bad[row] = reason


def refusal(file: str, inside: str) -> str | None:
    """Why one listed file is not read as an image, or None."""
    try:
        mode = os.stat(file).st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not within(file, inside):
        return f"a link to {os.path.realpath(file)}, outside the folder"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, device or socket)"
    try:
        with open(file, "rb") as f:
            return declared_refusal(f)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"


def declared_refusal(stream: BinaryIO) -> str | None:
    """Why an image is not decoded, from its header alone: it declares more than
    `MAX_PIXELS` pixels (frames included); None otherwise (unknown headers included: the
    decoder then says what it finds)."""
    declared = declared_size(stream)
    if declared is not None and declared.pixels > MAX_PIXELS:
        frames = f" x {declared.frames} frames" if declared.frames > 1 else ""
        return (f"a {declared.format} image that declares {declared.width:,} x "
                f"{declared.height:,} pixels{frames}: more than fuse decodes "
                f"({MAX_PIXELS // 1_000_000} megapixels)")
    return None


def _walk(folder: Path) -> Iterator[str]:
    """Every file under `folder`, sorted, not following links (as Keras)."""
    def fail(exc: OSError) -> None:
        raise DataLoadError(f"{exc.filename}: cannot list: {exc.strerror or exc}")

    for root, dirs, names in os.walk(folder, onerror=fail):
        dirs.sort()
        for name in sorted(names):
            yield os.path.join(root, name)


def image_input(specs: Sequence[TensorSpec], label: str) -> tuple[int, int, int]:
    """The `(height, width, channels)` a model takes its images at.

    Raises:
        DataError: The model does not take one image of fixed size with 1, 3 or 4 channels.
    """
    shapes = ", ".join(str(s) for s in specs)
    if len(specs) != 1:
        raise DataError(
            f"{label}: takes {shapes}; --data DIR feeds one image input "
            "(None, height, width, channels)"
        )
    return image_inputs(specs, label)[0]


def image_inputs(specs: Sequence[TensorSpec], label: str) -> list[tuple[int, int, int]]:
    """The `(height, width, channels)` of each image a model takes: one, or one per
    member of a merged file with separate inputs (each fed the image at its own size, as
    the member was fed when the file was tuned).

    Raises:
        DataError: An input that is not an image of fixed size with 1, 3 or 4 channels.
    """
    return [_image_size(spec, specs, label) for spec in specs]


def _image_size(spec: TensorSpec, specs: Sequence[TensorSpec], label: str) -> tuple[int, int, int]:
    shapes = ", ".join(str(s) for s in specs)
    if len(spec.shape) != 3:
        raise DataError(
            f"{label}: takes {shapes}; --data DIR feeds images (None, height, width, "
            "channels)"
        )
    height, width, channels = spec.shape
    if height is None or width is None:
        raise DataError(
            f"{label}: takes {shapes}, with no fixed image size; --data DIR resizes to "
            "the model's own size (use an .npz file for this model)"
        )
    if channels not in CHANNELS:
        raise DataError(f"{label}: takes {shapes}; images have 1, 3 or 4 channels")
    return height, width, channels


def folder_labels(folder: ImageFolder, output_shape: Sequence[int | None], label: str) -> None:
    """Check that the class folders match the model's classes.

    A single sigmoid column takes two class folders (0 and 1), as Keras's
    `label_mode="binary"`.

    Raises:
        IncompatibleModelsError: The number of class folders is not the output width.
        DataError: The model's output is not one class axis.
    """
    if len(output_shape) != 1:
        raise DataError(
            f"{label}: outputs {tuple(output_shape)} per image; --data DIR scores one class "
            "vector per image"
        )
    width = output_shape[0]
    count = len(folder.classes)
    if width is None or (width == 1 and count == 2) or width == count:
        return
    shown = ", ".join(folder.classes[:5]) + (", ..." if count > 5 else "")
    raise IncompatibleModelsError(
        f"{folder.path}: has {count} class folder{'s' if count != 1 else ''} ({shown}), but "
        f"{label} outputs {width} class{'es' if width != 1 else ''}"
        + (" (a single sigmoid column takes 2 folders)" if width == 1 else "")
    )


def own_scaling(model: Any) -> str | None:
    """The scaling layer a model applies to its pixels itself (`Rescaling`,
    `Normalization`, nested models included), by class name, or None."""
    from fuse_cli.formats._keras_private import all_layers

    return next((type(layer).__name__ for layer in all_layers(model)
                 if type(layer).__name__ in ("Rescaling", "Normalization")), None)


def scale_warning(
    labels: Sequence[str], scalings: Sequence[str | None], options: ImageOptions | None
) -> str | None:
    """One warning, with the fix, where the data's range and the members' own scaling
    layers disagree: pixels fed as decoded (0-255) to a model with no scaling layer (most
    are trained on 0-1 or -1-1), or `--rescale` on top of a model's own `Rescaling`.
    None when they agree."""
    rescaled = options is not None and options.rescale is not None
    raw = [label for label, own in zip(labels, scalings, strict=True)
           if own is None and not rescaled]
    twice = [label for label, own in zip(labels, scalings, strict=True)
             if own == "Rescaling" and rescaled]
    parts = []
    if raw:
        parts.append(f"{', '.join(raw)}: fed the pixels as decoded (0-255) and has no "
                     "Rescaling layer of its own; if it was trained on inputs in 0-1, pass "
                     "--rescale 1/255 (-1 to 1: --rescale 1/127.5 --offset -1; --rescale 1 "
                     "says 0-255 is right)")
    if twice:
        parts.append(f"{', '.join(twice)}: rescales its pixels itself, and --rescale "
                     "scales them again: leave --rescale out unless it was trained so")
    return "; ".join(parts) or None
