"""Proving that a model computes its formula: the check batch, the numpy reference, the
comparison.

The reference is computed with numpy from the members' own outputs, never from the
combining layers, so a wrong coefficient or a lost layer cannot check itself. The check
batch is fixed-seed and bounded: a file costs what it stores, so a model that declares
huge inputs or activations is refused before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.choices import Mode
from fuse_cli.compatibility import TensorSpec, input_specs
from fuse_cli.errors import IncompatibleModelsError, ModelLoadError, VerificationError
from fuse_cli.formats._keras_private import graph_nodes, node_outputs
from fuse_cli.formats.screening import size_text
from fuse_cli.methods import method_for

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
# One sample of the check batch's inputs may take at most this much (a file costs what
# it stores: a 13 KB model may not declare an input of 2^27 values, 512 MiB a sample).
MAX_SAMPLE_BYTES = 64 * 1024**2
# What the check batch may hold at once: its inputs and every layer's outputs (an eager
# call keeps them until it returns). The batch shrinks to fit, down to one sample; one
# sample may take more only in proportion to the weights the model really holds (a big
# model has big activations; a 13 KB file that upsamples to gigabytes does not).
MAX_ACTIVATION_BYTES = 1024**3
ACTIVATIONS_PER_WEIGHT_BYTE = 16
# A prediction pass over data (evaluate, tune) holds at most this much at once: its rows'
# inputs and, per row, a few of the largest activations (input, output and a residual).
PREDICT_BYTES = 512 * 1024**2
LIVE_ACTIVATIONS = 3


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


def prediction_batch(model: keras.Model, requested: int, what: str) -> int:
    """The batch a prediction pass over data may use: `requested` rows, or fewer so that
    what the batch holds at once stays within `PREDICT_BYTES` (down to one row).

    A compiled predict frees each activation once its last consumer has run, so what a
    sample holds at once is taken as its input plus `LIVE_ACTIVATIONS` times the largest
    layer output (or attention scores), not every output added up; whether one sample
    may run at all is the check batch's rule (`batch_size`).

    Raises:
        IncompatibleModelsError, ModelLoadError: See `batch_size` (one sample too large).
    """
    specs = input_specs(model)
    batch_size(specs, what, model)
    per_sample = sample_bytes(specs, what) + LIVE_ACTIVATIONS * peak_bytes(model)
    return max(1, min(requested, PREDICT_BYTES // max(1, per_sample)))


def peak_bytes(model: keras.Model) -> int:
    """The largest single layer output (or attention score matrices) one sample makes in
    `model`, nested models included."""
    import keras

    nodes = graph_nodes(model)
    if nodes is None:
        return max((sum(_tensor_bytes(t) for t in outputs) for layer in model.layers
                    for outputs in node_outputs(layer)), default=0)
    peak = 0
    for node in nodes:
        own = sum(_tensor_bytes(t) for t in node.outputs) + _attention_bytes(node.operation, node)
        inner = peak_bytes(node.operation) if isinstance(node.operation, keras.Model) else 0
        peak = max(peak, own, inner)
    return peak


def check_batch_bound(model: keras.Model, what: str) -> None:
    """A model's check batch must be numeric and bounded (see `batch_size`): said before
    anything is built.

    Raises:
        IncompatibleModelsError, ModelLoadError: See `batch_size`.
    """
    batch_size(input_specs(model), what, model)


def weight_bytes(model: keras.Model) -> int:
    """The bytes of every weight the model holds (what its file really stores)."""
    total = 0
    for variable in model.weights:
        dtype = _numpy_dtype(str(variable.dtype))
        total += math.prod(variable.shape) * (dtype.itemsize if dtype is not None else 4)
    return total


def activation_bytes(model: keras.Model) -> int:
    """The bytes one sample keeps through `model`: every layer call's outputs (a layer
    called N times keeps N), nested models' own per call, and what attention layers hold
    inside (their score matrices, never a layer output); `None` dims count as `FREE_DIM`,
    as in the check batch.
    """
    import keras

    nodes = graph_nodes(model)
    if nodes is None:  # not a graph (a subclassed model): each layer at its largest call
        return sum(max((sum(_tensor_bytes(t) for t in outputs)
                        for outputs in node_outputs(layer)), default=0)
                   for layer in model.layers)
    total = 0
    for node in nodes:
        operation = node.operation
        total += sum(_tensor_bytes(t) for t in node.outputs)
        total += _attention_bytes(operation, node)
        if isinstance(operation, keras.Model):
            total += activation_bytes(operation)
    return total


_ATTENTION = {"MultiHeadAttention": "num_heads", "GroupedQueryAttention": "num_query_heads",
              "Attention": None, "AdditiveAttention": None}


def _attention_bytes(layer: Any, node: Any) -> int:
    """Scores and their softmax, `heads x query length x key length`, float32, twice."""
    kind = type(layer).__name__
    if kind not in _ATTENTION:
        return 0
    heads_attribute = _ATTENTION[kind]
    heads = int(getattr(layer, heads_attribute, 1) or 1) if heads_attribute else 1
    tensors = list(getattr(node, "input_tensors", None) or [])
    if len(tensors) < 2:
        return 0

    def length(tensor: Any) -> int:
        shape = tuple(getattr(tensor, "shape", ()) or ())[1:-1]
        return math.prod(FREE_DIM if d is None else int(d) for d in shape)

    return 2 * 4 * heads * length(tensors[0]) * length(tensors[1])


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
    transforms: Sequence[Sequence[str | None]] | None = None,
) -> list[np.ndarray]:
    """The formula of DESIGN §2 in numpy (float64), head by head.

    Args:
        member_outputs: Each member's outputs, head by head.
        coefficients: The normalized weights.
        mode: Weighted sum or weighted product.
        renormalize: Product mode: divide by the sum over the last axis.
        transforms: Per member and head, `"softmax"` or `"sigmoid"` to apply to that
            output first (`--to-probabilities`), or None.
    """
    heads = []
    for head in range(len(member_outputs[0])):
        ys = [np.asarray(outs[head], dtype=np.float64) for outs in member_outputs]
        if transforms is not None:
            ys = [apply_activation(y, added[head]) for y, added in zip(ys, transforms, strict=True)]
        heads.append(method_for(mode).combine(ys, coefficients, renormalize))
    return heads


def apply_activation(y: np.ndarray, activation: str | None) -> np.ndarray:
    """softmax over the last axis or sigmoid (what `--to-probabilities` appends), in numpy."""
    if activation is None:
        return y
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if activation == "softmax":
        shifted = np.exp(y - y.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    raise ValueError(f"no numpy reference for activation {activation!r}")


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
    transforms: Sequence[Sequence[str | None]] | None = None,
    what: str = "merged model",
    calibration: Sequence[float] = (),
    member_inputs: Callable[[list[Any]], list[list[Any]]] | None = None,
) -> float:
    """Run a fixed-seed batch through `merged` and `members` and compare with the formula.

    `transforms` are the activations `--to-probabilities` appended to members' outputs
    (see `reference`); they are applied to the members' own outputs in numpy.

    Returns:
        The largest absolute difference from the numpy reference.

    Raises:
        VerificationError: The merged model does not compute the formula.
    """
    # every input of the merged call, one batch size
    size = batch_size(input_specs(merged), what, merged)
    if member_inputs is not None:  # `--inputs image`: each member behind its preprocessing
        batch = sample_batch(input_specs(merged), batch=size, what=what)
        per_member = member_inputs(batch)
    elif shared_inputs:
        batch = sample_batch(input_specs(merged), batch=size, what=what)
        per_member = [batch for _ in members]
    else:
        per_member, batch = [], []
        for i, member in enumerate(members):
            arrays = sample_batch(input_specs(member), batch=size, seed=SEED + i, what=what)
            per_member.append(arrays)
            batch.extend(arrays)
    outputs = [run(m, x) for m, x in zip(members, per_member, strict=True)]
    expected = reference(outputs, coefficients, mode, renormalize, transforms)
    if calibration:  # `fuse tune --calibrate`: a temperature per head, after the formula
        from fuse_cli.calibration import apply_temperature

        expected = [apply_temperature(e, t) for e, t in zip(expected, calibration, strict=True)]
    return compare(run(merged, batch), expected, what)

