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
import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from fuse_cli.errors import FuseError, ModelLoadError, first_line
from fuse_cli.formats.config_costs import check_config_costs

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
# What fuse adds beside a merged model: its provenance record, JSON (`fuse_cli.provenance`);
# in a legacy `.h5`, the root attribute of that name. Keras ignores both.
PROVENANCE_MEMBER = "fuse.json"
PROVENANCE_ATTRIBUTE = "fuse_provenance"
KERAS_ASSETS = "assets/"
MiB = 1024**2
# A file costs what it stores (DESIGN §4): what a file makes fuse allocate, extract or
# parse is bounded by a fixed margin plus a small multiple of the bytes it really holds.
# Keras writes weights uncompressed, so a real model declares about what it stores.
MARGIN_BYTES = 256 * MiB
STORED_FACTOR = 4
MAX_CONFIG_BYTES = 16 * MiB  # the largest Keras configs seen are a few MB
MAX_CONFIG_DEPTH = 128  # nesting of a config's lists and dicts; Keras's own stay below 40
MAX_MEMBER_BYTES = 16 * 1024**3
MAX_RATIO = 1000  # declared size / compressed size; zip bombs reach millions
IN_MEMORY_BYTES = 1024**3  # archived weights up to this size are checked in memory
# A dataset may declare more than it stores (compression, fill values) by this ratio,
# plus this slack; a never-written dataset of any size stores nothing.
MAX_DATASET_RATIO = 1000
DATASET_SLACK = 64 * 1024
# Keras turns each array of a `model.weights.npz` into a Python list: 8-32 bytes an element.
NPZ_ELEMENT_COST = 32

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


def allowance(stored: int) -> int:
    """The bytes a file that stores `stored` bytes may make fuse allocate or extract."""
    return MARGIN_BYTES + STORED_FACTOR * max(0, stored)


def size_text(size: float) -> str:
    """Bytes as a short human figure (`512 MiB`, `3.2 GiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def file_size(f: IO[bytes]) -> int:
    """The size of an open file (its end), leaving its position unchanged."""
    where = f.tell()
    try:
        return f.seek(0, os.SEEK_END)
    finally:
        f.seek(where)


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


def check_keras_archive(zf: zipfile.ZipFile, path: Path, stored: int | None = None) -> None:
    """Refuse archives that hold anything a `.keras` file does not.

    Checks member names (no absolute paths, no `..`, only the files Keras writes),
    links, and declared sizes (each, and all together against the `stored` bytes of
    the archive), before anything is extracted.

    Raises:
        ModelLoadError: Naming the offending member.
    """
    names = set()
    total = 0
    budget = allowance(stored) if stored is not None else None
    for info in zf.infolist():
        name = info.filename
        names.add(name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise ModelLoadError(f"{path}: archive member {name!r} has an absolute path")
        if ".." in re.split(r"[/\\]", name):
            raise ModelLoadError(f"{path}: archive member {name!r} climbs out with '..'")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ModelLoadError(f"{path}: archive member {name!r} is a link")
        if name not in KERAS_MEMBERS and name != PROVENANCE_MEMBER and not name.startswith(
            KERAS_ASSETS
        ):
            if name.endswith(".npy"):
                raise ModelLoadError(
                    f"{path}: holds the array {name!r}: an .npz data file (numpy.savez), not "
                    "a .keras model; data goes to fuse evaluate or tune with --data"
                )
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
        total += info.file_size
        if budget is not None and total > budget:
            raise ModelLoadError(
                f"{path}: archive members declare {size_text(total)} or more, from a file of "
                f"{size_text(stored or 0)}: too large (limit {size_text(budget)})"
            )
    if "config.json" not in names:
        raise ModelLoadError(f"{path}: .keras archive has no config.json")
    if not names & {"model.weights.h5", "model.weights.npz"}:
        raise ModelLoadError(f"{path}: .keras archive has no weights (model.weights.h5)")


def check_archive_weights(zf: zipfile.ZipFile, path: Path, stored: int | None = None) -> None:
    """Apply the HDF5 checks to the weights file inside a `.keras` archive (or the npz
    checks to `model.weights.npz`), against the `stored` bytes of the archive.

    Raises:
        ModelLoadError: A refused link or storage, weights that declare far more than
            the archive stores, or weights h5py cannot read.
    """
    if "model.weights.npz" in zf.namelist():
        check_archive_npz(zf, path, stored)
    if "model.weights.h5" not in zf.namelist():
        return
    import h5py

    # h5py seeks back and forth, and a zip member stream re-reads from its start on every
    # backward seek (1.4 s for a 28 MB file): read the weights once, as Keras does.
    in_memory = zf.getinfo("model.weights.h5").file_size <= IN_MEMORY_BYTES
    with zf.open("model.weights.h5") as inner:
        try:
            with h5py.File(io.BytesIO(inner.read()) if in_memory else inner, "r") as h5:
                check_hdf5_links(h5, path, "model.weights.h5:", stored=stored)
        except ModelLoadError:
            raise
        except Exception as exc:  # h5py raises OSError, KeyError, ValueError... on corrupt data
            raise ModelLoadError(
                f"{path}: corrupt weights in archive: {first_line(exc)}"
            ) from None


def check_archive_npz(zf: zipfile.ZipFile, path: Path, stored: int | None) -> None:
    """Read the headers of `model.weights.npz`'s arrays, allocating none of them.

    Each array must hold what its header declares, and all of them together must fit
    the file's allowance at what Keras spends on an element (it makes Python lists).

    Raises:
        ModelLoadError: A header that lies, or arrays too large for the file.
    """
    budget = allowance(stored) if stored is not None else None
    elements = 0
    try:
        with zf.open("model.weights.npz") as member, zipfile.ZipFile(member) as npz:
            for info in npz.infolist():
                shape, dtype = read_npy_header(npz, info)
                count, itemsize = math.prod(shape), max(1, dtype.itemsize)
                if count * itemsize > info.file_size:
                    raise ModelLoadError(
                        f"{path}: model.weights.npz: {info.filename} declares shape "
                        f"{tuple(shape)} ({size_text(count * itemsize)}) but holds "
                        f"{size_text(info.file_size)}: refused"
                    )
                elements += count
                if budget is not None and elements * NPZ_ELEMENT_COST > budget:
                    raise ModelLoadError(
                        f"{path}: model.weights.npz declares {elements:,} values or more, "
                        f"{size_text(elements * NPZ_ELEMENT_COST)} to load, from a file of "
                        f"{size_text(stored or 0)}: too large (limit {size_text(budget)})"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise ModelLoadError(f"{path}: corrupt model.weights.npz: {first_line(exc)}") from None


def read_npy_header(npz: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[list[int], Any]:
    """The shape and numpy dtype an `.npy` member of an archive declares, from its header.

    Raises:
        ValueError: Not an `.npy` array, or a header numpy cannot read.
    """
    import numpy as np

    with npz.open(info) as f:
        major, _minor = np.lib.format.read_magic(f)
        if major == 1:
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return [int(d) for d in shape], dtype


# --- configs ------------------------------------------------------------------------------


def parse_config(text: str | bytes, path: Path, what: str = "config.json") -> Any:
    """Parse a model config within the size and nesting caps.

    Raises:
        ModelLoadError: Larger than `MAX_CONFIG_BYTES`, nested deeper than Python reads,
            or not JSON.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"{path}: {what} is {size_text(len(text))}: too large (limit "
            f"{size_text(MAX_CONFIG_BYTES)})"
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise ModelLoadError(
            f"{path}: {what} is nested too deeply (limit {MAX_CONFIG_DEPTH} levels)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: {what} is not valid JSON: {first_line(exc)}") from None


def check_config(config: dict[str, Any], path: Path) -> None:
    """Refuse model configs that name modules or functions outside Keras's layers, or
    declare costs they do not store (`config_costs`).

    Keras 3.15.1 refuses these too (CVE-2025-1550, -8747, -9906); fuse checks first,
    so the refusal does not depend on the installed Keras alone, and says why.

    Raises:
        ModelLoadError: Naming the module or function.
    """
    for node in _dicts(config, path):
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
    check_config_costs(config, path)


def _dicts(value: Any, path: Path) -> Iterator[dict[str, Any]]:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ModelLoadError(
                f"{path}: config is nested more than {MAX_CONFIG_DEPTH} levels deep: refused"
            )
        if isinstance(item, dict):
            yield item
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


# --- HDF5 -----------------------------------------------------------------------------------


def check_hdf5(h5: h5py.File, path: Path, stored: int | None = None) -> None:
    """Refuse HDF5 files that are not models, reach outside themselves, or declare far
    more than they store.

    Raises:
        ModelLoadError: No model config, a link/storage outside the file, or datasets
            too large for the `stored` bytes of the file.
    """
    if "model_config" not in h5.attrs:
        raise ModelLoadError(
            f"{path}: HDF5 file holds no model_config: weights only, or not a model"
        )
    check_hdf5_links(h5, path, stored=stored)


def check_hdf5_links(
    h5: h5py.Group, path: Path, where: str = "", *, stored: int | None = None
) -> None:
    """Refuse links and storage that make HDF5 read other files (CVE-2026-1669), and
    datasets that declare far more than they store.

    External links, soft links, external raw storage and virtual datasets can make
    h5py read any file on the machine; a model never needs them. The walk visits each
    link of each group once and each object once (HDF5's own visit, which remembers the
    groups it has seen), so hard links that reach a group twice, or loop back to a
    parent, cost one visit, not one per path.

    Raises:
        ModelLoadError: Naming the object and what it is.
    """
    import h5py

    budget = allowance(stored) if stored is not None else None
    seen: set[int] = set()
    declared = 0

    def visit(name: str, link: Any) -> None:
        nonlocal declared
        at = f"{where}/{name}"
        if isinstance(link, h5py.ExternalLink):
            raise ModelLoadError(f"{path}: HDF5 external link at {at} is refused")
        if isinstance(link, h5py.SoftLink):
            raise ModelLoadError(f"{path}: HDF5 soft link at {at} is refused")
        item = h5.get(name)
        address = h5py.h5o.get_info(item.id).addr
        if address in seen:
            return
        seen.add(address)
        if isinstance(item, h5py.Group):
            check_weight_names(item, path, at)
            return
        if not isinstance(item, h5py.Dataset):
            return
        if item.external:
            raise ModelLoadError(f"{path}: HDF5 dataset {at} uses external storage")
        if item.is_virtual:
            raise ModelLoadError(f"{path}: HDF5 dataset {at} is a virtual dataset")
        size = _declared_bytes(item)
        holds = item.id.get_storage_size()
        if size > MAX_DATASET_RATIO * holds + DATASET_SLACK:
            raise ModelLoadError(
                f"{path}: HDF5 dataset {at} declares {size_text(size)} (shape "
                f"{item.shape}) but stores {size_text(holds)}: refused"
            )
        declared += size
        if budget is not None and declared > budget:
            raise ModelLoadError(
                f"{path}: HDF5 datasets declare {size_text(declared)} or more, from a file "
                f"of {size_text(stored or 0)}: too large (limit {size_text(budget)})"
            )

    def visit_once(name: str, link: Any) -> ModelLoadError | None:
        # h5py cannot pass an exception out of its visit: stop the walk, raise after it.
        # Without its traceback: the traceback's frames hold the refused HDF5 object,
        # which would outlive its file (fuse freezes the heap at exit) and be closed by
        # HDF5's atexit teardown after Python has shut down: a segfault (exit 139).
        try:
            visit(name, link)
        except ModelLoadError as exc:
            return exc.with_traceback(None)
        return None

    check_weight_names(h5, path, where or "/")
    refused = h5.visititems_links(visit_once)
    if refused is not None:
        raise refused


def _declared_bytes(dataset: h5py.Dataset) -> int:
    shape = dataset.shape or ()
    return math.prod(int(d) for d in shape) * max(1, int(dataset.dtype.itemsize))


def check_weight_names(group: h5py.Group, path: Path, at: str) -> None:
    """A layer's `weight_names` may list a weight once: each listing is read in full.

    Raises:
        ModelLoadError: A name listed twice.
    """
    names = group.attrs.get("weight_names")
    if names is None or not hasattr(names, "__len__"):
        return
    listed = [attr_text(n) for n in names]
    if len(set(listed)) != len(listed):
        twice = next(n for n in listed if listed.count(n) > 1)
        raise ModelLoadError(
            f"{path}: HDF5 group {at} lists weight {twice!r} {listed.count(twice)} times: refused"
        )


def attr_text(value: Any) -> str | None:
    """An HDF5 attribute as text (h5py gives bytes or str), or None if absent."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
