"""The choices the command line offers, as light `str` enums.

typer needs these classes when it builds the commands, so they live here, in a module
that imports nothing heavy: `fuse --help` must not import numpy, Keras or TensorFlow.
"""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """How member outputs are combined."""

    SUM = "sum"
    PRODUCT = "product"
    SOUP = "soup"


class InputsMode(str, Enum):
    """Whether members share one input or each get their own."""

    AUTO = "auto"
    SHARED = "shared"
    SEPARATE = "separate"
    # One raw-image input; each member's resize, channels and rescale built in.
    IMAGE = "image"


class ExportFormat(str, Enum):
    """The artifact formats `fuse export` writes."""

    SAVED_MODEL = "saved_model"
    LITERT = "litert"
    ONNX = "onnx"


class Metric(str, Enum):
    """What `fuse tune` optimizes."""

    ACCURACY = "accuracy"
    LOG_LOSS = "log_loss"


class Calibrate(str, Enum):
    """What `fuse tune --calibrate` fits after the weights."""

    NONE = "none"
    TEMPERATURE = "temperature"


class Backend(str, Enum):
    """The Keras backends `fuse verify --backend` proves a file on."""

    TENSORFLOW = "tensorflow"
    JAX = "jax"
    TORCH = "torch"


class EngineKind(str, Enum):
    """Where `fuse evaluate` and `fuse tune` run their pass over the data."""

    LOCAL = "local"
    RAY = "ray"
