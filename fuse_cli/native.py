"""Native log lines kept off stderr: the one place fuse silences file descriptor 2.

TensorFlow, TFLite and the converters write from C++ (oneDNN and CUDA notices at
import, XNNPACK, graph passes) where neither Python's logging nor TF_CPP_MIN_LOG_LEVEL
reaches them; they would bury fuse's one-line messages. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

__all__ = ["quiet_native_logs"]


@contextlib.contextmanager
def quiet_native_logs(enabled: bool) -> Iterator[None]:
    """Keep converters' and runtimes' native log lines (fd 2) and warnings off stderr.

    TFLite announces its XNNPACK delegate and TensorFlow its graph passes from C++,
    where Python's logging cannot reach; they would bury fuse's one-line messages.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    try:
        os.dup2(devnull, 2)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
