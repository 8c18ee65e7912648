"""What a merge did, as plain data: rendered by the CLI, returned to Python callers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The one name for a progress callback: called with a short description before each
# slow step.
Progress = Callable[[str], None]
# Called with (model label, rows done, rows in all) while a model predicts.
Advance = Callable[[str, int, int], None]


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
    # "probabilities", "raw scores" or "other", per output, from the last activation.
    output_kinds: list[str] = field(default_factory=list)
    # `--to-probabilities`: the activation appended per output (None: untouched);
    # empty when nothing was appended to this member.
    to_probabilities: list[str | None] = field(default_factory=list)
    keras_version: str | None = None
    migrations: list[str] = field(default_factory=list)
    # The shapes as arrays (batch dim first, None where free), beside the text above.
    input_dims: list[list[int | None]] = field(default_factory=list)
    output_dims: list[list[int | None]] = field(default_factory=list)


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
    # Whether the file loads with plain `keras.saving.load_model`, nothing of fuse
    # installed (False: it names fuse's registered objects, e.g. the product's layer).
    loads_without_fuse: bool = True
    # Seconds spent in each part of the merge (load and check, build, write and verify,
    # export); `elapsed_seconds` is the whole command.
    parts: dict[str, float] = field(default_factory=dict)
    # What the build adds to the record (a soup: the variables averaged and copied,
    # and whether BatchNormalization's statistics were averaged or recomputed).
    built: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> list[float]:
        """The normalized weights, in member order."""
        return [m.weight for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        data = asdict(self)
        data["dry_run"] = False
        data["weights_given"] = [m.weight_given for m in self.members]
        data["weights"] = self.weights
        return data


@dataclass
class PlanReport:
    """What `fuse merge --dry-run` reports of its plan: the merge that would run, and where
    it would write."""

    output: str
    replaces: bool
    mode: str
    formula: str
    inputs: str
    # The merged model's inputs: one group when shared, else one group per member.
    input_shapes: list[list[str]]
    output_shapes: list[str]
    renormalize: bool
    members: list[MemberReport]
    verify: bool
    # `--export`: {"format", "path", "replaces"} per artifact.
    exports: list[dict[str, Any]]
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        data = asdict(self)
        data["dry_run"] = True
        data["weights_given"] = [m.weight_given for m in self.members]
        data["weights"] = [m.weight for m in self.members]
        return data


def file_labels(paths: Sequence[Path]) -> list[str]:
    """How each file is named in reports: its name, short and distinct. A name given more
    than once (the same file twice, or two folders' `model.keras`) gets its position on
    the command line: `cnn_a.keras#1`, `cnn_a.keras#3`."""
    names = [p.name for p in paths]
    return [f"{name}#{i}" if names.count(name) > 1 else name
            for i, name in enumerate(names, start=1)]


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
    # A soup: None for an ensemble; else whether its BatchNormalization statistics were
    # recomputed from data (and so not re-checked).
    soup: bool | None = None
    # The Keras backend the checks ran on.
    backend: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)
