"""The soup: `θ = Σ w_i · θ_i`, one model whose variables are the members' weighted average.

It costs one member's forward pass instead of N, and it is right only where the members
were fine-tuned from one starting point; see `fuse_cli.soup` for the averaging and the
BatchNormalization statistics, `fuse_cli.soup_tuning` for the greedy soup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.errors import UsageError
from fuse_cli.methods.base import Head, MergeMethod, Transforms

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions, MergePlan
    from fuse_cli.report import Progress

NO_DATA_WARNING = (
    "soup: no data, so fuse cannot tell whether the average is any good; it is only for "
    "members fine-tuned from one starting point (independently trained ones average to "
    "near chance). Measure it: fuse tune --mode soup --data DATA"
)


class SoupMethod(MergeMethod):
    """The weighted average of the members' variables: one model of their architecture,
    Keras's own layers only (it loads with plain `keras.saving.load_model`)."""

    name = "soup"
    layer_name = ""
    summary = "Σ w_i·θ_i (one model: the members' variables averaged)"
    plain_keras = True
    combines_outputs = False

    def check_options(self, options: MergeOptions) -> None:
        from fuse_cli.choices import InputsMode

        refused = {
            "--renormalize": options.renormalize,
            "--assume-nonnegative": options.assume_nonnegative,
            "--allow-mixed-outputs": options.allow_mixed_outputs,
            "--to-probabilities": options.to_probabilities,
            "--inputs separate": options.inputs is InputsMode.SEPARATE,
            "--inputs image": options.inputs is InputsMode.IMAGE,
        }
        for option, given in refused.items():
            if given:
                raise UsageError(
                    f"{option} does not apply to --mode soup: a soup is one model with "
                    "the members' own inputs and outputs"
                )

    def check_members(
        self, models: Sequence[keras.Model], labels: Sequence[str], options: MergeOptions
    ) -> Transforms:
        """One architecture, equal integer variables (exit 4 naming what differs)."""
        from fuse_cli.soup import check_architecture

        check_architecture(models, labels)
        return [[None] * len(m.outputs) for m in models]

    def find_heads(self, model: keras.Model) -> list[Head]:
        return []  # a soup has no combining layer: its record says what it is

    def build(self, plan: MergePlan, say: Progress) -> tuple[keras.Model, dict[str, Any]]:
        """A model of the first member's architecture holding the weighted average of
        every member's variables; with `--recompute-bn`, BatchNormalization's moving
        statistics then estimated again on the data."""
        from fuse_cli import soup

        options = plan.options
        model = soup.rebuild(plan.models[0], options.name)
        floats = [soup.is_float(v) for v in soup.variables(model)]
        soup.assign(model, soup.soup_values([soup.values(m) for m in plan.models], floats,
                                            plan.weights))
        record: dict[str, Any] = {"averaged": sum(floats), "copied": len(floats) - sum(floats)}
        if options.recompute_bn is None:
            record["batchnorm"] = {"statistics": "averaged"}
        else:
            from fuse_cli.soup_data import recompute_on_data

            found = recompute_on_data(model, plan.labels[0], options, say=say)
            record["batchnorm"] = {"statistics": "recomputed", **found}
        return model, {"soup": record}

    def check_written(
        self, written: keras.Model, built: keras.Model, plan: MergePlan, what: str
    ) -> float:
        """Every variable is the members' weighted average, bit for bit (re-estimated
        BatchNormalization statistics: the soup's own), and the file predicts what the
        soup built in memory predicts on the check batch."""
        from fuse_cli import soup
        from fuse_cli.compatibility import input_specs
        from fuse_cli.formula import compare, run, sample_batch

        floats = [soup.is_float(v) for v in soup.variables(built)]
        expected = soup.soup_values([soup.values(m) for m in plan.models], floats,
                                    plan.weights)
        if plan.options.recompute_bn is not None:
            recomputed = {id(v) for layer in soup.batchnorm_layers(built)
                          for v in (layer.moving_mean, layer.moving_variance)}
            own = soup.values(built)
            expected = [own[k] if id(v) in recomputed else e
                        for k, (v, e) in enumerate(zip(soup.variables(built), expected,
                                                       strict=True))]
        paths = [v.path for v in soup.variables(written)]
        soup.check_values(soup.values(written), expected, paths, what)
        batch = sample_batch(input_specs(written), what=what, model=written)
        return compare(run(written, batch), run(built, batch), what,
                       against="the soup built in memory")

    def plan_warnings(self, options: MergeOptions) -> list[str]:
        return [NO_DATA_WARNING]

    def combine(
        self, outputs: Sequence[np.ndarray], coefficients: Sequence[float], renormalize: bool
    ) -> np.ndarray:
        raise TypeError("a soup averages variables, not outputs")

    def formula_text(
        self, labels: Sequence[str], weights: Sequence[float], renormalize: bool
    ) -> str:
        terms = " + ".join(f"{w:.6g} * {label}" for label, w in zip(labels, weights, strict=True))
        return f"variables = {terms}"

    def label_log_probability(
        self, combined: np.ndarray, true: np.ndarray, top: np.ndarray, low: float, high: float
    ) -> Any:
        raise TypeError("a soup averages variables, not outputs")
