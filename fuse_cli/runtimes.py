"""Running exported artifacts in the runtimes a serving stack would use.

Each format has a runner factory: it imports its runtime (`tf.saved_model`, the LiteRT
interpreter, onnxruntime) and returns a function that runs an artifact on a batch, with
the runtime's name and version for the report. `export.check_parity` compares what they
return with the Keras model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fuse_cli.choices import ExportFormat
from fuse_cli.errors import UsageError, VerificationError

Runner = Callable[[Path, list[str], list[Any]], list[Any]]


def saved_model_runner() -> tuple[Runner, str]:
    """Run a SavedModel folder's serving signature with `tf.saved_model.load`."""
    import tensorflow as tf

    def run(path: Path, names: list[str], batch: list[Any]) -> list[Any]:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        keys = list(signature.structured_input_signature[1])
        feeds = {k: tf.constant(v) for k, v in _feeds(path, keys, names, batch).items()}
        return _ordered({k: v.numpy() for k, v in signature(**feeds).items()})

    return run, f"tf.saved_model (tensorflow {tf.__version__})"


def litert_runner() -> tuple[Runner, str]:
    """Run a `.tflite` file's signature in the LiteRT interpreter."""
    found = litert_interpreter()
    if found is None:  # check_requirements stops this earlier
        raise UsageError("no LiteRT interpreter: pip install 'fuse-cli[litert]'")
    interpreter_class, runtime = found

    def run(path: Path, names: list[str], batch: list[Any]) -> list[Any]:
        runner = interpreter_class(model_path=str(path)).get_signature_runner()
        keys = list(runner.get_input_details())
        return _ordered(runner(**_feeds(path, keys, names, batch)))

    return run, runtime


def litert_interpreter() -> tuple[Any, str] | None:
    """The LiteRT interpreter: `ai_edge_litert`, else TensorFlow's deprecated `tf.lite`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter, f"ai_edge_litert {version('ai-edge-litert')}"
    except (ImportError, PackageNotFoundError):
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tf.lite (tensorflow {tf.__version__})"
    except (ImportError, AttributeError):
        return None


def onnx_runner() -> tuple[Runner, str]:
    """Run a `.onnx` file in onnxruntime on the CPU."""
    import onnxruntime as ort

    def run(path: Path, names: list[str], batch: list[Any]) -> list[Any]:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        keys = [i.name for i in session.get_inputs()]
        return list(session.run(None, _feeds(path, keys, names, batch)))

    return run, f"onnxruntime {ort.__version__}"


RUNNERS: dict[ExportFormat, Callable[[], tuple[Runner, str]]] = {
    ExportFormat.SAVED_MODEL: saved_model_runner,
    ExportFormat.LITERT: litert_runner,
    ExportFormat.ONNX: onnx_runner,
}


def _feeds(path: Path, keys: list[str], names: list[str], batch: list[Any]) -> dict[str, Any]:
    """Match the artifact's input names to the model's: by name, else by position."""
    if sorted(keys) == sorted(names):
        return {k: batch[names.index(k)] for k in keys}
    if len(keys) == len(batch):
        return dict(zip(keys, batch, strict=True))
    raise VerificationError(
        f"{path}: the artifact has inputs {keys}, but the model has {names}"
    )


def _ordered(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs named `output_0`, `output_1`, ... in numeric order."""

    def index(key: str) -> tuple[int, str]:
        found = re.search(r"(\d+)$", key)
        return (int(found.group(1)) if found else -1, key)

    return [outputs[k] for k in sorted(outputs, key=index)]


