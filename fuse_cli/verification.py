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
from fuse_cli.errors import UsageError, VerificationError
from fuse_cli.formats import check_keras, check_model_path, load_model, sha256_of
from fuse_cli.inspection import (
    EnsembleInfo,
    combining_layers,
    embedded_members,
    mode_of,
    read_ensemble,
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
_TINY = np.float32(1.1754944e-38)


def batch_size(specs: Sequence[TensorSpec]) -> int:
    """`BATCH`, or fewer samples when one sample holds more than `MAX_BATCH_VALUES` values."""
    values = sum(math.prod(FREE_DIM if d is None else d for d in spec.shape) for spec in specs)
    return max(1, min(BATCH, MAX_BATCH_VALUES // max(1, values)))


def sample_batch(
    specs: Sequence[TensorSpec], *, batch: int | None = None, seed: int = SEED
) -> list[Any]:
    """A fixed-seed batch for the given input specs (`batch_size(specs)` samples by default).

    Floats are uniform in [0, 1); integers are 0 or 1, valid for any embedding or
    lookup; `None` dims become `FREE_DIM`.
    """
    batch = batch_size(specs) if batch is None else batch
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
    size = batch_size(input_specs(merged))  # every input of the merged call, one batch size
    if shared_inputs:
        batch = sample_batch(input_specs(merged), batch=size)
        per_member = [batch for _ in members]
    else:
        per_member, batch = [], []
        for i, member in enumerate(members):
            arrays = sample_batch(input_specs(member), batch=size, seed=SEED + i)
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
    members = member_functions(model, embedded)
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
        provenance_recorded=bool(layers[0].provenance),
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
    provenance = layers[0].provenance if isinstance(layers[0].provenance, dict) else {}
    recorded: dict[str, Any] = {
        "mode": (provenance.get("mode"), info.mode),
        "inputs": (provenance.get("inputs"), info.inputs),
        "renormalize": (provenance.get("renormalize"), info.renormalize),
    }
    for key, (said, found) in recorded.items():
        if said is not None and said != found:
            raise VerificationError(
                f"{path}: the provenance records {key} {said!r}, but the model has {found!r}"
            )
    weights = provenance.get("weights")
    if weights is not None and not _same_numbers(weights, info.weights):
        raise VerificationError(
            f"{path}: the provenance records weights {weights}, but the combining layer "
            f"computes with {info.weights}"
        )
    given = provenance.get("weights_given")
    if given is not None and not _normalizes_to(given, info.weights):
        raise VerificationError(
            f"{path}: the provenance records weights as given {given}, which do not "
            f"normalize to {info.weights}"
        )
    entries = provenance.get("members")
    if entries is not None and len(entries) != len(members):
        raise VerificationError(
            f"{path}: the provenance records {len(entries)} members, the model embeds "
            f"{len(members)}"
        )
    return info


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
        batch = sample_batch(input_specs(original), seed=SEED + i)
        check.max_abs_error = compare(
            run(embedded, batch),
            run(original, batch),
            f"{merged}: embedded member {i} ({embedded.name})",
            against=str(path),
        )


def _specs_text(model: keras.Model) -> str:
    return ", ".join(f"{spec} {spec.dtype}" for spec in input_specs(model))
