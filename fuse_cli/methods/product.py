"""The weighted product: `y = Π y_i ^ w_i`, the weighted geometric mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.compatibility import check_nonnegative, check_output_kinds
from fuse_cli.errors import IncompatibleModelsError, UsageError
from fuse_cli.methods.base import MergeMethod, Transforms

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions

# Smallest normal float32: guards the renormalizing division where every class
# underflowed to zero (the layer uses the same constant).
TINY = np.float32(1.1754944e-38)
# log(0) that stays 0 under a zero weight, as 0**0 == 1 in the layer.
LOG_ZERO = -1e30


class WeightedProductMethod(MergeMethod):
    """Weighted geometric mean of non-negative outputs, optionally renormalized."""

    name = "product"
    layer_name = "WeightedProduct"
    summary = "Π y_i^w_i (weighted geometric mean)"

    def check_options(self, options: MergeOptions) -> None:
        if options.allow_mixed_outputs:
            raise UsageError("--allow-mixed-outputs applies to --mode sum only")

    def check_members(
        self, models: Sequence[keras.Model], labels: Sequence[str], options: MergeOptions
    ) -> Transforms:
        """Every output must be provably >= 0, after any `--to-probabilities`."""
        transforms = check_output_kinds(models, labels, allow_mixed=True,
                                        to_probabilities=options.to_probabilities)
        check_nonnegative(models, labels, assume=options.assume_nonnegative,
                          transforms=transforms)
        return transforms

    def layer_arguments(self, options: MergeOptions) -> dict[str, Any]:
        return {"renormalize": options.renormalize}

    def combine(
        self, outputs: Sequence[np.ndarray], coefficients: Sequence[float], renormalize: bool
    ) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # negatives give NaN, reported by the comparison
            y = np.prod([y_i**c for c, y_i in zip(coefficients, outputs, strict=True)], axis=0)
        if renormalize:
            y = y / np.maximum(y.sum(axis=-1, keepdims=True), TINY)
        return np.asarray(y)

    def formula_text(
        self, labels: Sequence[str], weights: Sequence[float], renormalize: bool
    ) -> str:
        product = " * ".join(f"{label}^{w:.6g}" for label, w in zip(labels, weights, strict=True))
        return f"({product}) / sum over the last axis" if renormalize else product

    def search_values(self, block: np.ndarray) -> np.ndarray:
        # In log space the weighted product is a weighted sum.
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(block)
        return np.where(block > 0, logs, block.dtype.type(LOG_ZERO))

    def probabilities(self, combined: np.ndarray) -> np.ndarray:
        return np.exp(combined)  # type: ignore[no-any-return]

    def label_log_probability(
        self, combined: np.ndarray, true: np.ndarray, top: np.ndarray, low: float, high: float
    ) -> np.ndarray:
        # Renormalized in log space: renormalizing or not changes no score.
        log_p = true - top - np.log(np.exp(combined - top[:, None]).sum(axis=1))
        return np.clip(log_p, np.log(low), np.log(high))  # type: ignore[no-any-return]

    def check_scores(self, output: np.ndarray, label: str, data: str) -> None:
        if output.min() < 0:
            raise IncompatibleModelsError(
                f"{label}: product mode needs outputs >= 0, but it yields {output.min():.4g} "
                f"on {data}"
            )
