"""Deployable artifacts: SavedModel, LiteRT and ONNX, each checked in its own runtime.

An artifact is written to a temporary path in the destination folder, run on a
fixed batch by the runtime a serving stack would use (`tf.saved_model.load`, the
LiteRT interpreter, onnxruntime), compared with the Keras model, and only then
renamed into place. A failed conversion or parity check leaves nothing behind.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.choices import ExportFormat
from fuse_cli.compatibility import input_specs
from fuse_cli.errors import OutputError, UsageError, VerificationError, first_line
from fuse_cli.files import MODEL_SUFFIXES, Destination, check_destinations, publish
from fuse_cli.formats import check_keras, check_model_path, load_model
from fuse_cli.formula import compare, run, sample_batch
from fuse_cli.native import quiet_native_logs
from fuse_cli.report import Progress
from fuse_cli.runtimes import RUNNERS, litert_interpreter

if TYPE_CHECKING:
    import keras


# Artifact vs Keras model on the check batch: |a - k| <= ATOL + RTOL * |k| (float32).
PARITY_ATOL = 1e-5
PARITY_RTOL = 1e-5


# The name `keras.Model.export` knows each format by.
_KERAS_FORMATS = {
    ExportFormat.SAVED_MODEL: "tf_saved_model",
    ExportFormat.LITERT: "litert",
    ExportFormat.ONNX: "onnx",
}
_SUFFIXES = {ExportFormat.LITERT: ".tflite", ExportFormat.ONNX: ".onnx"}
# What converting needs, and what only the parity check needs (pip names).
_CONVERT_NEEDS = {ExportFormat.ONNX: {"tf2onnx": "tf2onnx", "onnx": "onnx"}}
_RUNTIME_NEEDS = {ExportFormat.ONNX: {"onnxruntime": "onnxruntime"}}
_EXTRAS = {ExportFormat.ONNX: "onnx", ExportFormat.LITERT: "litert"}


@dataclass
class ExportReport:
    """One artifact as written and checked."""

    format: str
    path: str
    size: int
    verified: bool
    max_abs_error: float | None
    runtime: str | None
    atol: float = PARITY_ATOL
    rtol: float = PARITY_RTOL
    elapsed_seconds: float = 0.0


@dataclass
class ExportRun:
    """Every artifact written from one model file."""

    source: str
    exports: list[ExportReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)


def artifact_path(out: Path, fmt: ExportFormat) -> Path:
    """Where `fuse merge -o OUT --export FMT` puts the artifact, beside OUT.

    `ens.keras` gives `ens_saved_model/`, `ens.tflite` and `ens.onnx`.
    """
    if fmt is ExportFormat.SAVED_MODEL:
        return out.with_name(f"{out.stem}_saved_model")
    return out.with_suffix(_SUFFIXES[fmt])


def check_requirements(fmt: ExportFormat, *, verify: bool = True) -> None:
    """Make sure the packages a format needs are installed, before anything is loaded.

    Raises:
        UsageError: Naming the missing packages and the command that installs them.
    """
    needs = dict(_CONVERT_NEEDS.get(fmt, {}))
    if verify:
        needs.update(_RUNTIME_NEEDS.get(fmt, {}))
    missing = [pip_name for module, pip_name in needs.items() if not _importable(module)]
    if fmt is ExportFormat.LITERT and verify and litert_interpreter() is None:
        missing.append("ai-edge-litert")
    if missing:
        raise UsageError(
            f"--format {fmt.value} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'fuse-cli[{_EXTRAS[fmt]}]'"
        )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def check_artifact(fmt: ExportFormat, out: Path, *, verify: bool = True) -> None:
    """What can be checked of one artifact before anything loads: its packages and its
    extension (its path is checked with every other destination, `files.check_destinations`).

    Raises:
        UsageError: A missing package, or an extension that does not fit the format.
    """
    suffix = out.suffix.lower()
    if fmt is ExportFormat.SAVED_MODEL:
        if suffix in (*MODEL_SUFFIXES, *_SUFFIXES.values()):
            raise UsageError(
                f"{out}: a SavedModel is a folder; give a folder name, not a {suffix} file"
            )
    elif suffix != _SUFFIXES[fmt]:
        raise UsageError(
            f"{out}: --format {fmt.value} writes a {_SUFFIXES[fmt]} file; "
            f"got {out.suffix or 'no extension'!r}"
        )
    check_requirements(fmt, verify=verify)  # last: an exporter's import is slow


def artifact_destination(option: str, fmt: ExportFormat, out: Path) -> Destination:
    """The destination of one artifact, for `files.check_destinations`."""
    return Destination(option, out, folder=fmt is ExportFormat.SAVED_MODEL)


def export_file(
    source: str | Path,
    requests: Sequence[tuple[ExportFormat, str | Path]],
    *,
    force: bool = False,
    verify: bool = True,
    unsafe: bool = False,
    quiet: bool = True,
    progress: Progress | None = None,
) -> ExportRun:
    """Load a model file once and write each requested artifact, checking its parity.

    Args:
        source: A `.keras` / `.h5` file, usually written by `fuse merge`.
        requests: `(format, path)` pairs.
        force: Replace existing artifacts.
        verify: Run each artifact in its runtime and compare with the Keras model.
        unsafe: Load the source with Keras's safe mode off.
        quiet: Keep the converters' and runtimes' native log lines off stderr.
        progress: Called with a short description before each slow step.

    Returns:
        What was written, with each artifact's parity error.

    Raises:
        FuseError: A subclass carrying the exit code (DESIGN §5).
    """
    source = Path(source)
    say = progress or (lambda _message: None)
    targets = check_export(source, requests, force=force, verify=verify, quiet=quiet)
    check_keras()

    say(f"loading {source}")
    model = load_model(source, unsafe=unsafe).model
    run = ExportRun(source=str(source))
    for fmt, out in targets:
        say(f"exporting {out} ({fmt.value})")
        run.exports.append(export_model(model, fmt, out, verify=verify, quiet=quiet,
                                        replace=force))
    return run


def check_export(
    source: Path,
    requests: Sequence[tuple[ExportFormat, str | Path]],
    *,
    force: bool = False,
    verify: bool = True,
    quiet: bool = True,
) -> list[tuple[ExportFormat, Path]]:
    """Every check `fuse export` makes before the model loads: packages, extensions,
    destinations against the source, the source's path.

    Returns:
        The `(format, path)` targets.

    Raises:
        UsageError, OutputError, ModelLoadError: Exit 2, 5 or 3.
    """
    targets = [(fmt, Path(out)) for fmt, out in requests]
    with quiet_native_logs(quiet):  # an exporter's import may start TensorFlow
        for fmt, out in targets:
            check_artifact(fmt, out, verify=verify)
    check_destinations([artifact_destination(f"--format {fmt.value} -o", fmt, out)
                        for fmt, out in targets], [source], force=force)
    check_model_path(source)
    return targets


def export_model(
    model: keras.Model,
    fmt: ExportFormat,
    out: Path,
    *,
    verify: bool = True,
    quiet: bool = True,
    replace: bool = True,
) -> ExportReport:
    """Write one artifact through a temporary path, check it, then move it into place.

    Raises:
        OutputError: The conversion failed or the artifact cannot be written.
        VerificationError: The artifact disagrees with the Keras model.
    """
    start = time.perf_counter()
    # Running the model first also marks it as called, which the ONNX exporter needs.
    batch, expected = reference_outputs(model, what=str(out))
    parity: list[tuple[float, str]] = []

    def write(tmp: Path) -> None:
        with quiet_native_logs(quiet):
            _convert(model, fmt, tmp, out)

    def check(tmp: Path) -> None:
        with quiet_native_logs(quiet):
            parity.append(check_parity(model, fmt, tmp, batch, expected, what=str(out)))

    size = publish(
        out,
        write,
        check=check if verify else None,
        directory=fmt is ExportFormat.SAVED_MODEL,
        suffix=_SUFFIXES.get(fmt),
        replace=replace,
    )
    error, runtime = parity[0] if parity else (None, None)
    return ExportReport(
        format=fmt.value,
        path=str(out),
        size=size,
        verified=verify,
        max_abs_error=error,
        runtime=runtime,
        elapsed_seconds=time.perf_counter() - start,
    )


def _convert(model: keras.Model, fmt: ExportFormat, tmp: Path, out: Path) -> None:
    try:
        model.export(str(tmp), format=_KERAS_FORMATS[fmt], verbose=False)
    except OSError:
        raise
    # The converters (TensorFlow's, TFLite's, tf2onnx) raise all kinds of exception
    # types for an op or a dtype they cannot handle; none of them is a fuse bug.
    except Exception as exc:
        reason = first_line(exc)
        raise OutputError(
            f"{out}: cannot convert the model to {fmt.value}: {type(exc).__name__}: {reason}"
        ) from None


def reference_outputs(model: keras.Model, *, what: str) -> tuple[list[Any], list[Any]]:
    """The fixed check batch for `model`'s inputs, and the Keras model's outputs on it.

    Raises:
        VerificationError: The Keras model itself yields NaN or inf.
    """
    batch = sample_batch(input_specs(model), what=what, model=model)
    expected = run(model, batch)
    if not all(np.all(np.isfinite(e)) for e in expected):
        raise VerificationError(f"{what}: the Keras model yields NaN or inf on the check batch")
    return batch, expected


def check_parity(
    model: keras.Model,
    fmt: ExportFormat,
    artifact: Path,
    batch: list[Any],
    expected: list[Any],
    *,
    what: str,
) -> tuple[float, str]:
    """Run the artifact in its own runtime on the batch and compare with the Keras outputs.

    Args:
        model: The Keras model the artifact was made from (for its input names).
        fmt: The artifact's format, which decides the runtime.
        artifact: The file or folder to run.
        batch: The check batch, from `reference_outputs`.
        expected: The Keras model's outputs on `batch`.
        what: Names the artifact in messages.

    Returns:
        The largest absolute difference, and the runtime that ran the artifact.

    Raises:
        VerificationError: Outputs differ beyond tolerance, or are NaN/inf.
    """
    names = [str(t.name) for t in model.inputs]
    runner, runtime = RUNNERS[fmt]()
    try:
        actual = runner(artifact, names, batch)
    except VerificationError:
        raise
    # An artifact its runtime cannot load or run (an op the runtime lacks, say) fails
    # the check, whatever the runtime raises.
    except Exception as exc:
        reason = first_line(exc)
        raise VerificationError(
            f"{what}: {runtime} cannot run the {fmt.value} artifact: "
            f"{type(exc).__name__}: {reason}"
        ) from None
    error = compare(
        actual, expected, f"{what} ({fmt.value}, run by {runtime})",
        rtol=PARITY_RTOL, atol=PARITY_ATOL, against="the Keras model",
    )
    return error, runtime
