"""What a model file is, and whether files can be merged.

`inspect_files` reads files and reports; it builds nothing. `read_ensemble` reads what
a merged file says about itself (its combining layers and their provenance), for
`fuse inspect` and `fuse verify` alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

from fuse_cli.choices import InputsMode, Mode
from fuse_cli.compatibility import (
    TO_PROBABILITIES_PREFIX,
    check_outputs,
    input_specs,
    last_activations,
    output_specs,
    plan_inputs,
)
from fuse_cli.errors import IncompatibleModelsError
from fuse_cli.formats import LoadedModel, load_models
from fuse_cli.formats._keras_private import keras_history
from fuse_cli.image_input import is_image_file
from fuse_cli.methods import METHODS, method_for
from fuse_cli.methods.base import Head
from fuse_cli.planning import MergeOptions
from fuse_cli.provenance import (
    numbers_or_none,
    recorded_members,
    recorded_preprocessing,
    recorded_sharing,
    recorded_soup,
    text_or_none,
)
from fuse_cli.report import Progress, file_labels

_MEMBER = re.compile(r"^member_(\d+)_")


@dataclass
class TensorInfo:
    """One input or output: its name, shape (batch dim first, `None` = any) and dtype."""

    name: str
    shape: list[int | None]
    dtype: str


@dataclass
class EnsembleInfo:
    """What a merged file says about itself: its combining layers and provenance.

    `mode`, `weights` (normalized: the coefficients) and `renormalize` come from the
    combining layers, which compute the output; `weights_given`, `tool` and each
    member's file and SHA-256 from the provenance they keep.
    """

    mode: str
    weights: list[float]
    renormalize: bool
    inputs: str
    heads: int
    weights_given: list[float] | None
    tool: str | None
    members: list[dict[str, Any]]
    tuning: dict[str, Any] | None = None
    # What the members share and compute once, as recorded (`fuse_cli.sharing`).
    sharing: dict[str, Any] | None = None
    # What was done to images before the members saw them, as recorded by `fuse tune`.
    preprocessing: dict[str, Any] | None = None
    # A soup: what its build recorded (variables averaged, BatchNormalization statistics).
    soup: dict[str, Any] | None = None


@dataclass
class ModelInfo:
    """One model file as `fuse inspect` shows it."""

    file: str
    format: str
    keras_version: str | None
    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    last_activations: list[str | None]
    params: int
    size: int
    sha256: str
    migrations: list[str] = field(default_factory=list)
    ensemble: EnsembleInfo | None = None


@dataclass
class Compatibility:
    """Whether several files can be merged, and if not, exactly why."""

    mergeable: bool
    inputs: str | None
    outputs: list[str]
    reason: str | None
    product: bool
    product_reason: str | None
    # `--mode soup`: one architecture with equal integer variables.
    soup: bool = False
    soup_reason: str | None = None

    @property
    def mixed_outputs(self) -> str | None:
        """Sum mode: why the outputs cannot be added as they are (`reason`, kept in the
        JSON report under this name too)."""
        return self.reason


@dataclass
class InspectReport:
    """Every inspected file, and for several files whether they can be merged."""

    models: list[ModelInfo]
    compatibility: Compatibility | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        data = asdict(self)
        if self.compatibility is not None:
            data["compatibility"]["mixed_outputs"] = self.compatibility.mixed_outputs
        return data


def inspect_files(
    paths: Sequence[str | Path], *, unsafe: bool = False, progress: Progress | None = None
) -> InspectReport:
    """Describe each file and, for several, run the compatibility check `merge` runs.

    Args:
        paths: One or more model files.
        unsafe: Load with Keras's safe mode off.
        progress: Called with a short description before each slow step.

    Raises:
        ModelLoadError: A file cannot be loaded.
    """
    files = [Path(p) for p in paths]
    loaded = load_models(files, unsafe=unsafe, progress=progress)
    labels = file_labels(files)
    models = [describe(m, label) for m, label in zip(loaded, labels, strict=True)]
    compatibility = None
    if len(loaded) > 1:
        compatibility = check_compatibility([m.model for m in loaded], labels)
    return InspectReport(models=models, compatibility=compatibility)


def describe(loaded: LoadedModel, label: str) -> ModelInfo:
    """The facts `fuse inspect` shows about one loaded file."""
    model = loaded.model
    return ModelInfo(
        file=label,
        format=loaded.format,
        keras_version=loaded.keras_version,
        name=model.name,
        inputs=[
            _tensor_info(str(t.name), spec)
            for t, spec in zip(model.inputs, input_specs(model), strict=True)
        ],
        outputs=[
            _tensor_info(str(name), spec)
            for name, spec in zip(_output_names(model), output_specs(model), strict=True)
        ],
        last_activations=last_activations(model),
        params=int(model.count_params()),
        size=loaded.size,
        sha256=loaded.sha256,
        migrations=list(loaded.migrations),
        ensemble=read_ensemble(model, loaded.provenance),
    )


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    return TensorInfo(name=name, shape=[None, *spec.shape], dtype=spec.dtype)


def _output_names(model: keras.Model) -> list[str]:
    """Each output named by the layer that produces it (`dense_1`, `combine`)."""
    names = []
    for tensor in model.outputs:
        history = keras_history(tensor)
        names.append(str(history[0].name) if history else str(tensor.name))
    return names


def check_compatibility(models: Sequence[keras.Model], labels: Sequence[str]) -> Compatibility:
    """Run `merge`'s output and input checks, and each method's own, building nothing."""
    try:
        heads = check_outputs(models, labels)
    except IncompatibleModelsError as exc:
        return Compatibility(False, None, [], str(exc), False, None)
    plan = plan_inputs(models, labels, InputsMode.AUTO)
    refused: dict[str, str | None] = {}
    for name in METHODS:
        try:
            method_for(name).check_members(models, labels, MergeOptions(mode=Mode(name)))
            refused[name] = None
        except IncompatibleModelsError as exc:
            refused[name] = str(exc)
    return Compatibility(
        mergeable=refused["sum"] is None,
        inputs="shared" if plan.shared else "separate",
        outputs=[str(h) for h in heads],
        reason=refused["sum"],
        product=refused["product"] is None,
        product_reason=refused["product"],
        soup=refused["soup"] is None,
        soup_reason=refused["soup"],
    )


def combining_heads(model: keras.Model) -> list[Head]:
    """A merged model's heads as its merge method combines them (`combine`, or
    `combine_<h>` in head order); empty for a model fuse did not merge."""
    heads = [head for method in METHODS.values() for head in method.find_heads(model)]
    return sorted(heads, key=lambda head: _head_index(head.name))


def _head_index(name: str) -> int:
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def embedded_members(model: keras.Model) -> list[keras.Model]:
    """A merged model's members (`member_<i>_...` sub-models), in index order."""
    found = []
    for layer in model.layers:
        match = _MEMBER.match(layer.name)
        if isinstance(layer, keras.Model) and match:
            found.append((int(match.group(1)), layer))
    return [layer for _, layer in sorted(found, key=lambda pair: pair[0])]


def appended_activations(heads: Sequence[Head], count: int) -> list[list[str | None]]:
    """What `--to-probabilities` put between each member and the heads.

    Read from the graph, not the provenance: per member and head, the activation of a
    `to_probabilities_*` layer feeding that head, or None.
    """
    found: list[list[str | None]] = [[None] * len(heads) for _ in range(count)]
    for h, head in enumerate(heads):
        for i, tensor in enumerate(head.inputs[:count]):
            history = keras_history(tensor)
            source = history[0] if history else None
            if source is not None and str(source.name).startswith(TO_PROBABILITIES_PREFIX):
                activation = getattr(source, "activation", None)
                name = getattr(activation, "__name__", None)
                found[i][h] = name if name in ("softmax", "sigmoid") else "unknown"
    return found


def recorded(heads: Sequence[Head], beside: dict[str, Any] | None) -> dict[str, Any]:
    """A merged file's provenance record: the one kept beside the model, else the one an
    older file keeps in its combining layer, else `{}`."""
    if isinstance(beside, dict):
        return beside
    return heads[0].record if heads else {}


def read_ensemble(model: keras.Model, beside: dict[str, Any] | None = None) -> EnsembleInfo | None:
    """What a merged model records about itself, or None for a model fuse did not merge.

    Args:
        model: The loaded model.
        beside: The provenance record kept beside the model in its file
            (`LoadedModel.provenance`), if any.

    The provenance is data from the file: each field is used only if it has the type
    fuse writes (`fuse_cli.provenance`; a value of another type counts as not recorded).
    """
    heads = combining_heads(model)
    if not heads:
        return read_soup(model, beside)
    first = heads[0]
    raw = recorded(heads, beside)
    members = embedded_members(model)
    appended = appended_activations(heads, len(members))
    infos = []
    for i, (member, entry) in enumerate(zip(members, recorded_members(raw, len(members)),
                                            strict=True)):
        infos.append({
            "index": i,
            "layer": member.name,
            "file": entry.file,
            "name": entry.name,
            "sha256": entry.sha256,
            "migrations": list(entry.migrations),
            "last_activations": last_activations(member),
            "to_probabilities": appended[i] if any(appended[i]) else [],
        })
    shared = bool(members) and len(model.inputs) == len(members[0].inputs)
    tuning = raw.get("tuning")
    return EnsembleInfo(
        mode=first.mode,
        weights=list(first.coefficients),
        renormalize=first.renormalize,
        inputs="image" if is_image_file(model) else "shared" if shared else "separate",
        heads=len(heads),
        weights_given=numbers_or_none(raw.get("weights_given")),
        tool=text_or_none(raw.get("tool")),
        members=infos,
        tuning=tuning if isinstance(tuning, dict) else None,
        sharing=recorded_sharing(raw.get("sharing")),
        preprocessing=recorded_preprocessing(raw.get("preprocessing")),
    )


def soup_record(beside: dict[str, Any] | None) -> dict[str, Any] | None:
    """The record of a file whose method averages variables (a soup), else None."""
    if not isinstance(beside, dict):
        return None
    mode = beside.get("mode")
    method = METHODS.get(mode) if isinstance(mode, str) else None
    return beside if method is not None and not method.combines_outputs else None


def read_soup(model: keras.Model, beside: dict[str, Any] | None) -> EnsembleInfo | None:
    """What a soup records about itself (it has no combining layer), or None."""
    raw = soup_record(beside)
    if raw is None:
        return None
    entries = raw.get("members")
    members = recorded_members(raw, len(entries) if isinstance(entries, list) else 0)
    built = raw.get("soup")
    tuning = raw.get("tuning")
    return EnsembleInfo(
        mode=str(raw["mode"]),
        weights=numbers_or_none(raw.get("weights")) or [],
        renormalize=False,
        inputs="shared",
        heads=len(model.outputs),
        weights_given=numbers_or_none(raw.get("weights_given")),
        tool=text_or_none(raw.get("tool")),
        members=[{"index": i, "layer": "(averaged)", "file": m.file, "name": m.name,
                  "sha256": m.sha256, "migrations": list(m.migrations),
                  "last_activations": last_activations(model), "to_probabilities": []}
                 for i, m in enumerate(members)],
        tuning=tuning if isinstance(tuning, dict) else None,
        preprocessing=recorded_preprocessing(raw.get("preprocessing")),
        soup=recorded_soup(built) or {},
    )
