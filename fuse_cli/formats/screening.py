"""The checks every model file passes before Keras sees it. No Keras import here.

Model files are programs. fuse decides a file's format by its first bytes, not its
name, and refuses anything a Keras model file does not need: zip members Keras does not
write, names that climb out of the archive, links, sizes past a cap, HDF5 links and
storage that reach other files, and configs that name modules outside Keras or call
loading gadgets. This module needs only the standard library and h5py, so it can be
tested and fuzzed without Keras or TensorFlow.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fuse_cli.errors import FuseError, ModelLoadError, first_line

if TYPE_CHECKING:
    import h5py

Format = Literal["keras", "h5"]

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock: the signature may sit at 0, 512,
# 1024, 2048, ... (HDF5 spec, "Format Signature").
HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)
HEAD_BYTES = 8200  # enough to see an HDF5 signature at its last allowed offset
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # Path() folds "://" to ":/"

# What a `.keras` archive written by Keras 3 contains (saving_lib.py).
KERAS_MEMBERS = frozenset({"config.json", "metadata.json", "model.weights.h5", "model.weights.npz"})
KERAS_ASSETS = "assets/"
MAX_CONFIG_BYTES = 64 * 1024**2
MAX_MEMBER_BYTES = 16 * 1024**3
MAX_RATIO = 1000  # declared size / compressed size; zip bombs reach millions
IN_MEMORY_BYTES = 1024**3  # archived weights up to this size are checked in memory

# Modules a Keras model config may name. Anything else (`os`, `builtins`, `subprocess`,
# a user's package) is either code fuse cannot vouch for or a layer it cannot build.
# Keras 2 files name tf_keras's / keras.src's own classes (`Functional`), which Keras 3
# maps to its own and never imports.
ALLOWED_MODULE = re.compile(r"^(keras|tf_keras|fuse_cli\.layers)(\..*)?$")
# Functions that Keras itself exposes but that a model config has no business calling:
# the gadgets of CVE-2025-8747 (get_file writes files) and CVE-2025-9906 (turning
# safe mode off from inside a config).
GADGETS = frozenset(
    {"enable_unsafe_deserialization", "get_file", "load_model", "load_weights", "save_model"}
)


# --- the file itself --------------------------------------------------------------------


def check_model_path(path: Path) -> None:
    """Check that `path` names a regular, readable local file.

    Raises:
        ModelLoadError: The path is URL-like, missing, not a regular file or unreadable.
    """
    if _URL_LIKE.match(str(path)):
        raise ModelLoadError(f"{path}: remote locations are not loaded; download the file first")
    check_regular_file(path, ModelLoadError, "a model file")


def check_regular_file(path: Path, error: type[FuseError], kind: str) -> None:
    """Check that `path` is an existing, readable regular file.

    Args:
        path: The file.
        error: The error to raise (its exit code is the caller's).
        kind: What the file should be, for the message (`"a model file"`).

    Raises:
        error: Missing, a directory or device, or unreadable.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory, not {kind}")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: permission denied")


def sniff_format(head: bytes, path: Path) -> Format:
    """Decide the format from the file's first bytes.

    Args:
        head: At least the first `HEAD_BYTES` bytes of the file (fewer if it is shorter).
        path: The file, for messages.

    Raises:
        ModelLoadError: Neither a zip archive nor an HDF5 file.
    """
    if not head:
        raise ModelLoadError(f"{path}: empty file")
    if head.startswith(ZIP_MAGIC):
        return "keras"
    if any(head[offset : offset + 8] == HDF5_MAGIC for offset in HDF5_OFFSETS):
        return "h5"
    raise ModelLoadError(f"{path}: not a Keras model (neither a .keras zip archive nor HDF5)")


# --- .keras archives ----------------------------------------------------------------------


def check_keras_archive(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse archives that hold anything a `.keras` file does not.

    Checks member names (no absolute paths, no `..`, only the files Keras writes),
    links, and declared sizes, before anything is extracted.

    Raises:
        ModelLoadError: Naming the offending member.
    """
    names = set()
    for info in zf.infolist():
        name = info.filename
        names.add(name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise ModelLoadError(f"{path}: archive member {name!r} has an absolute path")
        if ".." in re.split(r"[/\\]", name):
            raise ModelLoadError(f"{path}: archive member {name!r} climbs out with '..'")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ModelLoadError(f"{path}: archive member {name!r} is a link")
        if name not in KERAS_MEMBERS and not name.startswith(KERAS_ASSETS):
            raise ModelLoadError(f"{path}: unexpected archive member {name!r}")
        limit = MAX_CONFIG_BYTES if name.endswith(".json") else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise ModelLoadError(
                f"{path}: archive member {name!r} declares {info.file_size} bytes (limit {limit})"
            )
        if info.compress_size and info.file_size > MAX_RATIO * info.compress_size + 4096:
            raise ModelLoadError(
                f"{path}: archive member {name!r} expands {info.file_size} bytes from "
                f"{info.compress_size}: refused as a zip bomb"
            )
    if "config.json" not in names:
        raise ModelLoadError(f"{path}: .keras archive has no config.json")
    if not names & {"model.weights.h5", "model.weights.npz"}:
        raise ModelLoadError(f"{path}: .keras archive has no weights (model.weights.h5)")


def check_archive_weights(zf: zipfile.ZipFile, path: Path) -> None:
    """Apply the HDF5 link checks to the weights file inside a `.keras` archive.

    Raises:
        ModelLoadError: A refused link or storage, or weights h5py cannot read.
    """
    if "model.weights.h5" not in zf.namelist():
        return
    import h5py

    # h5py seeks back and forth, and a zip member stream re-reads from its start on every
    # backward seek (1.4 s for a 28 MB file): read the weights once, as Keras does.
    in_memory = zf.getinfo("model.weights.h5").file_size <= IN_MEMORY_BYTES
    with zf.open("model.weights.h5") as inner:
        try:
            with h5py.File(io.BytesIO(inner.read()) if in_memory else inner, "r") as h5:
                check_hdf5_links(h5, path, "model.weights.h5:")
        except ModelLoadError:
            raise
        except Exception as exc:  # h5py raises OSError, KeyError, ValueError... on corrupt data
            raise ModelLoadError(
                f"{path}: corrupt weights in archive: {first_line(exc)}"
            ) from None


# --- configs ------------------------------------------------------------------------------


def check_config(config: dict[str, Any], path: Path) -> None:
    """Refuse model configs that name modules or functions outside Keras's layers.

    Keras 3.15.1 refuses these too (CVE-2025-1550, -8747, -9906); fuse checks first,
    so the refusal does not depend on the installed Keras alone, and says why.

    Raises:
        ModelLoadError: Naming the module or function.
    """
    for node in _dicts(config):
        module = node.get("module")
        class_name = node.get("class_name")
        # `module` names where a class or function lives only beside `class_name`; in
        # a Keras 2 Lambda config it is the module the lambda was written in.
        if "class_name" in node and isinstance(module, str) and not ALLOWED_MODULE.match(module):
            raise ModelLoadError(
                f"{path}: config refers to {module}.{class_name}, outside Keras: refused"
            )
        for key in ("class_name", "config", "registered_name"):
            value = node.get(key)
            if isinstance(value, str) and re.split(r"[.>]", value)[-1] in GADGETS:
                raise ModelLoadError(f"{path}: config calls {value!r}, a loading gadget: refused")


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# --- HDF5 -----------------------------------------------------------------------------------


def check_hdf5(h5: h5py.File, path: Path) -> None:
    """Refuse HDF5 files that are not models or that reach outside themselves.

    Raises:
        ModelLoadError: No model config, or a link/storage outside the file.
    """
    if "model_config" not in h5.attrs:
        raise ModelLoadError(
            f"{path}: HDF5 file holds no model_config: weights only, or not a model"
        )
    check_hdf5_links(h5, path)


def check_hdf5_links(h5: h5py.Group, path: Path, where: str = "") -> None:
    """Refuse links and storage that make HDF5 read other files (CVE-2026-1669).

    External links, soft links, external raw storage and virtual datasets can make
    h5py read any file on the machine; a model never needs them.

    Raises:
        ModelLoadError: Naming the object and what it is.
    """
    import h5py

    def visit(group: h5py.Group, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            at = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise ModelLoadError(f"{path}: HDF5 external link at {at} is refused")
            if isinstance(link, h5py.SoftLink):
                raise ModelLoadError(f"{path}: HDF5 soft link at {at} is refused")
            item = group.get(name)
            if isinstance(item, h5py.Dataset):
                if item.external:
                    raise ModelLoadError(f"{path}: HDF5 dataset {at} uses external storage")
                if item.is_virtual:
                    raise ModelLoadError(f"{path}: HDF5 dataset {at} is a virtual dataset")
            elif isinstance(item, h5py.Group):
                visit(item, at)

    visit(h5, where)


def attr_text(value: Any) -> str | None:
    """An HDF5 attribute as text (h5py gives bytes or str), or None if absent."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
