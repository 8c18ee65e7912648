"""The pass over images: read, screen, decode, resize and scale, then predict.

One decoding for every reader: `decode` is the step `image_batches` maps over a folder
with `tf.data` (the local engine), and the one `decode_blobs` applies to the encoded
images of a Parquet table or of a Ray worker's batch. Keras's own ops, so the same
image gives the same input whichever reads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from fuse_cli.errors import DataError, DataLoadError, first_line
from fuse_cli.images import ImageFolder, ImageOptions, declared_refusal
from fuse_cli.report import Advance
from fuse_cli.tables import ImageTable
from fuse_cli.tables import image_batches as table_batches


def decode(data: Any, size: tuple[int, int, int], options: ImageOptions) -> Any:
    """One encoded image (a string tensor) as a model input of `size`: decoded, resized
    (or cropped to the aspect ratio first, as Keras) and scaled."""
    import tensorflow as tf

    from fuse_cli.formats._keras_private import smart_resize

    height, width, channels = size
    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    if options.crop_to_aspect_ratio:  # Keras's own crop, as its folder loader does
        image = smart_resize(image, (height, width), options.interpolation)
    else:
        image = tf.image.resize(image, (height, width), method=options.interpolation)
    image.set_shape((height, width, channels))
    if options.rescale is not None:
        image = image * options.rescale
    if options.offset is not None:
        image = image + options.offset
    return image


def image_batches(folder: ImageFolder, rows: np.ndarray, sizes: Sequence[tuple[int, int, int]],
                  options: ImageOptions, batch_size: int) -> Any:
    """(images, positions) batches, the images once per size in `sizes` (a tuple when
    several); an image that fails to read or decode is dropped."""
    import tensorflow as tf

    def load(path: Any, position: Any) -> tuple[Any, Any]:
        data = tf.io.read_file(path)
        images = tuple(decode(data, size, options) for size in sizes)
        return (images if len(images) > 1 else images[0]), position

    paths = [folder.files[r] for r in rows]
    ds = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(rows), dtype=np.int64)))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    return ds.batch(batch_size).prefetch(2)


def decode_error(file: str) -> str:
    """Why one file cannot be read or decoded as an image (read again, eagerly)."""
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(file), expand_animations=False)
    except (tf.errors.OpError, ValueError) as exc:
        return decoder_reason(exc)
    return "cannot be decoded"


def decoder_reason(exc: Exception) -> str:
    """What TensorFlow's decoder said, on one line, as a person reads it."""
    return without_op_internals(first_line(getattr(exc, "message", None) or exc))


def without_op_internals(message: str) -> str:
    """A TensorFlow op error as a person reads it: without the `{{function_node ...}}`
    prefix and the `[Op:DecodeImage]` suffix TensorFlow adds."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:[A-Za-z0-9_]+\](\s*name:.*)?$", "", message)
    return message.strip() or "cannot be decoded"


def predict_folder(
    model: Any,
    folder: ImageFolder,
    *,
    label: str,
    sizes: Sequence[tuple[int, int, int]],
    options: ImageOptions,
    batch_size: int,
    advance: Advance | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over the folder's images (less those already known bad), batched.

    Returns:
        The output rows and the folder rows they belong to (sorted).

    Raises:
        DataLoadError: An image cannot be read or decoded (without `skip_bad`).
    """
    rows = np.array([r for r in range(folder.rows) if r not in folder.bad], dtype=np.int64)
    total = len(rows)
    outputs: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    expected = 0
    if advance is not None:
        advance(label, 0, total)
    for images, positions in image_batches(folder, rows, sizes, options, batch_size):
        found = positions.numpy()
        if found[-1] - expected + 1 != len(found):
            _missing(folder, rows, expected, found, options)
        expected = int(found[-1]) + 1
        batch = model.predict_on_batch(list(images) if isinstance(images, tuple) else images)
        outputs.append(np.asarray(batch[0] if isinstance(batch, list | tuple) else batch))
        kept.append(rows[found])
        if advance is not None:
            advance(label, expected, total)
    if expected != total:
        _missing(folder, rows, expected, np.array([total]), options)
    if not outputs:
        raise DataError(f"{folder.path}: none of its {folder.rows} images can be decoded")
    return np.concatenate(outputs), np.concatenate(kept)


def _missing(folder: ImageFolder, rows: np.ndarray, expected: int, found: np.ndarray,
             options: ImageOptions) -> None:
    """Name (or, with `skip_bad`, record) the images the pipeline dropped, each with the
    decoder's reason (read again), as `note_bad` says it for every reader."""
    present = set(found.tolist())
    for position in range(expected, int(found[-1])):
        if position not in present:
            row = rows[position:position + 1]
            note_bad(folder, row, [decode_error(folder.files[int(row[0])])], options)


def decode_blobs(
    blobs: Sequence[bytes], sizes: Sequence[tuple[int, int, int]], options: ImageOptions
) -> tuple[list[np.ndarray], list[str | None]]:
    """Encoded images (a Parquet table's, or read by a Ray worker) screened and decoded
    eagerly, with the same steps as `image_batches`.

    Returns:
        One float32 array per size in `sizes`, holding the images that decoded, and, for
        every blob, None (decoded) or why it was not.
    """
    import io

    import tensorflow as tf

    decoded: list[list[np.ndarray]] = [[] for _ in sizes]
    reasons: list[str | None] = []
    for blob in blobs:
        reason = declared_refusal(io.BytesIO(blob))
        if reason is None:
            try:
                images = [decode(tf.constant(blob), size, options).numpy() for size in sizes]
            except (tf.errors.OpError, ValueError) as exc:
                reason = decoder_reason(exc)
            else:
                for found, image in zip(decoded, images, strict=True):
                    found.append(image)
        reasons.append(reason)
    empty = [np.zeros((0, *size), np.float32) for size in sizes]
    return [np.stack(found).astype(np.float32, copy=False) if found else none
            for found, none in zip(decoded, empty, strict=True)], reasons


def predict_table(
    model: Any,
    table: ImageTable,
    *,
    label: str,
    sizes: Sequence[tuple[int, int, int]],
    options: ImageOptions,
    batch_size: int,
    advance: Advance | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over a Parquet table's images, streamed in batches (the local engine).

    Returns:
        The output rows and the table rows they belong to (sorted).

    Raises:
        DataLoadError: An image cannot be decoded (without `skip_bad`).
    """
    total = table.rows
    outputs: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    if advance is not None:
        advance(label, 0, total)
    for start, blobs in table_batches(table, batch_size):
        images, reasons = decode_blobs(blobs, sizes, options)
        rows = start + np.arange(len(blobs))
        note_bad(table, rows, reasons, options)
        ok = np.array([reason is None for reason in reasons], dtype=bool)
        if ok.any():
            batch = model.predict_on_batch(images if len(images) > 1 else images[0])
            outputs.append(np.asarray(batch[0] if isinstance(batch, list | tuple) else batch))
            kept.append(rows[ok])
        if advance is not None:
            advance(label, start + len(blobs), total)
    if not outputs:
        raise DataError(f"{table.path}: none of its {table.rows} images can be decoded")
    return np.concatenate(outputs), np.concatenate(kept)


def note_bad(data: ImageFolder | ImageTable, rows: np.ndarray, reasons: Sequence[str | None],
             options: ImageOptions) -> None:
    """Stop on the first image that did not decode, naming it, or (with `skip_bad`)
    record every one in `data.bad`."""
    for row, reason in zip(rows.tolist(), reasons, strict=True):
        if reason is None:
            continue
        where = data.files[row] if isinstance(data, ImageFolder) else data.row_name(row)
        if not options.skip_bad:
            raise DataLoadError(f"{where}: cannot be read as an image: {reason} "
                                "(--skip-bad-images leaves such images out)")
        data.bad[row] = reason
