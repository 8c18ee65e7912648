"""Proving that a merged model computes its formula, at merge time and with `fuse verify`.

The reference is computed with numpy from the members' own outputs, never from the
combining layers, so a wrong coefficient or a lost layer cannot check itself.
`verify_file` re-runs that check on a merged file's embedded members and, given the
original member files, proves they are the ones recorded and compute the same outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.choices import Mode
from fuse_cli.ensemble import TensorSpec, input_specs, shared_input_specs
from fuse_cli.errors import (
    IncompatibleModelsError,
    ModelLoadError,
    UsageError,
    VerificationError,
)
from fuse_cli.formats import check_keras, check_model_path, load_model, sha256_of
from fuse_cli.formats._keras_private import node_outputs
from fuse_cli.formats.screening import size_text
from fuse_cli.inspection import (
    EnsembleInfo,
    combining_layers,
    embedded_members,
    mode_of,
    numbers_or_none,
    read_ensemble,
    recorded_provenance,
)
from fuse_cli.sharing import check_record, member_functions

if TYPE_CHECKING:
    import keras

Progress = Callable[[str], None]

RTOL = 1e-5
ATOL = 1e-6
BATCH = 4
SEED = 1234
FREE_DIM = 32  # the size given to a `None` non-batch dimension in the check batch
# An eager call keeps every intermediate activation until it returns: 4 images of
# 224x224x3 through MobileNetV2 hold ~330 MiB. Above this many input values per
# sample, the check batch has fewer samples (down to 1).
MAX_BATCH_VALUES = 1 << 17
# One sample of the check batch's inputs may take at most this much (a file costs what
# it stores: a 13 KB model may not declare an input of 2^27 values, 512 MiB a sample).
MAX_SAMPLE_BYTES = 64 * 1024**2
# What the check batch may hold at once: its inputs and every layer's outputs (an eager
# call keeps them until it returns). The batch shrinks to fit, down to one sample; one
# sample may take more only in proportion to the weights the model really holds (a big
# model has big activations; a 13 KB file that upsamples to gigabytes does not).
MAX_ACTIVATION_BYTES = 1024**3
ACTIVATIONS_PER_WEIGHT_BYTE = 16
_TINY = np.float32(1.1754944e-38)


def sample_bytes(specs: Sequence[TensorSpec], what: str = "the model") -> int:
    """The bytes one sample of these inputs takes in the check batch.

    Raises:
        IncompatibleModelsError: An input that is not numeric (strings): fuse runs and
            combines numeric tensors only (exit 4).
        ModelLoadError: One sample past `MAX_SAMPLE_BYTES`: too large to check (exit 3).
    """
    total = 0
    for i, spec in enumerate(specs):
        dtype = _numpy_dtype(spec.dtype)
        if dtype is None:
            raise IncompatibleModelsError(
                f"{what}: input {i} has dtype {spec.dtype}; fuse runs and combines models "
                "on numeric tensors only"
            )
        total += math.prod(FREE_DIM if d is None else d for d in spec.shape) * dtype.itemsize
        if total > MAX_SAMPLE_BYTES:
            shapes = ", ".join(str(s) for s in specs)
            raise ModelLoadError(
                f"{what}: inputs {shapes} take {size_text(total)} or more a sample: too "
                f"large to check (limit {size_text(MAX_SAMPLE_BYTES)} a sample)"
            )
    return total


def _numpy_dtype(name: str) -> np.dtype | None:
    if name == "bfloat16":
        return np.dtype("float32")
    try:
        dtype = np.dtype(name)
    except TypeError:
        return None
    numeric = np.issubdtype(dtype, np.number) or dtype == np.bool_
    return dtype if numeric and not np.issubdtype(dtype, np.complexfloating) else None


def batch_size(
    specs: Sequence[TensorSpec], what: str = "the model", model: keras.Model | None = None
) -> int:
    """`BATCH`, or fewer samples when one sample holds more than `MAX_BATCH_VALUES` values,
    or when the batch's activations through `model` would pass `MAX_ACTIVATION_BYTES`.

    Raises:
        IncompatibleModelsError: A non-numeric input (see `sample_bytes`).
        ModelLoadError: A sample too large to check (see `sample_bytes`), or whose
            activations through `model` pass `MAX_ACTIVATION_BYTES`.
    """
    per_sample = sample_bytes(specs, what)
    if model is not None:
        per_sample += activation_bytes(model)
        limit = MAX_ACTIVATION_BYTES + ACTIVATIONS_PER_WEIGHT_BYTE * weight_bytes(model)
        if per_sample > limit:
            raise ModelLoadError(
                f"{what}: its layers' outputs take {size_text(per_sample)} a sample on the "
                f"check batch: too large to check (limit {size_text(limit)} for its "
                f"{size_text(weight_bytes(model))} of weights; --no-verify skips the check)"
            )
    values = sum(math.prod(FREE_DIM if d is None else d for d in spec.shape) for spec in specs)
    fits = MAX_ACTIVATION_BYTES // max(1, per_sample)
    return max(1, min(BATCH, MAX_BATCH_VALUES // max(1, values), fits))


def weight_bytes(model: keras.Model) -> int:
    """The bytes of every weight the model holds (what its file really stores)."""
    total = 0
    for variable in model.weights:
        dtype = _numpy_dtype(str(variable.dtype))
        total += math.prod(variable.shape) * (dtype.itemsize if dtype is not None else 4)
    return total


def activation_bytes(model: keras.Model) -> int:
    """The bytes one sample's outputs of every layer of `model` take, nested models' layers
    included; `None` dims count as `FREE_DIM`, as in the check batch.

    A layer keeps a record of every symbolic call (a Sequential's layers were called
    while it was built, too), so each layer counts once, at its largest call.
    """
    import keras

    total = 0
    for layer in model.layers:
        calls = node_outputs(layer)
        total += max((sum(_tensor_bytes(t) for t in outputs) for outputs in calls), default=0)
        if isinstance(layer, keras.Model):
            total += activation_bytes(layer)
    return total


def _tensor_bytes(tensor: Any) -> int:
    shape = tuple(getattr(tensor, "shape", ()) or ())[1:]
    dtype = _numpy_dtype(str(getattr(tensor, "dtype", "float32")))
    itemsize = dtype.itemsize if dtype is not None else 4
    return math.prod(FREE_DIM if d is None else int(d) for d in shape) * itemsize


def sample_batch(
    specs: Sequence[TensorSpec],
    *,
    batch: int | None = None,
    seed: int = SEED,
    what: str = "the model",
    model: keras.Model | None = None,
) -> list[Any]:
    """A fixed-seed batch for the given input specs (`batch_size(specs)` samples by default).

    Floats are uniform in [0, 1); integers are 0 or 1, valid for any embedding or
    lookup; `None` dims become `FREE_DIM`.

    Raises:
        IncompatibleModelsError: A non-numeric input (see `sample_bytes`).
        ModelLoadError: A sample too large to check (see `sample_bytes`).
    """
    sample_bytes(specs, what)
    batch = batch_size(specs, what, model) if batch is None else min(batch, BATCH)
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = (batch, *(FREE_DIM if d is None else d for d in spec.shape))
        dtype = np.dtype(spec.dtype) if spec.dtype != "bfloat16" else np.dtype("float32")
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            arrays.append(rng.random(shape, dtype=np.float32).astype(dtype))
    return arrays


def run(model: keras.Model, arrays: Sequence[Any]) -> list[np.ndarray]:
    """Run `model` once on `arrays` (eagerly, no tracing) and return its flat outputs."""
    import keras

    result = model(list(arrays) if len(arrays) > 1 else arrays[0], training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(result)]


def reference(
    member_outputs: Sequence[Sequence[np.ndarray]],
    coefficients: Sequence[float],
    mode: Mode,
    renormalize: bool = False,
) -> list[np.ndarray]:
    """The formula of DESIGN §2 in numpy (float64), head by head."""
    heads = []
    for head in range(len(member_outputs[0])):
        ys = [np.asarray(outs[head], dtype=np.float64) for outs in member_outputs]
        if mode is Mode.SUM:
            y = sum(c * y_i for c, y_i in zip(coefficients, ys, strict=True))
        else:
            with np.errstate(invalid="ignore"):  # negatives give NaN, reported by compare()
                y = np.prod([y_i**c for c, y_i in zip(coefficients, ys, strict=True)], axis=0)
            if renormalize:
                y = y / np.maximum(y.sum(axis=-1, keepdims=True), _TINY)
        heads.append(np.asarray(y))
    return heads


def compare(
    actual: Sequence[np.ndarray],
    expected: Sequence[np.ndarray],
    what: str,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    against: str = "the formula",
) -> float:
    """Compare outputs to the reference within float32 tolerance.

    Args:
        actual: The outputs under test, head by head.
        expected: The reference outputs.
        what: Names the outputs under test in messages.
        rtol: Relative tolerance.
        atol: Absolute tolerance.
        against: Names the reference in messages.

    Returns:
        The largest absolute difference.

    Raises:
        VerificationError: NaN/inf, a shape difference, or values out of tolerance.
    """
    if len(actual) != len(expected):
        raise VerificationError(f"{what}: {len(actual)} outputs, expected {len(expected)}")
    worst = 0.0
    for head, (a, e) in enumerate(zip(actual, expected, strict=True)):
        where = f"{what}, output {head}" if len(actual) > 1 else what
        if a.shape != e.shape:
            raise VerificationError(f"{where}: output shape {a.shape}, expected {e.shape}")
        if not np.all(np.isfinite(a)):
            raise VerificationError(f"{where}: yields NaN or inf on the check batch")
        if not np.all(np.isfinite(e)):
            raise VerificationError(f"{where}: the members yield NaN or inf on the check batch")
        err = float(np.max(np.abs(a.astype(np.float64) - e))) if a.size else 0.0
        if not np.allclose(a, e, rtol=rtol, atol=atol):
            raise VerificationError(
                f"{where}: differs from {against} by up to {err:.3g} "
                f"(tolerance rtol={rtol}, atol={atol})"
            )
        worst = max(worst, err)
    return worst


def check_formula(
    merged: keras.Model,
    members: Sequence[keras.Model],
    coefficients: Sequence[float],
    mode: Mode,
    *,
    renormalize: bool = False,
    shared_inputs: bool,
    what: str = "merged model",
) -> float:
    """Run a fixed-seed batch through `merged` and `members` and compare with the formula.

    Returns:
        The largest absolute difference from the numpy reference.

    Raises:
        VerificationError: The merged model does not compute the formula.
    """
    # every input of the merged call, one batch size
    size = batch_size(input_specs(merged), what, merged)
    if shared_inputs:
        batch = sample_batch(input_specs(merged), batch=size, what=what)
        per_member = [batch for _ in members]
    else:
        per_member, batch = [], []
        for i, member in enumerate(members):
            arrays = sample_batch(input_specs(member), batch=size, seed=SEED + i, what=what)
            per_member.append(arrays)
            batch.extend(arrays)
    outputs = [run(m, x) for m, x in zip(members, per_member, strict=True)]
    expected = reference(outputs, coefficients, mode, renormalize)
    return compare(run(merged, batch), expected, what)


# --- fuse verify -----------------------------------------------------------------------


@dataclass
class MemberCheck:
    """One embedded member, and the original file it was checked against, if given."""

    index: int
    layer: str
    recorded_file: str | None
    recorded_sha256: str | None
    given: str | None = None
    max_abs_error: float | None = None


@dataclass
class VerifyReport:
    """What `fuse verify` checked and found."""

    file: str
    mode: str
    formula_max_abs_error: float
    provenance_recorded: bool
    members: list[MemberCheck]
    elapsed_seconds: float
    # Shared segments found in the graph (and matching the provenance): each one's
    # name and the members it feeds. Those members are checked through them.
    shared: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)




def verify_file(
    merged: str | Path,
    member_files: Sequence[str | Path] = (),
    *,
    unsafe: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Re-check a merged file, and optionally that the given files are its members.

    Args:
        merged: A file written by `fuse merge`.
        member_files: The original member files, in the order they were merged.
        unsafe: Load with Keras's safe mode off.
        progress: Called with a short description before each slow step.

    Returns:
        What was checked, with the largest differences found.

    Raises:
        UsageError: Not a merged file, or the wrong number of member files.
        ModelLoadError: A file cannot be loaded.
        VerificationError: Any disagreement: the formula, the recorded provenance,
            a member file's SHA-256 or its outputs.
    """
    start = time.perf_counter()
    say = progress or (lambda _message: None)
    merged = Path(merged)
    files = [Path(p) for p in member_files]
    for path in (merged, *files):
        check_model_path(path)
    check_keras()
    say(f"loading {merged}")
    model = load_model(merged, unsafe=unsafe).model
    layers = combining_layers(model)
    if not layers:
        raise UsageError(
            f"{merged}: not a merged model (no fuse combining layer); "
            "`fuse verify` checks files written by `fuse merge`"
        )
    embedded = embedded_members(model)
    info = _check_structure(merged, model, layers, embedded)
    provenance = layers[0].provenance if isinstance(layers[0].provenance, dict) else {}
    shared = check_record(str(merged), model, embedded, provenance.get("sharing"))
    # A shared member is its shared segments followed by its own part.
    members = member_functions(model, embedded, str(merged))
    if files and len(files) != len(members):
        raise UsageError(
            f"{merged} has {len(members)} members; got {len(files)} member "
            f"file{'' if len(files) == 1 else 's'}"
        )

    say(f"checking the formula of {merged}")
    error = check_formula(
        model,
        members,
        info.weights,
        Mode(info.mode),
        renormalize=info.renormalize,
        shared_inputs=info.inputs == "shared",
        what=str(merged),
    )
    checks = [
        MemberCheck(i, m["layer"], m["file"], m["sha256"]) for i, m in enumerate(info.members)
    ]
    if files:
        _check_member_files(merged, files, members, checks, unsafe, say)
    return VerifyReport(
        file=str(merged),
        mode=info.mode,
        formula_max_abs_error=error,
        provenance_recorded=bool(recorded_provenance(layers[0])),
        members=checks,
        elapsed_seconds=time.perf_counter() - start,
        shared=shared,
    )


def _check_structure(
    path: Path, model: keras.Model, layers: list[Any], members: list[keras.Model]
) -> EnsembleInfo:
    """The combining layers must agree with each other, the members and the provenance."""
    info = read_ensemble(model)
    assert info is not None  # the caller found combining layers
    for layer in layers[1:]:
        if mode_of(layer) != info.mode or list(layer.coefficients) != info.weights:
            raise VerificationError(
                f"{path}: combining layer {layer.name!r} ({mode_of(layer)}, "
                f"{layer.coefficients}) disagrees with {layers[0].name!r} "
                f"({info.mode}, {info.weights})"
            )
    if len(members) != len(info.weights):
        raise VerificationError(
            f"{path}: {len(info.weights)} weights but {len(members)} embedded members"
        )
    provenance = recorded_provenance(layers[0])
    recorded: dict[str, Any] = {
        "mode": (provenance.get("mode"), info.mode),
        "inputs": (provenance.get("inputs"), info.inputs),
        "renormalize": (provenance.get("renormalize"), info.renormalize),
    }
    for key, (said, found) in recorded.items():
        if said is not None and said != found:
            raise VerificationError(
                f"{path}: the provenance records {key} {_shown(said)}, but the model has "
                f"{found!r}"
            )
    weights = provenance.get("weights")
    if weights is not None and not _same_numbers(weights, info.weights):
        raise VerificationError(
            f"{path}: the provenance records weights {_shown(weights)}, but the combining layer "
            f"computes with {info.weights}"
        )
    given = provenance.get("weights_given")
    if given is not None and numbers_or_none(given) is None:
        raise VerificationError(
            f"{path}: the provenance records weights as given {_shown(given)}, not a list "
            "of numbers"
        )
    if given is not None and not _normalizes_to(given, info.weights):
        raise VerificationError(
            f"{path}: the provenance records weights as given {_shown(given)}, which do not "
            f"normalize to {info.weights}"
        )
    entries = provenance.get("members")
    if entries is not None and not isinstance(entries, list):
        raise VerificationError(
            f"{path}: the provenance records members as {_shown(entries)}, not a list"
        )
    if entries is not None and len(entries) != len(members):
        raise VerificationError(
            f"{path}: the provenance records {len(entries)} members, the model embeds "
            f"{len(members)}"
        )
    return info


def _shown(value: Any, limit: int = 80) -> str:
    """A recorded value in a message: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same_numbers(a: Sequence[Any], b: Sequence[float]) -> bool:
    try:
        return len(a) == len(b) and all(
            math.isclose(float(x), y, rel_tol=1e-9, abs_tol=1e-12)
            for x, y in zip(a, b, strict=True)
        )
    except (TypeError, ValueError):
        return False


def _normalizes_to(given: Sequence[Any], coefficients: Sequence[float]) -> bool:
    try:
        total = math.fsum(float(w) for w in given)
    except (TypeError, ValueError):
        return False
    return total > 0 and _same_numbers([float(w) / total for w in given], coefficients)


def _check_member_files(
    merged: Path,
    files: Sequence[Path],
    members: Sequence[keras.Model],
    checks: list[MemberCheck],
    unsafe: bool,
    say: Progress,
) -> None:
    hashes = [sha256_of(path) for path in files]
    recorded = [c.recorded_sha256 for c in checks]
    for i, (path, digest, check) in enumerate(zip(files, hashes, checks, strict=True)):
        check.given = str(path)
        if check.recorded_sha256 is None:
            raise VerificationError(
                f"{path}: {merged} records no SHA-256 for member {i}, so it cannot be "
                "confirmed"
            )
        if digest != check.recorded_sha256:
            hint = ""
            if digest in recorded:
                hint = (
                    f"; it is member {recorded.index(digest)}: give the member files in "
                    "the order they were merged"
                )
            raise VerificationError(
                f"{path}: SHA-256 {digest[:12]}… is not the one {merged} records for "
                f"member {i} ({check.recorded_file}: {check.recorded_sha256[:12]}…){hint}"
            )
    for i, (path, embedded, check) in enumerate(zip(files, members, checks, strict=True)):
        say(f"comparing {path} with its embedded copy")
        original = load_model(path, unsafe=unsafe).model
        if shared_input_specs([original, embedded]) is None:
            raise VerificationError(
                f"{merged}: embedded member {i} ({embedded.name}) takes inputs "
                f"{_specs_text(embedded)}, but {path} takes {_specs_text(original)}"
            )
        batch = sample_batch(input_specs(original), seed=SEED + i, what=str(path),
                             model=original)
        check.max_abs_error = compare(
            run(embedded, batch),
            run(original, batch),
            f"{merged}: embedded member {i} ({embedded.name})",
            against=str(path),
        )


def _specs_text(model: keras.Model) -> str:
    return ", ".join(f"{spec} {spec.dtype}" for spec in input_specs(model))
