"""The errors fuse reports to users, each carrying its exit code (DESIGN §5)."""

from __future__ import annotations

import re
from typing import ClassVar


class FuseError(Exception):
    """An error the user can fix; shown as one message without a traceback."""

    exit_code: ClassVar[int] = 1


class UsageError(FuseError):
    """Bad options or values: weights, extensions, the Keras setup."""

    exit_code = 2


class ModelLoadError(FuseError):
    """A model file is missing, unreadable, corrupt, not a model, or unsafe."""

    exit_code = 3


class IncompatibleModelsError(FuseError):
    """The members cannot be combined: shapes, counts, dtypes, signs."""

    exit_code = 4


class OutputError(FuseError):
    """The output cannot be written where or how the user asked."""

    exit_code = 5


class VerificationError(FuseError):
    """The written file does not compute the formula it claims."""

    exit_code = 6


class OutOfDateError(FuseError):
    """`fuse build --check`: OUT is not what the recipe builds now (or `--locked`: the
    lock is not the recipe's)."""

    exit_code = 7


class DataError(UsageError):
    """A `--data` file is readable but does not hold what fuse expects (exit 2)."""


class DataLoadError(FuseError):
    """A `--data` file is missing, unreadable, not an .npz archive, or pickled."""

    exit_code = 3


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an error's text (or of `exc` if it is text), cut to `limit` chars.

    Third-party exceptions often carry a whole config dump after their first line; fuse
    shows one line.
    """
    text = str(exc).strip() or type(exc).__name__
    lines = [_ANSI.sub("", part).strip() for part in text.splitlines()]
    lines = [part for part in lines if part]
    line = lines[0]
    if line.startswith("Exception encountered when calling") and len(lines) > 1:
        line = f"{line} {lines[1]}"  # Keras puts the reason on the line after
    return line if len(line) <= limit else line[: limit - 3] + "..."


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
