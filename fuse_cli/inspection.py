"""What a model file is, whether files can be merged, and whether a merged file holds up.

`inspect_files` reads files and reports; it builds nothing. `verify_file` re-runs
the formula check on a merged file's embedded members and, given the original
member files, proves they are the ones recorded and compute the same outputs.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli.ensemble import (
    InputsMode,
    Mode,
    check_nonnegative,
    check_outputs,
    input_specs,
    last_activations,
    output_specs,
    plan_inputs,
    shared_input_specs,
)
from fuse_cli.errors import IncompatibleModelsError, UsageError, VerificationError
from fuse_cli.model_io import LoadedModel, check_model_path, load_model, sha256_of

if TYPE_CHECKING:
    import keras

Progress = Callable[[str], None]
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


@dataclass
class InspectReport:
    """Every inspected file, and for several files whether they can be merged."""

    models: list[ModelInfo]
    compatibility: Compatibility | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of every field."""
        return asdict(self)


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
    import fuse_cli.layers  # noqa: F401  (merged files refer to the combining layers)
    from fuse_cli.merge import file_labels, load_members

    files = [Path(p) for p in paths]
    loaded = load_members(files, unsafe=unsafe, progress=progress)
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
        ensemble=read_ensemble(model),
    )


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    return TensorInfo(name=name, shape=[None, *spec.shape], dtype=spec.dtype)


def _output_names(model: keras.Model) -> list[str]:
    """Each output named by the layer that produces it (`dense_1`, `combine`)."""
    names = []
    for tensor in model.outputs:
        history = getattr(tensor, "_keras_history", None)
        names.append(str(history[0].name) if history else str(tensor.name))
    return names


def check_compatibility(models: Sequence[keras.Model], labels: Sequence[str]) -> Compatibility:
    """Run `merge`'s output and input checks (and product mode's sign check), building nothing."""
    try:
        heads = check_outputs(models, labels)
    except IncompatibleModelsError as exc:
        return Compatibility(False, None, [], str(exc), False, None)
    plan = plan_inputs(models, labels, InputsMode.AUTO)
    product_reason = None
    try:
        check_nonnegative(models, labels, assume=False)
    except IncompatibleModelsError as exc:
        product_reason = str(exc)
    return Compatibility(
        mergeable=True,
        inputs="shared" if plan.shared else "separate",
        outputs=[str(h) for h in heads],
        reason=None,
        product=product_reason is None,
        product_reason=product_reason,
    )


def _combining_layers(model: keras.Model) -> list[Any]:
    from fuse_cli.layers import MERGE_LAYERS

    classes = tuple(MERGE_LAYERS.values())
    return [layer for layer in model.layers if isinstance(layer, classes)]


def _members(model: keras.Model) -> list[keras.Model]:
    import keras

    found = []
    for layer in model.layers:
        match = _MEMBER.match(layer.name)
        if isinstance(layer, keras.Model) and match:
            found.append((int(match.group(1)), layer))
    return [layer for _, layer in sorted(found, key=lambda pair: pair[0])]


def _mode_of(layer: Any) -> str:
    from fuse_cli.layers import MERGE_LAYERS

    return next(mode for mode, cls in MERGE_LAYERS.items() if isinstance(layer, cls))


def read_ensemble(model: keras.Model) -> EnsembleInfo | None:
    """What a merged model records about itself, or None for a model fuse did not merge."""
    layers = _combining_layers(model)
    if not layers:
        return None
    first = layers[0]
    provenance = first.provenance if isinstance(first.provenance, dict) else {}
    members = _members(model)
    recorded = provenance.get("members") or []
    infos = []
    for i, member in enumerate(members):
        entry = recorded[i] if i < len(recorded) and isinstance(recorded[i], dict) else {}
        infos.append({
            "index": i,
            "layer": member.name,
            "file": entry.get("file"),
            "name": entry.get("name"),
            "sha256": entry.get("sha256"),
            "migrations": entry.get("migrations", []),
            "last_activations": last_activations(member),
        })
    shared = bool(members) and len(model.inputs) == len(members[0].inputs)
    return EnsembleInfo(
        mode=_mode_of(first),
        weights=list(first.coefficients),
        renormalize=bool(getattr(first, "renormalize", False)),
        inputs="shared" if shared else "separate",
        heads=len(layers),
        weights_given=provenance.get("weights_given"),
        tool=provenance.get("tool"),
        members=infos,
        tuning=provenance.get("tuning") if isinstance(provenance.get("tuning"), dict) else None,
    )


def verify_file(
    merged: str | Path,
    member_files: Sequence[str | Path] = (),
    *,
    unsafe: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Re-check a merged file, and optionally that the given files are its members.

    Args:
        merged: A file written by `fuse merge`.
        member_files: The original member files, in the order they were merged.
        unsafe: Load with Keras's safe mode off.
        progress: Called with a short description before each slow step.

    Returns:
        What was checked, with the largest differences found.

    Raises:
        UsageError: Not a merged file, or the wrong number of member files.
        ModelLoadError: A file cannot be loaded.
        VerificationError: Any disagreement: the formula, the recorded provenance,
            a member file's SHA-256 or its outputs.
    """
    import fuse_cli.layers  # noqa: F401  (merged files refer to the combining layers)
    from fuse_cli.model_io import check_keras
    from fuse_cli.verification import check_formula

    start = time.perf_counter()
    say = progress or (lambda _message: None)
    merged = Path(merged)
    files = [Path(p) for p in member_files]
    for path in (merged, *files):
        check_model_path(path)
    check_keras()
    say(f"loading {merged}")
    model = load_model(merged, unsafe=unsafe).model
    layers = _combining_layers(model)
    if not layers:
        raise UsageError(
            f"{merged}: not a merged model (no fuse combining layer); "
            "`fuse verify` checks files written by `fuse merge`"
        )
    members = _members(model)
    info = _check_structure(merged, model, layers, members)
    if files and len(files) != len(members):
        raise UsageError(
            f"{merged} has {len(members)} members; got {len(files)} member "
            f"file{'' if len(files) == 1 else 's'}"
        )

    say(f"checking the formula of {merged}")
    error = check_formula(
        model,
        members,
        info.weights,
        Mode(info.mode),
        renormalize=info.renormalize,
        shared_inputs=info.inputs == "shared",
        what=str(merged),
    )
    checks = [
        MemberCheck(i, m["layer"], m["file"], m["sha256"]) for i, m in enumerate(info.members)
    ]
    if files:
        _check_member_files(merged, files, members, checks, unsafe, say)
    return VerifyReport(
        file=str(merged),
        mode=info.mode,
        formula_max_abs_error=error,
        provenance_recorded=bool(layers[0].provenance),
        members=checks,
        elapsed_seconds=time.perf_counter() - start,
    )


def _check_structure(
    path: Path, model: keras.Model, layers: list[Any], members: list[keras.Model]
) -> EnsembleInfo:
    """The combining layers must agree with each other, the members and the provenance."""
    info = read_ensemble(model)
    assert info is not None  # the caller found combining layers
    for layer in layers[1:]:
        if _mode_of(layer) != info.mode or list(layer.coefficients) != info.weights:
            raise VerificationError(
                f"{path}: combining layer {layer.name!r} ({_mode_of(layer)}, "
                f"{layer.coefficients}) disagrees with {layers[0].name!r} "
                f"({info.mode}, {info.weights})"
            )
    if len(members) != len(info.weights):
        raise VerificationError(
            f"{path}: {len(info.weights)} weights but {len(members)} embedded members"
        )
    provenance = layers[0].provenance if isinstance(layers[0].provenance, dict) else {}
    recorded: dict[str, Any] = {
        "mode": (provenance.get("mode"), info.mode),
        "inputs": (provenance.get("inputs"), info.inputs),
        "renormalize": (provenance.get("renormalize"), info.renormalize),
    }
    for key, (said, found) in recorded.items():
        if said is not None and said != found:
            raise VerificationError(
                f"{path}: the provenance records {key} {said!r}, but the model has {found!r}"
            )
    weights = provenance.get("weights")
    if weights is not None and not _same_numbers(weights, info.weights):
        raise VerificationError(
            f"{path}: the provenance records weights {weights}, but the combining layer "
            f"computes with {info.weights}"
        )
    given = provenance.get("weights_given")
    if given is not None and not _normalizes_to(given, info.weights):
        raise VerificationError(
            f"{path}: the provenance records weights as given {given}, which do not "
            f"normalize to {info.weights}"
        )
    entries = provenance.get("members")
    if entries is not None and len(entries) != len(members):
        raise VerificationError(
            f"{path}: the provenance records {len(entries)} members, the model embeds "
            f"{len(members)}"
        )
    return info


def _same_numbers(a: Sequence[Any], b: Sequence[float]) -> bool:
    try:
        return len(a) == len(b) and all(
            math.isclose(float(x), y, rel_tol=1e-9, abs_tol=1e-12)
            for x, y in zip(a, b, strict=True)
        )
    except (TypeError, ValueError):
        return False


def _normalizes_to(given: Sequence[Any], coefficients: Sequence[float]) -> bool:
    try:
        total = math.fsum(float(w) for w in given)
    except (TypeError, ValueError):
        return False
    return total > 0 and _same_numbers([float(w) / total for w in given], coefficients)


def _check_member_files(
    merged: Path,
    files: Sequence[Path],
    members: Sequence[keras.Model],
    checks: list[MemberCheck],
    unsafe: bool,
    say: Progress,
) -> None:
    from fuse_cli.verification import SEED, compare, run, sample_batch

    hashes = [sha256_of(path) for path in files]
    recorded = [c.recorded_sha256 for c in checks]
    for i, (path, digest, check) in enumerate(zip(files, hashes, checks, strict=True)):
        check.given = str(path)
        if check.recorded_sha256 is None:
            raise VerificationError(
                f"{path}: {merged} records no SHA-256 for member {i}, so it cannot be "
                "confirmed"
            )
        if digest != check.recorded_sha256:
            hint = ""
            if digest in recorded:
                hint = (
                    f"; it is member {recorded.index(digest)}: give the member files in "
                    "the order they were merged"
                )
            raise VerificationError(
                f"{path}: SHA-256 {digest[:12]}… is not the one {merged} records for "
                f"member {i} ({check.recorded_file}: {check.recorded_sha256[:12]}…){hint}"
            )
    for i, (path, embedded, check) in enumerate(zip(files, members, checks, strict=True)):
        say(f"comparing {path} with its embedded copy")
        original = load_model(path, unsafe=unsafe).model
        if shared_input_specs([original, embedded]) is None:
            raise VerificationError(
                f"{merged}: embedded member {i} ({embedded.name}) takes inputs "
                f"{_specs_text(embedded)}, but {path} takes {_specs_text(original)}"
            )
        batch = sample_batch(input_specs(original), seed=SEED + i)
        check.max_abs_error = compare(
            run(embedded, batch),
            run(original, batch),
            f"{merged}: embedded member {i} ({embedded.name})",
            against=str(path),
        )


def _specs_text(model: keras.Model) -> str:
    return ", ".join(f"{spec} {spec.dtype}" for spec in input_specs(model))
