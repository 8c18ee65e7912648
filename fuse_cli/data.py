"""The `--data` file of `fuse evaluate` and `fuse tune`: inputs and labels in one .npz.

The format (written with `numpy.savez` or `numpy.savez_compressed`):

- `x`: the input, one row per example, shaped like the model's input with the batch
  dimension first. A model with several inputs takes `x0`, `x1`, ... instead, in the
  order of `model.inputs` (for a merged model with separate inputs: the first
  member's inputs, then the second's, ...).
- `y`: the labels, as class indices `(N,)` (integers, or floats holding integers) or
  one-hot `(N, C)`. For outputs with more axes, `(N, ..., C)`, the labels are
  `(N, ...)` or `(N, ..., C)`. A single sigmoid column `(N, 1)` takes 0/1 labels,
  `(N,)` or `(N, 1)`.
- Every array has the same number of rows `N >= 1`; other keys are ignored.

The file is read with `allow_pickle=False`: arrays of Python objects are refused.
Structure problems (missing keys, wrong shapes, mismatched lengths, bad labels) are
`DataError` (exit 2); a file that cannot be read as an .npz archive is
`DataLoadError` (exit 3).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse_cli.compatibility import Shape, TensorSpec, shape_text
from fuse_cli.errors import DataError, DataLoadError, first_line
from fuse_cli.formats.screening import (
    MARGIN_BYTES,
    MAX_RATIO,
    check_regular_file,
    read_npy_header,
    size_text,
)

SPLIT_SEED = 0
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
# Data is often saved compressed (numpy.savez_compressed): its arrays may take this many
# times the file's size, plus the margin, in memory.
DATA_FACTOR = 16
_INPUT_KEY = re.compile(r"^x(0|[1-9][0-9]*)$")


@dataclass
class Dataset:
    """The arrays of one data file.

    Attributes:
        path: The file as the user named it.
        keys: The input keys in input order: `["x"]` or `["x0", "x1", ...]`.
        inputs: The input arrays, in the order of `keys`.
        y: The labels as stored (class indices or one-hot).
    """

    path: Path
    keys: list[str]
    inputs: list[np.ndarray]
    y: np.ndarray

    @property
    def rows(self) -> int:
        """The number of examples."""
        return int(self.y.shape[0])

    @property
    def name(self) -> str:
        """The file name, for messages."""
        return self.path.name

    def model_input(self) -> np.ndarray | list[np.ndarray]:
        """The inputs as `model.predict` takes them: one array, or a list."""
        return self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)


def read_data(path: str | Path) -> Dataset:
    """Read and check a data file, before any model is loaded.

    Args:
        path: An .npz archive with `x` (or `x0`, `x1`, ...) and `y`.

    Returns:
        The checked arrays.

    Raises:
        DataLoadError: The file is missing, unreadable, not an .npz archive, or holds
            pickled objects.
        DataError: Missing keys, non-numeric or non-finite values, or arrays with
            different numbers of rows.
    """
    path = Path(path)
    check_npz_file(path, kind="an .npz data file", expected="arrays 'x' and 'y'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            keys = _input_keys(path, names)
            arrays = {key: _read_array(npz, key, path) for key in [*keys, "y"]}
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataLoadError(f"{path}: corrupt .npz archive: {exc}") from None
    data = Dataset(path=path, keys=keys, inputs=[arrays[k] for k in keys], y=arrays["y"])
    _check_arrays(data)
    return data


def check_npz_file(path: Path, *, kind: str, expected: str) -> None:
    """Check a user's `.npz` file before numpy reads it: a regular file, an archive (not a
    lone `.npy` array), and array headers that declare no more than the file stores.

    Args:
        path: The file.
        kind: What it should be, for messages (`"an .npz data file"`).
        expected: What it should hold, for messages (`"arrays 'x' and 'y'"`).

    Raises:
        DataLoadError: Missing, unreadable, not an .npz archive, or too large for what it
            stores.
    """
    check_regular_file(path, DataLoadError, kind)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(_NPY_MAGIC):
        raise DataLoadError(
            f"{path}: is a single .npy array; expected an .npz archive (numpy.savez) with "
            f"{expected}"
        )
    if not head.startswith(_ZIP_MAGICS):
        raise DataLoadError(f"{path}: not an .npz archive (numpy.savez); expected {expected}")
    check_declared_sizes(path)


def check_declared_sizes(path: Path) -> None:
    """Read each array's `.npy` header, allocating nothing: every array must hold what it
    declares, and all together must fit `MARGIN_BYTES + DATA_FACTOR x` the file's size.
    An array is any member that starts with the `.npy` magic, named `.npy` or not.

    Raises:
        DataLoadError: A header that lies, an archive member that expands like a zip
            bomb, or arrays too large for the file.
    """
    stored = path.stat().st_size
    limit = MARGIN_BYTES + DATA_FACTOR * stored
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.compress_size and info.file_size > MAX_RATIO * info.compress_size + 4096:
                    raise DataLoadError(
                        f"{path}: {info.filename!r} expands {info.file_size} bytes from "
                        f"{info.compress_size}: refused as a zip bomb"
                    )
                # numpy reads any member that starts like an array as one, whatever its
                # name (`npz["x"]` finds a member named "x"): check them all by content.
                with zf.open(info) as member:
                    if member.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                        continue
                shape, dtype = read_npy_header(zf, info)
                size = int(np.prod(shape, dtype=object)) * max(1, dtype.itemsize)
                if size > info.file_size and not dtype.hasobject:  # pickles: refused later
                    raise DataLoadError(
                        f"{path}: {info.filename!r} declares shape {tuple(shape)} "
                        f"({size_text(size)}) but holds {size_text(info.file_size)}: refused"
                    )
                total += size
                if total > limit:
                    raise DataLoadError(
                        f"{path}: its arrays declare {size_text(total)} or more, from a file of "
                        f"{size_text(stored)}: too large (limit {size_text(limit)})"
                    )
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataLoadError(f"{path}: corrupt .npz archive: {first_line(exc)}") from None


def _input_keys(path: Path, names: Sequence[str]) -> list[str]:
    found = ", ".join(repr(n) for n in sorted(names)) or "nothing"
    numbered = sorted(int(m.group(1)) for n in names if (m := _INPUT_KEY.match(n)))
    if "x" in names and numbered:
        raise DataError(
            f"{path}: has both 'x' and 'x{numbered[0]}': use 'x' for one input, or "
            "'x0', 'x1', ... for several"
        )
    if "y" not in names:
        raise DataError(f"{path}: no 'y' array (the labels); found {found}")
    if "x" in names:
        return ["x"]
    if not numbered:
        raise DataError(
            f"{path}: no inputs: expected 'x' (one input) or 'x0', 'x1', ... (several); "
            f"found {found}"
        )
    for expected, index in enumerate(numbered):
        if index != expected:
            present = ", ".join(f"'x{i}'" for i in numbered)
            raise DataError(f"{path}: has {present} but no 'x{expected}'")
    return [f"x{i}" for i in numbered]


def _read_array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataLoadError(
                f"{path}: {key!r} holds pickled Python objects, which could run code; "
                "refused (save plain numeric arrays)"
            ) from None
        raise DataLoadError(f"{path}: {key!r} cannot be read: {exc}") from None


def _check_arrays(data: Dataset) -> None:
    for key, array in [*zip(data.keys, data.inputs, strict=True), ("y", data.y)]:
        if array.ndim == 0:
            raise DataError(
                f"{data.path}: {key!r} is a scalar; expected one row per example "
                "(shape (N, ...))"
            )
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or (
            np.issubdtype(array.dtype, np.complexfloating)
        ):
            raise DataError(f"{data.path}: {key!r} has dtype {array.dtype}; expected numbers")
        if np.issubdtype(array.dtype, np.floating):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise DataError(f"{data.path}: {key!r} has {bad} NaN or inf values")
    rows = data.rows
    if rows == 0:
        raise DataError(f"{data.path}: 'y' has no rows")
    for key, array in zip(data.keys, data.inputs, strict=True):
        if array.shape[0] != rows:
            raise DataError(
                f"{data.path}: {key!r} has {array.shape[0]} rows but 'y' has {rows}"
            )


def _matches(shape: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )


def check_inputs(data: Dataset, specs: Sequence[TensorSpec], label: str) -> None:
    """Check that the data's inputs fit a model's inputs (count and shapes).

    Args:
        data: The data file.
        specs: The model's input specs (batch dimension excluded).
        label: How to name the model in messages.

    Raises:
        DataError: Naming the model, the key, the expected and the found shape.
    """
    if len(specs) != len(data.inputs):
        wanted = "'x'" if len(specs) == 1 else f"'x0' ... 'x{len(specs) - 1}'"
        raise DataError(
            f"{label} takes {len(specs)} input{'s' if len(specs) != 1 else ''}, but "
            f"{data.name} has {len(data.inputs)} ({', '.join(data.keys)}); give {wanted}"
        )
    for spec, key, array in zip(specs, data.keys, data.inputs, strict=True):
        if not _matches(array.shape[1:], spec.shape):
            raise DataError(
                f"{label}: input expects shape {spec}, but {key!r} in {data.name} has "
                f"shape {shape_text(array.shape, batch=False)}"
            )


def class_labels(data: Dataset, output_shape: Shape, label: str) -> np.ndarray:
    """The labels as class indices shaped like the model's output without its class axis.

    Args:
        data: The data file.
        output_shape: The model's output shape without the batch dimension; its last
            axis holds the classes (1 for a single sigmoid column).
        label: How to name the model in messages.

    Returns:
        int64 class indices of shape `(N, *output_shape[:-1])`.

    Raises:
        DataError: The labels do not fit the output, or are not valid class indices
            or one-hot rows.
    """
    if not output_shape:
        raise DataError(
            f"{label}: output has shape (None,), with no class axis; evaluate and tune "
            "score class probabilities (None, ..., classes)"
        )
    rows, y = data.rows, data.y
    classes = output_shape[-1]
    as_indices = (rows, *output_shape[:-1])
    as_onehot = (rows, *output_shape)
    if _matches(y.shape, as_indices):
        return _indices(data, y, classes, label)
    if classes == 1 and _matches(y.shape, as_onehot):
        return _indices(data, y[..., 0], classes, label)
    if _matches(y.shape, as_onehot):
        return _from_onehot(data, y)
    raise DataError(
        f"{data.name}: 'y' has shape {shape_text(y.shape, batch=False)}; {label} outputs "
        f"{shape_text(output_shape)}, so 'y' should be class indices "
        f"{shape_text(as_indices, batch=False)} or one-hot {shape_text(as_onehot, batch=False)}"
    )


def _indices(data: Dataset, y: np.ndarray, classes: int | None, label: str) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        fractional = np.flatnonzero(y.ravel() != np.floor(y.ravel()))
        if fractional.size:
            value = y.ravel()[fractional[0]]
            raise DataError(
                f"{data.name}: 'y' holds {value:g}, which is not a class index "
                "(expected integers, or one-hot rows)"
            )
    indices = y.astype(np.int64)
    low, high = int(indices.min()), int(indices.max())
    if low < 0:
        raise DataError(f"{data.name}: 'y' holds class index {low}; expected indices >= 0")
    if classes is not None and high >= max(classes, 2):
        expected = "0 or 1 for a single sigmoid column" if classes == 1 else f"0 to {classes - 1}"
        raise DataError(
            f"{data.name}: 'y' holds class index {high}, but {label} outputs {classes} "
            f"class{'es' if classes > 1 else ''} (expected {expected})"
        )
    return indices


def _from_onehot(data: Dataset, y: np.ndarray) -> np.ndarray:
    ones = y == 1
    valid = (ones | (y == 0)).all(axis=-1) & (ones.sum(axis=-1) == 1)
    if not valid.all():
        where = np.argwhere(~valid)[0]
        raise DataError(
            f"{data.name}: 'y' is shaped as one-hot, but row {int(where[0])} is not "
            "(expected 0s and exactly one 1)"
        )
    return np.argmax(y, axis=-1).astype(np.int64)


def split_rows(
    labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split row numbers into a part to fit on and a held-out part.

    Rows are shuffled with a fixed seed. With one label per row, the split is
    stratified: rows are grouped by class before every k-th one is held out, so each
    class keeps its share (to within one row) in both parts.

    Args:
        labels: Class indices, one row per example (`(N,)` or `(N, ...)`).
        fraction: The held-out share, `0 <= fraction < 1`; 0 holds nothing out.
        seed: The shuffling seed.

    Returns:
        `(fit_rows, heldout_rows)`, each sorted.

    Raises:
        DataError: Too few rows to leave at least one in each part.
    """
    rows = labels.shape[0]
    if fraction <= 0:
        return np.arange(rows), np.arange(0)
    if rows < 2:
        raise DataError(
            f"--holdout {fraction:g} needs at least 2 rows of data; got {rows} "
            "(use --holdout 0 to fit on everything)"
        )
    held = min(max(round(fraction * rows), 1), rows - 1)
    order = np.random.default_rng(seed).permutation(rows)
    if labels.ndim == 1:
        order = order[np.argsort(labels[order], kind="stable")]
    picked = np.zeros(rows, dtype=bool)
    picked[order[(np.arange(held) * rows) // held]] = True
    return np.flatnonzero(~picked), np.flatnonzero(picked)


def stratified_folds(labels: np.ndarray, k: int, seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Split row numbers into `k` folds for cross-validation.

    Rows are shuffled with a fixed seed, then (with one label per row) grouped by
    class, and dealt to the folds in turn: every fold gets each class's share to within
    one row, and the folds' sizes differ by at most one.

    Args:
        labels: Class indices, one row per example (`(N,)` or `(N, ...)`).
        k: The number of folds, `2 <= k <= N`.
        seed: The shuffling seed.

    Returns:
        `k` sorted arrays of row numbers, disjoint, covering every row.

    Raises:
        DataError: Fewer rows than folds.
    """
    rows = labels.shape[0]
    if rows < k:
        raise DataError(f"--cv {k} needs at least {k} rows to fit on; got {rows}")
    order = np.random.default_rng(seed).permutation(rows)
    if labels.ndim == 1:
        order = order[np.argsort(labels[order], kind="stable")]
    fold_of = np.empty(rows, dtype=np.int64)
    fold_of[order] = np.arange(rows) % k
    return [np.flatnonzero(fold_of == f) for f in range(k)]
