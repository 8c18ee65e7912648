"""`--data T.parquet`: labelled images in a Parquet file, or a folder of Parquet files.

The columns (others are ignored):

- `image`: the encoded image file (PNG, JPEG, GIF or BMP bytes), as a binary column, or
  a struct with a `bytes` field (the layout of Hugging Face's `Image` feature). Images
  are decoded, resized and scaled as a folder's are (`fuse_cli.image_pass.decode`),
  with the same limits (declared pixels, `--skip-bad-images`).
- `label`: the class index, an integer >= 0 (no nulls).

A folder's `.parquet` files are read in sorted path order (nested folders included),
the rows of each in file order: row `i` of the data is the `i`-th row so read. The
labels are read first, alone; the images are streamed in batches, so memory does not
grow with the table. Reading Parquet needs pyarrow (`pip install 'fuse-cli[ray]'`,
which brings it, or `pip install pyarrow`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuse_cli.errors import (
    DataError,
    DataLoadError,
    IncompatibleModelsError,
    UsageError,
    first_line,
)
from fuse_cli.formats.screening import MARGIN_BYTES, check_regular_file, size_text
from fuse_cli.images import IMAGE_SUFFIXES

PARQUET_MAGIC = b"PAR1"
# Encoded images barely compress: a table's row groups may declare this many times the
# file's size, plus the margin, once decompressed.
TABLE_FACTOR = 16
PYARROW_MISSING = ("reading Parquet needs pyarrow: pip install 'fuse-cli[ray]' (or pip "
                   "install pyarrow)")


@dataclass
class ImageTable:
    """The labels of one Parquet table and where its rows are; the images are read on demand.

    Attributes:
        path: The file or folder as the user named it.
        parts: The Parquet files, in reading order.
        counts: The rows of each part.
        labels: The class index of every row, int64 `(N,)`.
        bad: Rows whose image cannot be decoded, `(row, reason)`, with `skip_bad`.
    """

    path: Path
    parts: list[str]
    counts: list[int]
    labels: np.ndarray
    bad: dict[int, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """The number of rows."""
        return int(self.labels.shape[0])

    @property
    def name(self) -> str:
        """The file or folder name, for messages."""
        return self.path.name or str(self.path)

    def row_name(self, row: int) -> str:
        """Where one row is, for messages: `part.parquet row 12`."""
        for part, count in zip(self.parts, self.counts, strict=True):
            if row < count:
                return f"{part} row {row}"
            row -= count
        return f"{self.path} row {row}"


def is_table(path: Path) -> bool:
    """Whether `--data` names Parquet: a `.parquet` file, or a folder holding `.parquet`
    files and no images."""
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if not path.is_dir():
        return False
    found = False
    for _root, _dirs, names in os.walk(path):
        for name in names:
            lower = name.lower()
            if lower.endswith(IMAGE_SUFFIXES):
                return False
            found = found or lower.endswith(".parquet")
    return found


def read_table(path: str | Path) -> ImageTable:
    """List a Parquet table's parts, check their columns and read the labels.

    Raises:
        UsageError: pyarrow is not installed.
        DataLoadError: A part that is not Parquet, cannot be read, or declares far more
            than it stores.
        DataError: Missing or mistyped columns, null or negative labels, no rows.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(PYARROW_MISSING) from None
    path = Path(path)
    parts = _parts(path)
    counts, labels = [], []
    kinds: list[Any] = []
    for part in parts:
        try:
            file = pq.ParquetFile(part)
            _check_part(part, file)
            kinds.append([file.schema_arrow.field(c).type for c in ("image", "label")])
            if kinds[-1] != kinds[0]:
                raise DataError(f"{part}: its 'image' and 'label' columns are "
                                f"{', '.join(map(str, kinds[-1]))}, but {parts[0]}'s are "
                                f"{', '.join(map(str, kinds[0]))}: the parts of a table "
                                "share one schema")
            column = file.read(columns=["label"]).column("label")
        except (OSError, ValueError) as exc:  # pyarrow's ArrowException derives from these
            raise DataLoadError(f"{part}: cannot be read as Parquet: {first_line(exc)}") from None
        counts.append(file.metadata.num_rows)
        labels.append(_labels(part, column))
    table = ImageTable(path, [str(p) for p in parts], counts,
                       np.concatenate(labels) if labels else np.zeros(0, np.int64))
    if table.rows == 0:
        raise DataError(f"{path}: has no rows")
    return table


def _parts(path: Path) -> list[Path]:
    if path.is_file() or not path.exists():
        check_regular_file(path, DataLoadError, "a Parquet file")
        parts = [path]
    else:
        parts = sorted(Path(root) / name for root, _dirs, names in os.walk(path)
                       for name in names if name.lower().endswith(".parquet"))
    for part in parts:
        check_regular_file(part, DataLoadError, "a Parquet file")
        with open(part, "rb") as f:
            if f.read(4) != PARQUET_MAGIC:
                raise DataLoadError(f"{part}: not a Parquet file")
    return parts


def _check_part(part: Path, file: Any) -> None:
    """Columns `image` and `label` of the right types; row groups that declare no more
    than `MARGIN_BYTES + TABLE_FACTOR x` the file's size once decompressed."""
    import pyarrow as pa

    schema = file.schema_arrow
    names = schema.names
    for column in ("image", "label"):
        if column not in names:
            raise DataError(f"{part}: no {column!r} column (found {', '.join(names)}); "
                            "expected 'image' (encoded image bytes) and 'label' (class index)")
    image = schema.field("image").type
    if not (_is_binary(image) or (pa.types.is_struct(image)
                                  and image.get_field_index("bytes") >= 0
                                  and _is_binary(image.field("bytes").type))):
        raise DataError(f"{part}: 'image' is {image}; expected binary (the encoded file) or "
                        "a struct with a binary 'bytes' field")
    if not pa.types.is_integer(schema.field("label").type):
        raise DataError(f"{part}: 'label' is {schema.field('label').type}; expected integer "
                        "class indices")
    stored = part.stat().st_size
    limit = MARGIN_BYTES + TABLE_FACTOR * stored
    declared = sum(file.metadata.row_group(i).total_byte_size
                   for i in range(file.metadata.num_row_groups))
    # Run-length encoding stores a billion equal labels in a few bytes; read, each is 8.
    declared = max(declared, 8 * file.metadata.num_rows)
    if declared > limit:
        raise DataLoadError(f"{part}: declares {size_text(declared)} once read, from "
                            f"a file of {size_text(stored)}: too large (limit "
                            f"{size_text(limit)})")


def _is_binary(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def _labels(part: Path, column: Any) -> np.ndarray:
    if column.null_count:
        raise DataError(f"{part}: 'label' has {column.null_count} null values")
    labels = column.to_numpy().astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{part}: 'label' holds {labels.min()}; expected class indices >= 0")
    return labels


def blobs_of(column: Any) -> list[bytes]:
    """The encoded images of one batch's `image` column (binary, or a struct's `bytes`).

    Raises:
        DataError: A null image.
    """
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        column = column.field("bytes") if hasattr(column, "field") else \
            pa.chunked_array([c.field("bytes") for c in column.chunks])
    blobs = column.to_pylist()
    if any(blob is None for blob in blobs):
        raise DataError("a row has no image (null in the 'image' column)")
    return blobs


def image_batches(table: ImageTable, batch_size: int) -> Iterator[tuple[int, list[bytes]]]:
    """`(first row, encoded images)` batches, streamed part by part."""
    import pyarrow.parquet as pq

    start = 0
    for part in table.parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_size,
                                                      columns=["image"]):
            blobs = blobs_of(batch.column(0))
            yield start, blobs
            start += len(blobs)


def table_labels(table: ImageTable, output_shape: Sequence[int | None], label: str) -> None:
    """Check that the labels fit the model's classes (a single sigmoid column: 0 or 1).

    Raises:
        DataError: The model's output is not one class axis.
        IncompatibleModelsError: A label of a class the model does not output.
    """
    if len(output_shape) != 1:
        raise DataError(f"{label}: outputs {tuple(output_shape)} per image; a Parquet table "
                        "scores one class vector per image")
    width = output_shape[0]
    if width is None:
        return
    high = int(table.labels.max())
    if high >= max(width, 2):
        raise IncompatibleModelsError(
            f"{table.name}: 'label' holds class {high}, but {label} outputs {width} "
            f"class{'es' if width != 1 else ''}"
        )
