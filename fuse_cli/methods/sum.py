"""The weighted sum: `y = Σ w_i · y_i` (the seed's `a·out1 + (1-a)·out2`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.compatibility import check_output_kinds
from fuse_cli.errors import UsageError
from fuse_cli.methods.base import Head, MergeMethod, Transforms

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions


WEIGHT_SUFFIX = "_weight_"


class WeightedSumMethod(MergeMethod):
    """Weighted arithmetic mean of the members' outputs, in Keras's own layers.

    Each member's output is scaled by its weight (`Rescaling(w_i)`, named
    `<head>_weight_<i>`) and the scaled outputs are added (`Add`, named `combine` or
    `combine_<h>`): the file loads with plain `keras.saving.load_model`, nothing of fuse
    installed. Files of earlier fuse releases hold `fuse>WeightedSum`, still read.
    """

    name = "sum"
    layer_name = "WeightedSum"
    summary = "Σ w_i·y_i"
    plain_keras = True

    def build_head(
        self, inputs: list[Any], coefficients: Sequence[float], options: MergeOptions, name: str
    ) -> Any:
        import keras

        scaled = [
            keras.layers.Rescaling(float(c), name=f"{name}{WEIGHT_SUFFIX}{i}")(x)
            for i, (x, c) in enumerate(zip(inputs, coefficients, strict=True))
        ]
        return keras.layers.Add(name=name)(scaled)

    def find_heads(self, model: keras.Model) -> list[Head]:
        """`fuse>WeightedSum` layers (older files), and `Add` layers named `combine*` whose
        every input is a `Rescaling` (no offset) named `<head>_weight_<i>`."""
        import keras

        from fuse_cli.formats._keras_private import inbound_nodes, keras_history

        heads = super().find_heads(model)
        for layer in model.layers:
            if not (isinstance(layer, keras.layers.Add) and layer.name.startswith("combine")):
                continue
            nodes = inbound_nodes(layer)
            scalings = [keras_history(t) for t in (nodes[0].input_tensors if nodes else [])]
            weights, inputs = [], []
            for i, history in enumerate(scalings):
                scaling = history[0] if history else None
                if not (isinstance(scaling, keras.layers.Rescaling)
                        and scaling.name == f"{layer.name}{WEIGHT_SUFFIX}{i}"
                        and float(scaling.offset) == 0.0
                        and isinstance(scaling.scale, int | float)):
                    break
                weights.append(float(scaling.scale))
                inputs.extend(inbound_nodes(scaling)[0].input_tensors)
            else:
                if len(weights) >= 2:
                    heads.append(Head(layer.name, self.name, weights, False, inputs, layer))
        return heads

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
