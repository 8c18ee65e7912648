"""The layers that combine member outputs in a merged model, one per merge method.

A merged `.keras` or `.h5` file refers to these layers by their registered names
(`fuse>WeightedSum`, `fuse>WeightedProduct`), so loading one needs
`import fuse_cli.layers` first and no `custom_objects` (fuse's own loader does it).
As Keras's merging layers share `Merge`, these share `_WeightedMerge`: the base checks
the inputs against the coefficients and keeps the config; each layer supplies only
`_merge_function`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Smallest normal float32: guards the renormalizing division where every class of a
# weighted product underflowed to zero, without moving any other value.
_TINY = 1.1754944e-38


class _WeightedMerge(keras.layers.Layer):
    """Shared base: one coefficient per input, checked and kept in the config.

    Args:
        coefficients: One non-negative weight per input, summing to 1.
        provenance: What the merged model records about how it was made (mode,
            weights as given, member files and their SHA-256). Stored, never used
            in the computation.
        **kwargs: Standard layer arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        coefficients: list[float],
        provenance: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.coefficients = [float(c) for c in coefficients]
        if len(self.coefficients) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 coefficients. "
                f"Received: coefficients={self.coefficients}"
            )
        self.provenance = provenance

    def call(self, inputs: list[Any]) -> Any:
        if len(inputs) != len(self.coefficients):
            raise ValueError(
                f"{type(self).__name__} has {len(self.coefficients)} coefficients "
                f"but received {len(inputs)} inputs."
            )
        return self._merge_function(inputs)

    def _merge_function(self, inputs: list[Any]) -> Any:
        raise NotImplementedError

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"coefficients": self.coefficients, "provenance": self.provenance})
        return config


@keras.saving.register_keras_serializable(package="fuse")
class WeightedSum(_WeightedMerge):
    """Weighted arithmetic mean of its inputs: `y = sum_i c_i * x_i`.

    Args:
        coefficients: One weight per input, non-negative, summing to 1.
        provenance: Optional metadata recorded in the saved model.
        **kwargs: Standard layer arguments.
    """

    def _merge_function(self, inputs: list[Any]) -> Any:
        total = inputs[0] * self.coefficients[0]
        for x, c in zip(inputs[1:], self.coefficients[1:], strict=True):
            total = total + x * c
        return total


@keras.saving.register_keras_serializable(package="fuse")
class WeightedProduct(_WeightedMerge):
    """Weighted geometric mean of non-negative inputs: `y = prod_i x_i ** c_i`.

    With `renormalize=True`, `y` is divided by its sum over the last axis, so that
    the result is again a probability distribution.

    Args:
        coefficients: One weight per input, non-negative, summing to 1.
        renormalize: Divide by the sum over the last axis.
        provenance: Optional metadata recorded in the saved model.
        **kwargs: Standard layer arguments.
    """

    def __init__(
        self,
        coefficients: list[float],
        renormalize: bool = False,
        provenance: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(coefficients, provenance=provenance, **kwargs)
        self.renormalize = bool(renormalize)

    def _merge_function(self, inputs: list[Any]) -> Any:
        # power(x, 0) is 1 even for x == 0, so a zero weight drops its member cleanly,
        # which exp(sum(c * log(x))) would turn into NaN.
        result = ops.power(inputs[0], self.coefficients[0])
        for x, c in zip(inputs[1:], self.coefficients[1:], strict=True):
            result = result * ops.power(x, c)
        if self.renormalize:
            total = ops.sum(result, axis=-1, keepdims=True)
            result = result / ops.maximum(total, _TINY)
        return result

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["renormalize"] = self.renormalize
        return config


@keras.saving.register_keras_serializable(package="fuse")
class Keras2HardSigmoid:
    """Keras 2's `hard_sigmoid` activation: `clip(0.2 * x + 0.5, 0, 1)`.

    Keras 3 kept the name for another function, `relu6(x + 3) / 6`, so a legacy file
    that names `hard_sigmoid` (every LSTM/GRU written by Keras <= 2.2, whose default
    `recurrent_activation` it was) is migrated to this object by the legacy rule
    `keras2_hard_sigmoid`. An activation object rather than a function, so that a merged
    model refers to it by this module and its registered name, `fuse>Keras2HardSigmoid`.
    """

    def __call__(self, x: Any) -> Any:
        return ops.clip(x * 0.2 + 0.5, 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Keras2HardSigmoid:
        return cls()
