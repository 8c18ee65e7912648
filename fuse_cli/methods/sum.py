"""The weighted sum: `y = Σ w_i · y_i` (the seed's `a·out1 + (1-a)·out2`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fuse_cli.compatibility import check_output_kinds
from fuse_cli.errors import UsageError
from fuse_cli.methods.base import MergeMethod, Transforms

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions


class WeightedSumMethod(MergeMethod):
    """Weighted arithmetic mean of the members' outputs."""

    name = "sum"
    layer_name = "WeightedSum"
    summary = "Σ w_i·y_i"

    def check_options(self, options: MergeOptions) -> None:
        if options.renormalize:
            raise UsageError("--renormalize applies to --mode product only")

    def check_members(
        self, models: Sequence[keras.Model], labels: Sequence[str], options: MergeOptions
    ) -> Transforms:
        """Probabilities and raw scores are not added unless the user says how."""
        return check_output_kinds(models, labels, allow_mixed=options.allow_mixed_outputs,
                                  to_probabilities=options.to_probabilities)

    def combine(
        self, outputs: Sequence[np.ndarray], coefficients: Sequence[float], renormalize: bool
    ) -> np.ndarray:
        return np.asarray(sum(c * y for c, y in zip(coefficients, outputs, strict=True)))

    def formula_text(
        self, labels: Sequence[str], weights: Sequence[float], renormalize: bool
    ) -> str:
        return " + ".join(f"{w:.6g} * {label}" for label, w in zip(labels, weights, strict=True))

    def label_log_probability(
        self, combined: np.ndarray, true: np.ndarray, top: np.ndarray, low: float, high: float
    ) -> np.ndarray:
        # Each row divided by its sum, as Keras's categorical cross-entropy does.
        total = np.maximum(combined.sum(axis=1), np.finfo(combined.dtype).tiny)
        return np.log(np.clip(true / total, low, high))  # type: ignore[no-any-return]
