"""`.keras` archives: screened member by member, then loaded from the same open file."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fuse_cli.errors import ModelLoadError
from fuse_cli.formats import _keras_private
from fuse_cli.formats.failures import keras_errors
from fuse_cli.formats.screening import (
    PROVENANCE_MEMBER,
    check_archive_weights,
    check_config,
    check_keras_archive,
    file_size,
    parse_config,
)

if TYPE_CHECKING:
    import keras


def load_keras_zip(
    f: IO[bytes], path: Path, *, unsafe: bool
) -> tuple[keras.Model, str | None, list[str], Any]:
    """Check a `.keras` archive and load it with `compile=False`.

    Returns:
        The model, the writer's Keras version (if recorded), no migrations, and the
        provenance record fuse keeps beside a merged model (`fuse.json`), or None.

    Raises:
        ModelLoadError: A refused or corrupt archive, or one Keras cannot load.
    """
    stored = file_size(f)
    try:
        with zipfile.ZipFile(f) as zf:
            check_keras_archive(zf, path, stored)
            check_archive_weights(zf, path, stored)
            try:
                metadata = _read_json_member(zf, "metadata.json", path)
            except ModelLoadError:
                metadata = None  # only the writer's version is read from it, if it parses
            config = _read_json_member(zf, "config.json", path)
            record = _read_json_member(zf, PROVENANCE_MEMBER, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise ModelLoadError(f"{path}: corrupt .keras archive: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config.json is not a JSON object: not a Keras model")
    check_config(config, path)
    f.seek(0)
    with keras_errors(path):
        model = _keras_private.load_keras_archive(f, safe_mode=not unsafe)
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return model, version if isinstance(version, str) else None, [], record


def _read_json_member(zf: zipfile.ZipFile, name: str, path: Path) -> Any:
    if name not in zf.namelist():
        return None
    return parse_config(zf.read(name), path, name)
