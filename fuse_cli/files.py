"""Writing files: the checks on every output path and the one `publish` every write uses.

Everything fuse writes (merged models, exported artifacts, plots, data) goes through
`publish`: the content is written to a temporary name in the destination folder,
flushed and fsynced, checked, given the same permissions (`0644`/`0755` less the
umask), then renamed into place. A crash, a full disk or a failed check leaves the old
file (or none), never a torn or unchecked one. The temporary names are fuse's own
(`.<name>.fuse-<pid>-<random>.tmp<suffix>`), so the leftovers of a killed run are
recognised and removed by the next write to the same destination, and nothing else is.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fuse_cli.errors import OutputError, UsageError

Writer = Callable[[Path], object]
Check = Callable[[Path], object]

_TEMP_MARK = "fuse-"
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def folder_of(path: Path) -> Path:
    """The folder `path` is written into (`.` for a bare name)."""
    return path.parent if str(path.parent) else Path(".")


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name the same file: the same path once symlinks are resolved,
    or the same device and inode (hard links)."""
    path_a, inode_a = _identity(a)
    path_b, inode_b = _identity(b)
    return path_a == path_b or (inode_a is not None and inode_a == inode_b)


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    try:
        st = os.stat(path)
        inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        inode = None
    return os.path.realpath(path), inode


@dataclass(frozen=True)
class Destination:
    """One path a command will write, as the user named it.

    Attributes:
        option: The option that names it (`-o`, `--export onnx`, `--plot`, ...).
        path: Where it goes.
        folder: The content is a folder (a SavedModel): `--force` replaces only a
            SavedModel folder or an empty one.
    """

    option: str
    path: Path
    folder: bool = False

    def __str__(self) -> str:
        return f"{self.option} {self.path}"


def check_destinations(
    destinations: Sequence[Destination], inputs: Sequence[Path], *, force: bool
) -> list[bool]:
    """The one check of every path a command writes, before anything is loaded.

    Each destination's folder must exist and be writable; it must be none of the inputs
    (by identity: through symlinks and hard links), hold none of them, carry no input's
    name as its temporary, and be written once; an existing file is replaced only with
    `force`.

    Args:
        destinations: Every path the command will write.
        inputs: Every file the command reads (models, `--data`, `--predictions`).
        force: Replace what exists.

    Returns:
        For each destination, whether it replaces something that exists.

    Raises:
        OutputError: One line naming the option, the path and the reason.
    """
    replaces = []
    for dest in destinations:
        folder = folder_of(dest.path)
        _check_name_length(dest, folder)
        if not folder.is_dir():
            raise OutputError(f"{dest}: output folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{dest}: output folder {folder} is not writable")
    check_writes([(d.option, d.path) for d in destinations], inputs)
    for dest in destinations:
        out = dest.path
        exists = out.exists() or out.is_symlink()
        if out.is_dir() and not out.is_symlink() and not dest.folder:
            raise OutputError(f"{dest}: is a directory")
        if exists and not force:
            raise OutputError(f"{dest}: already exists; pass --force to replace it")
        if dest.folder and out.is_dir() and not out.is_symlink() and any(out.iterdir()) \
                and not (out / "saved_model.pb").is_file():
            raise OutputError(
                f"{dest}: is a folder that holds no SavedModel; --force replaces only a "
                "SavedModel folder (or an empty one)"
            )
        replaces.append(exists)
    return replaces


def _check_name_length(dest: Destination, folder: Path) -> None:
    """OUT's name, and the longer temporary name `publish` gives it, must fit the folder's
    file system (ENAMETOOLONG would otherwise surface after the work is done).

    Raises:
        OutputError: The name is too long.
    """
    try:
        limit = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = len(os.fsencode(dest.path.name))
    # `.<name>.fuse-<pid>-<random>.tmp<suffix>` (or `.old`): what `publish` adds.
    margin = len(f"..{_TEMP_MARK}{os.getpid()}-") + 8 + len(".tmp") + max(
        len(os.fsencode(dest.path.suffix)), len(".keras"))
    if name + margin > limit:
        raise OutputError(
            f"{dest}: the name is {name} bytes; this folder takes names of at most {limit} "
            f"bytes and fuse's temporary name adds {margin}: use a name of at most "
            f"{max(1, limit - margin)} bytes"
        )


def check_writes(outputs: Sequence[tuple[str, Path]], inputs: Sequence[Path]) -> None:
    """Check every path a command will write against every input and each other, by
    identity (through symlinks and hard links); part of `check_destinations`.

    Args:
        outputs: `(option, path)` for each destination (`-o`, each `--export`
            artifact, `--plot`); a folder destination (a SavedModel) may not hold an input.
        inputs: Every file the command reads (models, `--data`).

    Raises:
        OutputError: A destination that is an input, lies inside a destination folder,
            is written twice, or whose temporary names an input carries.
    """
    for i, (option, out) in enumerate(outputs):
        for source in inputs:
            if same_file(out, source):
                raise OutputError(
                    f"{option} {out}: is also the input {source}; fuse never overwrites its inputs"
                )
            if _inside(source, out):
                raise OutputError(
                    f"{option} {out}: would replace a folder that holds the input {source}"
                )
            if _temporary_of(source, out):
                raise OutputError(
                    f"{option} {out}: the input {source} carries the name of a fuse temporary "
                    "file for it; rename the input"
                )
        for other_option, other in outputs[:i]:
            if same_file(out, other) or _inside(out, other) or _inside(other, out):
                raise OutputError(f"{option} {out}: is also written by {other_option} {other}")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies strictly inside `folder` (resolved)."""
    return within(path, folder) and os.path.realpath(path) != os.path.realpath(folder)


def within(path: Path | str, folder: Path | str) -> bool:
    """Whether `path`, links resolved, is `folder` or lies inside it."""
    outer, inner = os.path.realpath(folder), os.path.realpath(path)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _temporary_of(path: Path, out: Path) -> bool:
    """Whether `path` is in `out`'s folder under a name `publish` uses for `out`."""
    same_folder = os.path.realpath(folder_of(path)) == os.path.realpath(folder_of(out))
    return same_folder and _temporary_pattern(out).match(path.name) is not None


def check_model_suffix(out: Path, option: str = "-o") -> None:
    """A merged model is written as `.keras` (default format), `.h5` or `.hdf5`.

    Raises:
        UsageError: Any other extension.
    """
    if out.suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(
            f"{option} {out}: output must end in .keras (default format), .h5 or .hdf5; "
            f"got {out.suffix or 'no extension'!r}"
        )


def publish(
    out: Path,
    write: Writer,
    *,
    check: Check | None = None,
    directory: bool = False,
    suffix: str | None = None,
    label: str | None = None,
    replace: bool = True,
) -> int:
    """Write `out` through a temporary sibling, then rename it into place.

    Args:
        out: The destination.
        write: Called with the temporary path; writes the content there (a file, or a
            folder's content when `directory`).
        check: Called with the temporary path once written and fsynced; whatever it
            raises aborts the write, leaving `out` as it was.
        directory: The content is a folder (a SavedModel): an old folder is moved aside
            and removed only once the new one is in place.
        suffix: The temporary file's last suffix, for writers that insist on one
            (default: `out`'s own).
        label: How `out` is named in messages (default: the path).
        replace: Replace what is at `out` (`--force`). Without it, a file that appears at
            `out` while the content is written and checked is never replaced: the
            rename is refused (`renameat2(RENAME_NOREPLACE)`, or a hard link), exit 5.

    Returns:
        The size of what was written, in bytes (a folder: its files added up).

    Raises:
        OutputError: The content cannot be written (disk full, permissions, ...).
    """
    folder = folder_of(out)
    shown = label or str(out)
    remove_stale_temporaries(out)
    tmp = _temporary(out, directory=directory, suffix=suffix)
    try:
        write(tmp)
        fsync_tree(tmp)
        if check is not None:
            check(tmp)
        mask = current_umask()
        os.chmod(tmp, (0o755 if directory else 0o644) & ~mask)
        _rename_into_place(tmp, out, folder, replace=replace)
        fsync_dir(folder)
    except FileExistsError:
        raise OutputError(
            f"{shown}: was created by someone else while fuse wrote it; it is left as it is "
            "(pass --force to replace it)"
        ) from None
    except OSError as exc:
        raise OutputError(f"{shown}: cannot write: {exc.strerror or exc}") from None
    finally:
        remove_path(tmp)
    return size_of(out)


def _temporary(out: Path, *, directory: bool, suffix: str | None) -> Path:
    prefix = f".{out.name}.{_TEMP_MARK}{os.getpid()}-"
    folder = folder_of(out)
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
    fd, name = tempfile.mkstemp(
        prefix=prefix, suffix=f".tmp{suffix if suffix is not None else out.suffix}", dir=folder
    )
    os.close(fd)
    return Path(name)


def _rename_into_place(tmp: Path, out: Path, folder: Path, *, replace: bool) -> None:
    if not replace:
        rename_noreplace(tmp, out)
        return
    if tmp.is_file() and not out.is_dir():
        os.replace(tmp, out)
        return
    # A folder cannot be renamed over a non-empty folder: move the old one aside first,
    # and back if the new one cannot take its place.
    aside = None
    if out.exists() or out.is_symlink():
        aside = folder / f".{out.name}.{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.old"
        os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except OSError:
        if aside is not None:
            os.rename(aside, out)
        raise
    if aside is not None:
        remove_path(aside)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target` unless something is at `target`, atomically.

    Linux's `renameat2(RENAME_NOREPLACE)`; where the kernel or file system lacks it, a
    hard link (files, atomic too) or, for a folder, a check just before the rename.

    Raises:
        FileExistsError: Something is at `target`.
        OSError: The rename failed otherwise.
    """
    rename = getattr(_libc(), "renameat2", None) if sys.platform.startswith("linux") else None
    if rename is not None:
        result = rename(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                        _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(target))
    if source.is_dir():
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(source, target)
        return
    os.link(source, target)  # raises FileExistsError; the link is the atomic step
    os.unlink(source)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove what a killed fuse run left beside `out`: its own temporary names only.

    A name counts only if it is `.<out name>.fuse-<pid>-<random>.tmp...` or `.old`, and
    the process `<pid>` is no longer running (a concurrent fuse run keeps its files).

    Returns:
        The paths removed.
    """
    pattern = _temporary_pattern(out)
    removed: list[Path] = []
    try:
        entries = list(folder_of(out).iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = pattern.match(entry.name)
        if found and not _process_alive(int(found.group(1))):
            remove_path(entry)
            removed.append(entry)
    return removed


def _temporary_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(
        rf"^\.{re.escape(out.name)}\.{_TEMP_MARK}(\d+)-[A-Za-z0-9_]+(\.tmp(\.[A-Za-z0-9]+)?|\.old)$"
    )


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder."""
    if path.is_file():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a crash (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    current = os.umask(0)
    os.umask(current)
    return current


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree, quietly if it is already gone."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def size_of(path: Path) -> int:
    """A file's size, or a folder's files added up, in bytes."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """A private temporary folder, removed with everything in it on exit (`fuse build
    --check` builds there to compare with what is in place)."""
    with tempfile.TemporaryDirectory(prefix="fuse-") as name:
        yield Path(name)
