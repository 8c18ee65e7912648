"""Saved predictions: each model's outputs on labelled data, with the labels and provenance.

`fuse evaluate ... --save-predictions P.npz` writes them; `fuse tune --predictions P.npz`
searches the weights from them without running the members again. Anything can write
the file (another machine, another engine), as long as it follows the format, an .npz
archive readable with `allow_pickle=False`:

- `y`: int64 class indices `(N,)` (or `(N, ...)` for outputs with more axes).
- `p0`, `p1`, ...: float32 outputs of model 0, 1, ..., each `(N, ..., C)`, in the
  order the models were named.
- `files`: the models' file names, a string array `(K,)`.
- `sha256`: the models' SHA-256 digests (64 lowercase hex digits), a string array `(K,)`.
- `format` (optional): `"fuse-predictions/1"`; `classes` (optional): class names `(C,)`;
  `data` (optional): what the predictions were made on.

`fuse tune` refuses a file whose `sha256` differ from the model files it is given (in
order): the weights would belong to other models.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse_cli.data import check_npz_file
from fuse_cli.errors import DataError, DataLoadError
from fuse_cli.files import publish

FORMAT = "fuse-predictions/1"
_OUTPUT_KEY = re.compile(r"^p(0|[1-9][0-9]*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Predictions:
    """Each model's outputs on the same rows, the labels, and where they came from."""

    path: Path | None
    y: np.ndarray
    outputs: list[np.ndarray]
    files: list[str]
    sha256: list[str]
    classes: list[str] | None = None
    data: str | None = None

    @property
    def rows(self) -> int:
        """The number of rows."""
        return int(self.y.shape[0])

    @property
    def name(self) -> str:
        """The file name, for messages."""
        return self.path.name if self.path else "predictions"


def save_predictions(predictions: Predictions, out: Path, *, replace: bool = True) -> int:
    """Write the predictions to `out` through `fuse_cli.files.publish`.

    Returns:
        The size written, in bytes.

    Raises:
        OutputError: The file cannot be written.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "y": np.asarray(predictions.y, dtype=np.int64),
        "files": np.array(predictions.files, dtype=str),
        "sha256": np.array(predictions.sha256, dtype=str),
    }
    for i, output in enumerate(predictions.outputs):
        arrays[f"p{i}"] = np.asarray(output, dtype=np.float32)
    if predictions.classes is not None:
        arrays["classes"] = np.array(predictions.classes, dtype=str)
    if predictions.data is not None:
        arrays["data"] = np.array(predictions.data)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, **arrays)  # type: ignore[arg-type]

    return publish(out, write, label=f"--save-predictions {out}", replace=replace)


def read_predictions(path: str | Path) -> Predictions:
    """Read and check a predictions file (see the module docstring for the format).

    Raises:
        DataLoadError: The file is missing, unreadable, not an .npz archive, or pickled.
        DataError: Missing or malformed keys, shapes that disagree, bad labels or digests.
    """
    path = Path(path)
    check_npz_file(path, kind="a predictions .npz file",
                   expected="'y', 'p0', 'p1', ..., 'files' and 'sha256'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            numbered = sorted(int(m.group(1)) for n in names if (m := _OUTPUT_KEY.match(n)))
            missing = [k for k in ("y", "files", "sha256") if k not in names]
            if missing or not numbered:
                found = ", ".join(repr(n) for n in sorted(names)) or "nothing"
                need = [*missing, *([] if numbered else ["p0"])]
                raise DataError(
                    f"{path}: no {', '.join(repr(k) for k in need)}; a predictions file holds "
                    f"'y', 'p0', 'p1', ..., 'files' and 'sha256'; found {found}"
                )
            if numbered != list(range(len(numbered))):
                raise DataError(f"{path}: has {', '.join(f'p{i}' for i in numbered)}: "
                                "expected p0, p1, ... with none missing")
            y = np.asarray(npz["y"])
            outputs = [np.asarray(npz[f"p{i}"]) for i in numbered]
            files = _strings(npz["files"], "files", path)
            digests = _strings(npz["sha256"], "sha256", path)
            classes = _strings(npz["classes"], "classes", path) if "classes" in names else None
            data = str(npz["data"]) if "data" in names else None
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataLoadError(f"{path}: holds pickled Python objects, which could run code; "
                                "refused") from None
        raise DataLoadError(f"{path}: cannot be read: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataLoadError(f"{path}: not a readable .npz archive: {exc}") from None
    predictions = Predictions(path, y, outputs, files, digests, classes, data)
    _check(predictions)
    return predictions


def _strings(array: np.ndarray, key: str, path: Path) -> list[str]:
    if array.dtype.kind != "U" or array.ndim != 1:
        raise DataError(f"{path}: {key!r} must be a 1-D string array; got {array.dtype} "
                        f"of shape {array.shape}")
    return [str(s) for s in array]


def _check(p: Predictions) -> None:
    path = p.path
    count = len(p.outputs)
    if len(p.files) != count or len(p.sha256) != count:
        raise DataError(f"{path}: {count} prediction arrays but {len(p.files)} 'files' and "
                        f"{len(p.sha256)} 'sha256'")
    for digest in p.sha256:
        if not _SHA256.match(digest):
            raise DataError(f"{path}: 'sha256' holds {digest[:80]!r}, not 64 lowercase hex digits")
    if p.y.ndim == 0 or p.rows == 0:
        raise DataError(f"{path}: 'y' must hold one label per row; got shape {p.y.shape}")
    if not np.issubdtype(p.y.dtype, np.integer):
        raise DataError(f"{path}: 'y' has dtype {p.y.dtype}; expected integer class indices")
    for i, output in enumerate(p.outputs):
        if not np.issubdtype(output.dtype, np.floating):
            raise DataError(f"{path}: 'p{i}' has dtype {output.dtype}; expected floats")
        if output.shape != p.outputs[0].shape:
            raise DataError(f"{path}: 'p{i}' has shape {output.shape} but 'p0' has "
                            f"{p.outputs[0].shape}")
        if output.shape[:-1] != p.y.shape:
            raise DataError(f"{path}: 'p{i}' has shape {output.shape}; with 'y' of shape "
                            f"{p.y.shape} it should be {(*p.y.shape, 'classes')}")
        bad = int(output.size - np.count_nonzero(np.isfinite(output)))
        if bad:
            raise DataError(f"{path}: 'p{i}' has {bad} NaN or inf values")
    classes = p.outputs[0].shape[-1]
    low, high = int(p.y.min()), int(p.y.max())
    if low < 0 or high >= max(classes, 2):
        raise DataError(f"{path}: 'y' holds class index {low if low < 0 else high}; the "
                        f"outputs have {classes} classes")


def check_provenance(p: Predictions, names: Sequence[str], digests: Sequence[str]) -> None:
    """Refuse predictions that were not made by these model files, in this order.

    Raises:
        DataError: Another number of models, or a SHA-256 that differs (exit 2).
    """
    if len(digests) != len(p.sha256):
        raise DataError(f"{p.name}: holds predictions of {len(p.sha256)} models "
                        f"({', '.join(p.files)}), but {len(digests)} were given")
    reordered = sorted(digests) == sorted(p.sha256)
    for i, (name, digest) in enumerate(zip(names, digests, strict=True)):
        if digest != p.sha256[i]:
            advice = (f"the file holds these models in another order ({', '.join(p.files)}): "
                      "give the models in the order they were saved" if reordered else
                      "these predictions are not this model's; run fuse evaluate "
                      "--save-predictions again")
            raise DataError(
                f"{p.name}: 'p{i}' was made by {p.files[i]} (sha256 {p.sha256[i][:12]}...), "
                f"but {name} has sha256 {digest[:12]}...: {advice}"
            )
