"""What every merge method is: one object that owns its options, checks, layer, formula
and scores.

A method is looked up by its `--mode` name in `fuse_cli.methods.METHODS`; nothing else in
fuse branches on the mode. The merged file's combining layer is the method's
(`fuse_cli.layers`, registered as `fuse><layer_name>`); the numpy reference that
verification compares the file with, and the scores tune's search optimizes, come from
the same object, so the layer, the proof and the search cannot drift apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions, MergePlan
    from fuse_cli.report import Progress

Transforms = list[list[str | None]]


@dataclass
class Head:
    """One output of a merged model, as its merge method combines it.

    Attributes:
        name: The output layer's name (`combine`, `combine_<h>`).
        mode: The merge method's name.
        coefficients: One weight per member, as the graph computes with them.
        renormalize: Product mode: divided by the sum over the last axis.
        inputs: Per member, the tensor the head combines (a member's output, or the
            activation `--to-probabilities` appended to it).
        layer: The layer that makes the head's output.
        record: The provenance a fuse layer of an older file keeps in its config.
    """

    name: str
    mode: str
    coefficients: list[float]
    renormalize: bool
    inputs: list[Any]
    layer: Any
    record: dict[str, Any] = field(default_factory=dict)


class MergeMethod(ABC):
    """One way of combining member outputs, e.g. the weighted sum.

    Attributes:
        name: The `--mode` value.
        layer_name: The class name of its combining layer in `fuse_cli.layers`.
        summary: One line for help texts and reports.
    """

    name: str
    layer_name: str
    summary: str

    # --- before anything is built ----------------------------------------------------

    def check_options(self, options: MergeOptions) -> None:
        """Refuse options that do not apply to this method (exit 2).

        Raises:
            UsageError: Naming the option and the mode it is for.
        """
        return None

    @abstractmethod
    def check_members(
        self, models: Sequence[keras.Model], labels: Sequence[str], options: MergeOptions
    ) -> Transforms:
        """Whether these members' outputs can be combined this way (exit 4 if not).

        Returns:
            Per member and output, the activation `--to-probabilities` appends, or None.
        """

    # --- the merged graph ------------------------------------------------------------

    def layer_class(self) -> type[Any]:
        """The combining layer (imports Keras)."""
        from fuse_cli import layers

        return getattr(layers, self.layer_name)  # type: ignore[no-any-return]

    def layer_arguments(self, options: MergeOptions) -> dict[str, Any]:
        """Arguments of the combining layer beyond its coefficients."""
        return {}

    # Whether the merged file loads in plain Keras (Keras's own layers only).
    plain_keras: bool = False

    def build_head(
        self, inputs: list[Any], coefficients: Sequence[float], options: MergeOptions, name: str
    ) -> Any:
        """One head of the merged graph: `inputs` (one tensor per member) combined."""
        layer = self.layer_class()(list(coefficients), name=name, **self.layer_arguments(options))
        return layer(inputs)

    def find_heads(self, model: keras.Model) -> list[Head]:
        """The heads this method combines in a merged model (its fuse layers)."""
        from fuse_cli.formats._keras_private import inbound_nodes

        kind = self.layer_class()
        heads = []
        for layer in model.layers:
            if isinstance(layer, kind):
                nodes = inbound_nodes(layer)
                provenance = getattr(layer, "provenance", None)
                heads.append(Head(
                    name=layer.name, mode=self.name,
                    coefficients=[float(c) for c in layer.coefficients],
                    renormalize=bool(getattr(layer, "renormalize", False)),
                    inputs=list(nodes[0].input_tensors) if nodes else [], layer=layer,
                    record=provenance if isinstance(provenance, dict) else {},
                ))
        return heads

    # Whether the method combines the members' outputs (a graph of every member, which
    # `fuse_cli.ensemble` wires) or their variables (one model of their architecture).
    combines_outputs: bool = True

    def build(self, plan: MergePlan, say: Progress) -> tuple[keras.Model, dict[str, Any]]:
        """The merged model of a plan (the members become part of it), and what the
        provenance records of the build beyond the plan's record."""
        from fuse_cli.ensemble import build

        return build(plan), {}

    def check_written(
        self, written: keras.Model, built: keras.Model, plan: MergePlan, what: str
    ) -> float:
        """Prove the model reloaded from OUT computes what the plan says (exit 6 if not).

        Returns:
            The largest absolute difference found.
        """
        from fuse_cli.formula import check_formula
        from fuse_cli.image_input import branch_models, feeder

        inputs = plan.combination.plan
        feed = (feeder(branch_models(inputs, plan.options.images))
                if inputs.image is not None else None)
        return check_formula(
            written, plan.models, plan.weights, plan.options.mode,
            renormalize=plan.options.renormalize, shared_inputs=inputs.shared,
            transforms=plan.combination.transforms, what=what, calibration=plan.calibration,
            member_inputs=feed,
        )

    def plan_warnings(self, options: MergeOptions) -> list[str]:
        """What the report must say about any merge of this kind."""
        return []

    # --- the numpy reference -----------------------------------------------------------

    @abstractmethod
    def combine(
        self, outputs: Sequence[np.ndarray], coefficients: Sequence[float], renormalize: bool
    ) -> np.ndarray:
        """The formula of DESIGN §2 on one head, in float64."""

    @abstractmethod
    def formula_text(
        self, labels: Sequence[str], weights: Sequence[float], renormalize: bool
    ) -> str:
        """The formula in words, e.g. `0.3 * a.keras + 0.7 * b.h5`."""

    # --- tune's search -----------------------------------------------------------------

    def search_values(self, block: np.ndarray) -> np.ndarray:
        """Member outputs as the search combines them linearly (the sum: as they are)."""
        return block

    def probabilities(self, combined: np.ndarray) -> np.ndarray:
        """A single sigmoid column's probability from `search_values` combined linearly."""
        return combined

    @abstractmethod
    def label_log_probability(
        self, combined: np.ndarray, true: np.ndarray, top: np.ndarray, low: float, high: float
    ) -> np.ndarray:
        """`log p(label)` per row from the linear combination of `search_values`.

        Args:
            combined: `(G, C, m)`, one combination per weight vector, class-major.
            true: `(G, m)`, the combination's value at each row's label.
            top: `(G, m)`, its largest value over the classes.
            low: The smallest probability counted (clipping, as Keras's cross-entropy).
            high: The largest.
        """

    def check_scores(self, output: np.ndarray, label: str, data: str) -> None:
        """Refuse outputs this method cannot combine, seen on data (exit 4)."""
        return None
