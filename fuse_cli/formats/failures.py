"""One classifier for what Keras, h5py and TensorFlow raise while loading a user's file.

Keras, h5py and TensorFlow raise almost anything on a corrupt or hostile file (KeyError,
struct errors, BadZipFile, tf.errors.*). While they deserialize the user's file, every
`Exception` is a property of that file: exit 3 with the reason. fuse's own errors
(`FuseError`, e.g. a moved Keras internal) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from fuse_cli.errors import FuseError, ModelLoadError, first_line

_UNSAFE_MARKERS = ("safe_mode", "unsafe", "arbitrary code")
_CONFIG_DUMP = "Exception encountered: "
# Keras wraps errors raised inside a layer call: "Exception encountered when calling
# Sequential.call().", a blank line, the reason in bold (ANSI codes), the arguments.
_CALL_WRAPPER = re.compile(r"^Exception encountered when calling ([\w.]+)\(\)\.\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_unsafe_refusal(exc: BaseException) -> bool:
    """Whether Keras refused the file because safe mode forbids its content."""
    text = str(exc).lower()
    return any(marker in text for marker in _UNSAFE_MARKERS)


def reason_of(exc: BaseException) -> str:
    """Keras's own reason in one line, without the config dump Keras appends to it."""
    text = str(exc).strip()
    if _CONFIG_DUMP in text:
        text = text.rsplit(_CONFIG_DUMP, 1)[1].strip()
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    wrapper = _CALL_WRAPPER.match(lines[0]) if lines else None
    if wrapper and len(lines) > 1:
        # The reason is the line after Keras's wrapper, not the wrapper itself.
        text = f"{lines[1]} (calling {wrapper.group(1)}())"
    reason = first_line(text or type(exc).__name__)
    if type(exc) not in (ValueError, TypeError, OSError):
        reason = f"{type(exc).__name__}: {reason}"
    return reason


def describe_load_failure(
    exc: BaseException, path: Path, *, written_by: str | None = None, after: str = ""
) -> ModelLoadError:
    """Turn what was raised while deserializing `path` into one line for the user.

    Args:
        exc: What Keras (or h5py, TensorFlow) raised.
        path: The file.
        written_by: The writer's Keras version, for legacy files (shown at the end).
        after: Said after the reason, e.g. which legacy rules were applied.
    """
    suffix = f" (written by Keras {written_by})" if written_by else ""
    if is_unsafe_refusal(exc):
        layer = re.search(r"`?(Lambda|TFOpLambda)`?", str(exc))
        what = f"a {layer.group(1)} layer" if layer else "code-carrying content (a Lambda layer)"
        return ModelLoadError(
            f"{path}: refused {what}: it carries Python code that would run on loading; "
            f"pass --unsafe only if you trust this file{suffix}"
        )
    return ModelLoadError(f"{path}: cannot load model: {reason_of(exc)}{after}{suffix}")


@contextlib.contextmanager
def keras_errors(path: Path, *, written_by: str | None = None, after: str = "") -> Iterator[None]:
    """Classify anything raised inside the block as a failure to load `path` (exit 3)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except FuseError:
        raise
    except Exception as exc:
        raise describe_load_failure(exc, path, written_by=written_by, after=after) from None
