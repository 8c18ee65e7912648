"""Reading model files: one `load_model` over the per-format readers.

Model files are programs. Every file is checked before Keras sees it (`screening`: a
regular file, a format decided by its first bytes, not its name, a zip archive holding
only what a `.keras` archive holds, an HDF5 file without links or storage outside
itself, a config naming only Keras). Keras then loads it with `compile=False` and safe
mode on, from the same open file that was checked (`keras_zip`, `hdf5`); legacy files
go through the rewrite rules of `legacy_rules`. Every failure is one `ModelLoadError`
(exit 3) naming the file, classified in one place (`failures`). Private Keras symbols
are used only through `_keras_private`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fuse_cli.errors import ModelLoadError, UsageError
from fuse_cli.formats._keras_private import cache_keras_skipsets, variable_budget
from fuse_cli.formats.hdf5 import load_hdf5
from fuse_cli.formats.keras_zip import load_keras_zip
from fuse_cli.formats.reproducible import rewrite_keras_archive
from fuse_cli.formats.screening import (
    HEAD_BYTES,
    PROVENANCE_ATTRIBUTE,
    Format,
    allowance,
    check_model_path,
    size_text,
    sniff_format,
)
from fuse_cli.report import Progress

if TYPE_CHECKING:
    import keras

MIN_KERAS = (3, 15, 1)


__all__ = [
    "MIN_KERAS",
    "LoadedModel",
    "cache_keras_skipsets",
    "check_keras",
    "check_model_path",
    "load_model",
    "load_models",
    "save_model",
    "sha256_of",
]


@dataclass
class LoadedModel:
    """A member model and what fuse learned while loading it.

    Attributes:
        path: The file as the user named it.
        model: The Keras model.
        format: `"keras"` (zip archive) or `"h5"` (legacy HDF5), decided by content.
        sha256: Hex digest of the file's bytes.
        size: The file's size in bytes.
        keras_version: The Keras version that wrote the file, when recorded.
        migrations: Legacy rewrite rules applied to load the file.
        provenance: The record fuse keeps beside a merged model (raw data from the
            file, read through `fuse_cli.provenance`), or None.
    """

    path: Path
    model: keras.Model
    format: Format
    sha256: str
    size: int
    keras_version: str | None = None
    migrations: list[str] = field(default_factory=list)
    provenance: dict[str, Any] | None = None


def check_keras() -> None:
    """Make sure Keras 3 at a release with the known loading CVEs fixed is in use.

    Raises:
        UsageError: Legacy Keras is selected or the installed Keras is too old.
    """
    if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in {"1", "true", "yes"}:
        raise UsageError(
            "TF_USE_LEGACY_KERAS is set: fuse needs Keras 3; unset it "
            "(e.g. `env -u TF_USE_LEGACY_KERAS fuse ...`)"
        )
    import keras
    from packaging.version import InvalidVersion, Version

    floor = ".".join(map(str, MIN_KERAS))
    try:
        too_old = Version(keras.__version__).release < MIN_KERAS
    except InvalidVersion:
        too_old = True
    if too_old:
        raise UsageError(
            f"Keras {keras.__version__} is installed; fuse needs keras>={floor} "
            f"(pip install 'keras>={floor}')"
        )


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return _sha256_of_open(f)


def _sha256_of_open(f: IO[bytes]) -> str:
    f.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def load_model(path: Path, *, unsafe: bool = False) -> LoadedModel:
    """Check and load one model file with `compile=False`.

    Args:
        path: The model file (`.keras` archive or legacy HDF5, whatever its name).
        unsafe: Turn Keras's safe mode off, allowing code-carrying layers such as
            `Lambda`. Only for files the user trusts.

    Returns:
        The loaded model with its provenance.

    Raises:
        ModelLoadError: The file is missing, unreadable, corrupt, not a model, or
            carries content that safe mode refuses.
    """
    check_model_path(path)
    cache_keras_skipsets()
    # A merged file refers to fuse's registered layers: the loader registers them.
    import fuse_cli.layers  # noqa: F401
    try:
        with open(path, "rb") as f:
            fmt = sniff_format(f.read(HEAD_BYTES), path)
            f.seek(0)
            reader = load_keras_zip if fmt == "keras" else load_hdf5
            stored = os.fstat(f.fileno()).st_size
            with variable_budget(allowance(stored), _too_large(path, stored)) as budget:
                try:
                    model, version, migrations, record = reader(f, path, unsafe=unsafe)
                except ModelLoadError:
                    # Keras wraps what a layer's build raised in its own error: the
                    # budget's refusal is the reason, whatever Keras made of it.
                    if budget.refused is not None:
                        raise budget.refused from None
                    raise
                if budget.refused is not None:  # refused, caught and ignored inside Keras
                    raise budget.refused
            # The digest of the bytes that were checked and loaded, from the same open file.
            digest = _sha256_of_open(f)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    import keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a model")
    if not model.inputs:
        raise ModelLoadError(f"{path}: the model has no defined inputs (was it ever built?)")
    return LoadedModel(
        path=path,
        model=model,
        format=fmt,
        sha256=digest,
        size=stored,
        keras_version=version,
        migrations=migrations,
        provenance=record if isinstance(record, dict) else None,
    )


def _too_large(path: Path, stored: int) -> Callable[[int, int], Exception]:
    def refuse(used: int, limit: int) -> Exception:
        return ModelLoadError(
            f"{path}: its config declares weights of {size_text(used)} or more, from a file "
            f"of {size_text(stored)}: too large (limit {size_text(limit)})"
        )

    return refuse


def save_model(
    model: keras.Model,
    out: Path,
    check: Callable[[Path], object] | None = None,
    *,
    replace: bool = True,
    provenance: dict[str, Any] | None = None,
) -> int:
    """Save `model` to `out` through `fuse_cli.files.publish` (checked before it lands).

    The format follows OUT's extension, decided here once: `.keras` writes the native
    zip archive, `.h5`/`.hdf5` legacy HDF5. `provenance` is kept beside the model, where
    Keras never reads it: the archive member `fuse.json`, or the HDF5 root attribute
    `fuse_provenance` (JSON).

    Returns:
        The size of the written file in bytes.
    """
    import warnings

    from fuse_cli.files import publish

    def write(tmp: Path) -> None:
        cache_keras_skipsets()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(tmp)
        if suffix == ".keras":  # the same model and record: the same bytes
            rewrite_keras_archive(tmp, provenance)
        elif provenance is not None:
            _write_provenance(tmp, provenance)

    suffix = ".keras" if out.suffix.lower() == ".keras" else ".h5"
    return publish(out, write, check=check, suffix=suffix, replace=replace)


def _write_provenance(tmp: Path, record: dict[str, Any]) -> None:
    """An `.h5` file's record, as its root attribute `fuse_provenance`."""
    import json

    import h5py

    text = json.dumps(record, sort_keys=True, allow_nan=False)

    with h5py.File(tmp, "a") as h5:
        h5.attrs[PROVENANCE_ATTRIBUTE] = text


def read_record(path: Path) -> dict[str, Any] | None:
    """The provenance record fuse keeps beside a model, read without loading the model:
    a `.keras` archive's `fuse.json` (the archive screened first), an HDF5 file's root
    attribute `fuse_provenance`. None if there is none or it is not a JSON object.

    Raises:
        ModelLoadError: Not a model file, or a record past the config size cap.
    """
    import zipfile

    from fuse_cli.formats.screening import (
        PROVENANCE_MEMBER,
        attr_text,
        check_keras_archive,
        parse_config,
    )

    check_model_path(path)
    with path.open("rb") as f:
        kind = sniff_format(f.read(HEAD_BYTES), path)
        f.seek(0)
        try:
            if kind == "keras":
                with zipfile.ZipFile(f) as zf:
                    check_keras_archive(zf, path, stored=os.fstat(f.fileno()).st_size)
                    names = zf.namelist()
                    found = (parse_config(zf.read(PROVENANCE_MEMBER), path, PROVENANCE_MEMBER)
                             if PROVENANCE_MEMBER in names else None)
            else:
                import h5py

                with h5py.File(f, "r") as h5:
                    text = attr_text(h5.attrs.get(PROVENANCE_ATTRIBUTE))
                    found = (parse_config(text, path, PROVENANCE_ATTRIBUTE)
                             if text is not None else None)
        except ModelLoadError:
            raise
        except Exception as exc:  # zipfile, h5py on corrupt structures
            raise ModelLoadError(f"{path}: cannot read its record: {exc}") from None
    return found if isinstance(found, dict) else None


def load_models(
    paths: Sequence[Path], *, unsafe: bool = False, progress: Progress | None = None
) -> list[LoadedModel]:
    """Check every path and the Keras install first, then load each file in order.

    Raises:
        ModelLoadError: The first file that cannot be loaded.
    """
    for path in paths:
        check_model_path(path)
    check_keras()
    say = progress or (lambda _message: None)
    loaded = []
    for path in paths:
        say(f"loading {path}")
        loaded.append(load_model(path, unsafe=unsafe))
    return loaded
