"""Proving that a merged model computes its formula.

The reference is computed with numpy from the members' own outputs, never from the
combining layers, so a wrong coefficient or a lost layer cannot check itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.ensemble import Mode, TensorSpec
from fuse_cli.errors import VerificationError

if TYPE_CHECKING:
    import keras

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
    from fuse_cli.ensemble import input_specs

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
