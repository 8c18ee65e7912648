"""What a merge did, as plain data: rendered by the CLI, returned to Python callers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MemberReport:
    """One member as loaded and placed in the ensemble."""

    file: str
    name: str
    format: str
    sha256: str
    size: int
    input_shapes: list[str]
    output_shapes: list[str]
    params: int
    weight_given: float
    weight: float
    last_activations: list[str | None] = field(default_factory=list)
    keras_version: str | None = None
    migrations: list[str] = field(default_factory=list)


@dataclass
class MergeReport:
    """The facts of one merge, as shown in the table and in `--json`."""

    output: str
    mode: str
    formula: str
    inputs: str
    renormalize: bool
    members: list[MemberReport]
    size: int
    verified: bool
    max_abs_error: float | None
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)
    # `--export`: one `fuse_cli.export.ExportReport` per artifact written beside OUT.
    exports: list[Any] = field(default_factory=list)
    # What members share and compute once (`fuse_cli.sharing.sharing_record`).
    sharing: dict[str, Any] | None = None

    @property
    def weights(self) -> list[float]:
        """The normalized weights, in member order."""
        return [m.weight for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        data = asdict(self)
        data["weights_given"] = [m.weight_given for m in self.members]
        data["weights"] = self.weights
        return data


def formula_text(labels: list[str], weights: list[float], mode: str, renormalize: bool) -> str:
    """The formula in words, e.g. `0.3 * a.keras + 0.7 * b.h5`."""
    if mode == "sum":
        return " + ".join(f"{w:.6g} * {label}" for label, w in zip(labels, weights, strict=True))
    product = " * ".join(f"{label}^{w:.6g}" for label, w in zip(labels, weights, strict=True))
    if renormalize:
        return f"({product}) / sum over the last axis"
    return product


def file_labels(paths: Sequence[Path]) -> list[str]:
    """How each file is named in reports: its name, or its path when names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]
