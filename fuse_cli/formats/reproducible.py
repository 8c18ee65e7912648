"""Reproducible model files: the same model and record give the same bytes.

Keras's `.keras` archive carries the save time (`metadata.json`'s `date_saved` and the
zip entries' times) and Python object ids (`shared_object_id` in `config.json`); two
saves of one model differ. `rewrite_keras_archive` rewrites the archive fuse just saved,
with the time taken from `SOURCE_DATE_EPOCH` (reproducible-builds.org's convention) or,
unset, a fixed epoch (1980-01-01, the zip format's first day), every entry's time and
attributes fixed, the shared-object ids numbered in order of appearance, and fuse's
provenance record (`fuse.json`) last. The entries keep Keras's order, names and
compression. Keras's `.h5` files already hold no time: h5py records none by default.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from fuse_cli.errors import UsageError

ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip entry can carry
_DATE_SAVED = "%Y-%m-%d@%H:%M:%S"  # Keras's format for metadata.json's date_saved
_ID = "shared_object_id"


def build_epoch() -> int:
    """`SOURCE_DATE_EPOCH` if set (seconds since 1970, UTC), else `ZIP_EPOCH`.

    Raises:
        UsageError: A value that is not a whole number of seconds.
    """
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None or not text.strip():
        return ZIP_EPOCH
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={text!r}: not a whole number of seconds") from None
    if value < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH={text!r}: must be 0 or more")
    return value


def rewrite_keras_archive(path: Path, record: dict[str, Any] | None) -> None:
    """Rewrite the `.keras` archive at `path` in place, reproducibly (see the module's
    docstring), with `record` as `fuse.json` if given."""
    from fuse_cli.formats.screening import PROVENANCE_MEMBER

    epoch = build_epoch()
    stamp = time.gmtime(max(epoch, ZIP_EPOCH))[:6]
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info.filename)) for info in zf.infolist()
                   if info.filename != PROVENANCE_MEMBER]
    if record is not None:
        text = json.dumps(record, sort_keys=True, allow_nan=False).encode()
        entries.append((zipfile.ZipInfo(PROVENANCE_MEMBER), text))
    with zipfile.ZipFile(path, "w") as out:  # `path` is publish's temporary: rewritten whole
        for old, data in entries:
            info = zipfile.ZipInfo(old.filename, date_time=stamp)
            info.compress_type = old.compress_type
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever machine wrote it
            out.writestr(info, _normalized(old.filename, data, epoch))


def _normalized(name: str, data: bytes, epoch: int) -> bytes:
    if name == "metadata.json":
        metadata = json.loads(data)
        if isinstance(metadata, dict) and "date_saved" in metadata:
            metadata["date_saved"] = time.strftime(_DATE_SAVED, time.gmtime(epoch))
        return json.dumps(metadata).encode()
    if name == "config.json":
        return json.dumps(_renumbered(json.loads(data))).encode()
    return data


def _renumbered(config: Any) -> Any:
    """The config with every `shared_object_id` (a Python `id()` at save time) replaced
    by its order of first appearance: the same sharing, the same text every save."""
    numbers: dict[Any, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key == _ID and isinstance(item, int):
                    out[key] = numbers.setdefault(item, len(numbers) + 1)
                else:
                    out[key] = walk(item)
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(config)
