"""Reading model files safely and writing the merged model atomically.

Model files are programs. Every file is checked here before Keras sees it: a regular
file, a format decided by its first bytes (not its name), a zip archive holding only
what a `.keras` archive holds, an HDF5 file without links or storage outside itself.
Keras then loads it with `compile=False` and safe mode on, from the same open file
that was checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from fuse_cli.errors import FuseError, ModelLoadError, OutputError, UsageError

if TYPE_CHECKING:
    import h5py
    import keras

Format = Literal["keras", "h5"]

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
MIN_KERAS = (3, 15, 1)

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock: the signature may sit at 0, 512,
# 1024, 2048, ... (HDF5 spec, "Format Signature").
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # Path() folds "://" to ":/"

# What a `.keras` archive written by Keras 3 contains (saving_lib.py).
_KERAS_MEMBERS = {"config.json", "metadata.json", "model.weights.h5", "model.weights.npz"}
_KERAS_ASSETS = "assets/"
_MAX_CONFIG_BYTES = 64 * 1024**2
_MAX_MEMBER_BYTES = 16 * 1024**3
_MAX_RATIO = 1000  # declared size / compressed size; zip bombs reach millions
_IN_MEMORY_BYTES = 1024**3  # archived weights up to this size are checked in memory


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
    """

    path: Path
    model: keras.Model
    format: Format
    sha256: str
    size: int
    keras_version: str | None = None
    migrations: list[str] = field(default_factory=list)


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

    version = _version_tuple(keras.__version__)
    if version < MIN_KERAS:
        floor = ".".join(map(str, MIN_KERAS))
        raise UsageError(
            f"Keras {keras.__version__} is installed; fuse needs keras>={floor} "
            f"(pip install 'keras>={floor}')"
        )


# The object types whose attribute skipsets Keras's `.keras` saving and loading look up
# for every layer they walk (`saving_lib._walk_saveable`).
_WALKED_TYPES = ("Operation", "Layer", "Functional", "Sequential")


def cache_keras_skipsets() -> None:
    """Cache the attribute skipsets that Keras recomputes for every layer it saves or loads.

    `keras.src.saving.saving_lib.get_attr_skipset` (Keras 3.15.1) stores its result
    under `saving_attr_skipset_<type>` but looks it up under `saving_attr_skiplist_<type>`,
    so the cache never hits: each layer walked builds a throwaway `Layer()` and lists
    its attributes (measured: 0.5 s of a 2.6 s load plus save of a two-MobileNetV2
    ensemble).
    This stores Keras's own result under the key Keras reads; the sets are the same,
    only computed once. Harmless once Keras fixes the key (then unused), and skipped if
    a later Keras moves these internals: it only saves time.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib

        for obj_type in _WALKED_TYPES:
            key = f"saving_attr_skiplist_{obj_type}"
            if global_state.get_global_attribute(key) is None:
                global_state.set_global_attribute(key, saving_lib.get_attr_skipset(obj_type))
    except (ImportError, AttributeError, ValueError):
        return


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        head: At least the first 8200 bytes of the file (fewer if it is shorter).
        path: The file, for messages.

    Raises:
        ModelLoadError: Neither a zip archive nor an HDF5 file.
    """
    if not head:
        raise ModelLoadError(f"{path}: empty file")
    if head.startswith(_ZIP_MAGIC):
        return "keras"
    if any(head[offset : offset + 8] == _HDF5_MAGIC for offset in _HDF5_OFFSETS):
        return "h5"
    raise ModelLoadError(f"{path}: not a Keras model (neither a .keras zip archive nor HDF5)")


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
    try:
        with open(path, "rb") as f:
            head = f.read(8200)
            fmt = sniff_format(head, path)
            f.seek(0)
            if fmt == "keras":
                model, version, migrations = _load_keras_zip(f, path, unsafe)
            else:
                model, version, migrations = _load_hdf5(f, path, unsafe)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    import keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a model")
    if not model.inputs:
        raise ModelLoadError(f"{path}: the model has no defined inputs (was it ever built?)")
    stats = path.stat()
    return LoadedModel(
        path=path,
        model=model,
        format=fmt,
        sha256=sha256_of(path),
        size=stats.st_size,
        keras_version=version,
        migrations=migrations,
    )


def _load_keras_zip(
    f: IO[bytes], path: Path, unsafe: bool
) -> tuple[keras.Model, str | None, list[str]]:
    try:
        with zipfile.ZipFile(f) as zf:
            check_keras_archive(zf, path)
            _check_archive_weights(zf, path)
            metadata = _read_json_member(zf, "metadata.json")
            config = _read_json_member(zf, "config.json")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise ModelLoadError(f"{path}: corrupt .keras archive: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config.json is not a JSON object: not a Keras model")
    check_config(config, path)
    f.seek(0)
    from keras.src.saving import saving_lib

    with keras_errors(path):
        model = saving_lib.load_model(f, custom_objects=None, compile=False, safe_mode=not unsafe)
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return model, version, []


def _read_json_member(zf: zipfile.ZipFile, name: str) -> Any:
    if name not in zf.namelist():
        return None
    try:
        return json.loads(zf.read(name))
    except (ValueError, UnicodeDecodeError):
        return None


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
        if name not in _KERAS_MEMBERS and not name.startswith(_KERAS_ASSETS):
            raise ModelLoadError(f"{path}: unexpected archive member {name!r}")
        limit = _MAX_CONFIG_BYTES if name.endswith(".json") else _MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise ModelLoadError(
                f"{path}: archive member {name!r} declares {info.file_size} bytes (limit {limit})"
            )
        if info.compress_size and info.file_size > _MAX_RATIO * info.compress_size + 4096:
            raise ModelLoadError(
                f"{path}: archive member {name!r} expands {info.file_size} bytes from "
                f"{info.compress_size}: refused as a zip bomb"
            )
    if "config.json" not in names:
        raise ModelLoadError(f"{path}: .keras archive has no config.json")
    if not names & {"model.weights.h5", "model.weights.npz"}:
        raise ModelLoadError(f"{path}: .keras archive has no weights (model.weights.h5)")


def _load_hdf5(f: IO[bytes], path: Path, unsafe: bool) -> tuple[keras.Model, str | None, list[str]]:
    import h5py

    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        raise ModelLoadError(f"{path}: corrupt HDF5 file: {first_line(exc)}") from None
    from fuse_cli import legacy

    with h5:
        try:
            check_hdf5(h5, path)
            config = json.loads(_attr_text(h5.attrs["model_config"]) or "")
            version = _attr_text(h5.attrs.get("keras_version"))
        except ModelLoadError:
            raise
        except ValueError:
            raise ModelLoadError(f"{path}: model_config is not valid JSON") from None
        except Exception as exc:  # h5py raises OSError, KeyError, ... on corrupt structures
            raise ModelLoadError(f"{path}: corrupt HDF5 file: {first_line(exc)}") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"{path}: model_config is not a JSON object: not a Keras model")
        check_config(config, path)
        # From the same open file that was checked: no window to swap the file.
        model, migrations = legacy.load_legacy_h5(path, safe_mode=not unsafe, h5=h5)
    return model, version, migrations


# Modules a Keras model config may name. Anything else (`os`, `builtins`, `subprocess`,
# a user's package) is either code fuse cannot vouch for or a layer it cannot build.
# Keras 2 files name tf_keras's / keras.src's own classes (`Functional`), which Keras 3
# maps to its own and never imports.
_ALLOWED_MODULE = re.compile(r"^(keras|tf_keras|fuse_cli\.layers)(\..*)?$")
# Functions that Keras itself exposes but that a model config has no business calling:
# the gadgets of CVE-2025-8747 (get_file writes files) and CVE-2025-9906 (turning
# safe mode off from inside a config).
_GADGETS = frozenset(
    {"enable_unsafe_deserialization", "get_file", "load_model", "load_weights", "save_model"}
)


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
        if "class_name" in node and isinstance(module, str) and not _ALLOWED_MODULE.match(module):
            raise ModelLoadError(
                f"{path}: config refers to {module}.{class_name}, outside Keras: refused"
            )
        for key in ("class_name", "config", "registered_name"):
            value = node.get(key)
            if isinstance(value, str) and re.split(r"[.>]", value)[-1] in _GADGETS:
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


def _check_archive_weights(zf: zipfile.ZipFile, path: Path) -> None:
    if "model.weights.h5" not in zf.namelist():
        return
    import h5py

    # h5py seeks back and forth, and a zip member stream re-reads from its start on every
    # backward seek (1.4 s for a 28 MB file): read the weights once, as Keras does.
    in_memory = zf.getinfo("model.weights.h5").file_size <= _IN_MEMORY_BYTES
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


def _attr_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an error's text (or of `text`), cut to `limit` characters."""
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


_UNSAFE_MARKERS = ("safe_mode", "unsafe", "arbitrary code")


def describe_load_failure(exc: BaseException, path: Path) -> ModelLoadError:
    """Turn what Keras raised while deserializing into one or two lines for the user."""
    text = str(exc)
    reason = first_line(exc)
    if type(exc) not in (ValueError, TypeError, OSError):
        reason = f"{type(exc).__name__}: {reason}"
    if any(marker in text for marker in _UNSAFE_MARKERS):
        layer = re.search(r"`?(Lambda|TFOpLambda)`?", text)
        what = f"a {layer.group(1)} layer" if layer else "code-carrying content"
        return ModelLoadError(
            f"{path}: refused {what}: it carries Python code that would run on loading\n"
            "pass --unsafe only if you trust this file"
        )
    return ModelLoadError(f"{path}: cannot load model: {reason}")


# Keras, h5py and TensorFlow raise almost anything on a corrupt or hostile file (KeyError,
# struct errors, BadZipFile, tf.errors.*). While Keras deserializes the user's file,
# every Exception is a property of that file: exit 3 with the reason.
LOAD_ERRORS = (Exception,)


@contextlib.contextmanager
def keras_errors(path: Path) -> Iterator[None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ModelLoadError:
        raise
    except LOAD_ERRORS as exc:
        raise describe_load_failure(exc, path) from None


def check_output(out: Path, inputs: Sequence[Path], *, force: bool) -> None:
    """Check the output path before any model is loaded.

    Raises:
        UsageError: Unknown output extension.
        OutputError: Folder missing or not writable, OUT exists without `force`,
            OUT is a directory, or OUT is one of the inputs.
    """
    if out.suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(
            f"{out}: output must end in .keras (default format), .h5 or .hdf5; "
            f"got {out.suffix or 'no extension'!r}"
        )
    check_output_folder(out, inputs)
    if out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f"{out}: already exists; pass --force to replace it")


def check_output_folder(out: Path, inputs: Sequence[Path]) -> None:
    """Check that `out` can be created: its folder exists and is writable, and it is
    none of the inputs.

    Raises:
        OutputError: Naming the folder or the input.
    """
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: output folder {folder} is not writable")
    for source in inputs:
        if same_file(out, source):
            raise OutputError(f"{out}: is also an input; fuse never overwrites its inputs")


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def save_atomically(
    model: keras.Model, out: Path, check: Callable[[Path], object] | None = None
) -> int:
    """Write `model` to `out` through a temporary file in the same folder.

    The temporary file is flushed and fsynced, checked, then renamed over `out`, so a
    crash, a full disk or a failed check leaves the old `out` (or none), never a torn
    or unverified file.

    Args:
        model: The model to save.
        out: The destination; `.keras` writes the native format, `.h5`/`.hdf5` legacy HDF5.
        check: Called with the temporary file before it replaces `out`; whatever it
            raises aborts the write.

    Returns:
        The size of the written file in bytes.

    Raises:
        OutputError: The file cannot be written (disk full, permissions, ...).
    """
    suffix = ".keras" if out.suffix.lower() == ".keras" else ".h5"
    folder = out.parent if str(out.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    cache_keras_skipsets()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o644 & ~current_umask())
        os.replace(tmp, out)
        fsync_dir(folder)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size


def current_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
