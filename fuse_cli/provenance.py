"""The provenance record: what a merged file says about how it was made.

One home for it (DESIGN §2, "provenance"): its schema (`Provenance`, versioned), how a
merge, a tune and the sharing add to it, how it is read back from a file and checked
against what the file computes, and the typed views `inspect`, `verify` and the
reports are given. It is kept beside the model, where Keras never reads it
(`formats.save_model`: the archive member `fuse.json`, or the HDF5 root attribute
`fuse_provenance`); files of earlier releases keep it in their combining layer's config.

A record read from a file is data from that file: every field is used only if it has
the type fuse writes; a field of another type counts as not recorded, and `check`
says so where a recorded value disagrees with the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli import __version__
from fuse_cli.errors import VerificationError

if TYPE_CHECKING:
    from fuse_cli.sharing import Segment

VERSION = 1


@dataclass(frozen=True)
class MemberRecord:
    """One member as recorded: its file's name, model name, SHA-256 and legacy rules."""

    file: str | None
    name: str | None
    sha256: str | None
    migrations: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The member's entry (JSON-ready)."""
        return {"file": self.file, "name": self.name, "sha256": self.sha256,
                "migrations": list(self.migrations)}


@dataclass(frozen=True)
class Provenance:
    """How a merged file was made (written by fuse; read back type-checked).

    Attributes:
        mode: The merge method's name.
        weights: The normalized weights, as the combining layers compute with.
        weights_given: The weights as the user gave them (or tune chose them).
        renormalize: Product mode: divided by the sum over the last axis.
        inputs: `"shared"` or `"separate"`.
        members: One record per member, in order.
        tool: `fuse <version>`.
        allow_mixed_outputs: Sum mode added probabilities and raw scores as they are.
        to_probabilities: Per member with an appended activation: `member`, `file`,
            `appended` (per head).
        sharing: What members share and compute once (`sharing_record`).
        tuning: How `fuse tune` chose the weights (`tuning_record`).
        preprocessing: What was done to the images the weights were chosen on
            (`--rescale`, `--offset`, the resize and the channels each member took),
            which whoever runs the file must do too.
        version: The record's schema version.
    """

    mode: str
    weights: tuple[float, ...]
    weights_given: tuple[float, ...] | None
    renormalize: bool
    inputs: str
    members: tuple[MemberRecord, ...]
    tool: str | None = f"fuse {__version__}"
    allow_mixed_outputs: bool = False
    to_probabilities: tuple[dict[str, Any], ...] = ()
    sharing: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    # `fuse build`: the recipe (file name, SHA-256) and the versions that built the file.
    build: dict[str, Any] | None = None
    version: int = VERSION

    def to_record(self) -> dict[str, Any]:
        """The record as the merged file keeps it (JSON-ready)."""
        record: dict[str, Any] = {
            "version": self.version,
            "tool": self.tool,
            "mode": self.mode,
            "weights_given": None if self.weights_given is None else list(self.weights_given),
            "weights": list(self.weights),
            "renormalize": self.renormalize,
            "inputs": self.inputs,
            "members": [m.to_record() for m in self.members],
            "to_probabilities": [dict(e) for e in self.to_probabilities],
            "sharing": self.sharing,
        }
        if self.allow_mixed_outputs:
            record["allow_mixed_outputs"] = True
        if self.tuning is not None:
            record["tuning"] = self.tuning
        if self.preprocessing is not None:
            record["preprocessing"] = self.preprocessing
        if self.build is not None:
            record["build"] = self.build
        return record

    def with_tuning(self, tuning: dict[str, Any]) -> Provenance:
        """The same record, with how `fuse tune` chose the weights."""
        return replace(self, tuning=tuning)


def member_record(
    file: str | Path, name: str, sha256: str, migrations: Sequence[str]
) -> MemberRecord:
    """A member's entry, naming its file by its name only (no folders of the machine)."""
    return MemberRecord(Path(file).name, name, sha256, tuple(migrations))


def appended_record(
    names: Sequence[str], transforms: Sequence[Sequence[str | None]]
) -> tuple[dict[str, Any], ...]:
    """`--to-probabilities`: which members (by file name) had softmax/sigmoid appended,
    head by head."""
    return tuple(
        {"member": i, "file": name, "appended": list(added)}
        for i, (name, added) in enumerate(zip(names, transforms, strict=True))
        if any(added)
    )


def sharing_record(segments: Sequence[Segment], *, enabled: bool) -> dict[str, Any]:
    """The `sharing` entry of the provenance and the report."""
    params = sum((len(s.members) - 1) * s.params for s in segments)
    saved = sum((len(s.members) - 1) * s.weight_bytes for s in segments)
    return {
        "enabled": enabled,
        "segments": [
            {
                "name": s.name,
                "members": list(s.members),
                "after": None if s.parent is None else segments[s.parent].name,
                "layers": list(s.layers),
                "layer_count": s.layer_count,
                "params": s.params,
                "weight_bytes": s.weight_bytes,
            }
            for s in segments
        ],
        "params_saved": params,
        "bytes_saved": saved,
    }


def tuning_record(
    *,
    metric: str,
    method: str,
    data: dict[str, Any],
    holdout: float,
    seed: int,
    cv: dict[str, Any] | None,
    fit: dict[str, Any],
    heldout: dict[str, Any] | None,
) -> dict[str, Any]:
    """The `tuning` entry: what `fuse tune` searched on and what it scored."""
    return {"metric": metric, "method": method, "data": data, "holdout": holdout,
            "seed": seed, "cv": cv, "fit": fit, "heldout": heldout}


# --- reading it back ---------------------------------------------------------------------


def text_or_none(value: Any) -> str | None:
    """`value` if it is text, else None (a recorded value of the wrong type)."""
    return value if isinstance(value, str) else None


def numbers_or_none(value: Any) -> list[float] | None:
    """`value` as a list of finite numbers, or None if it is anything else."""
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in value
    ):
        return None
    return [float(v) for v in value]


def recorded_members(raw: dict[str, Any], count: int) -> list[MemberRecord]:
    """The first `count` members' entries, each field type-checked (missing: None)."""
    entries = raw.get("members")
    entries = entries if isinstance(entries, list) else []
    found = []
    for i in range(count):
        entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
        migrations = entry.get("migrations")
        found.append(MemberRecord(
            file=text_or_none(entry.get("file")),
            name=text_or_none(entry.get("name")),
            sha256=text_or_none(entry.get("sha256")),
            migrations=tuple(m for m in migrations if isinstance(m, str))
            if isinstance(migrations, list) else (),
        ))
    return found


def recorded_soup(record: Any) -> dict[str, Any] | None:
    """A soup's build record (`{"averaged", "copied", "batchnorm": {...}}`), each field
    type-checked; None if it is not a dict."""
    if not isinstance(record, dict):
        return None
    found: dict[str, Any] = {k: record[k] for k in ("averaged", "copied")
                             if _is_int(record.get(k))}
    batchnorm = record.get("batchnorm")
    if isinstance(batchnorm, dict):
        found["batchnorm"] = {
            **{k: batchnorm[k] for k in ("layers", "rows", "batches")
               if _is_int(batchnorm.get(k))},
            **{k: batchnorm[k] for k in ("statistics", "data", "sha256")
               if isinstance(batchnorm.get(k), str)},
        }
    return found


_SEGMENT_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "members": (list,),
    "after": (str, type(None)),
    "layers": (list,),
    "layer_count": (int,),
    "params": (int,),
    "weight_bytes": (int,),
}


def recorded_sharing(record: Any) -> dict[str, Any] | None:
    """The provenance's `sharing` entry, type-checked field by field.

    Returns:
        `enabled`, `segments` (each with the fields above), `params_saved` and
        `bytes_saved`, or None when the file records no (readable) sharing entry.
    """
    if not isinstance(record, dict) or not isinstance(record.get("segments"), list):
        return None
    segments = []
    for entry in record["segments"]:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), kinds) for key, kinds in _SEGMENT_FIELDS.items()
        ):
            return None
        if not all(_is_int(i) for i in entry["members"]) or not all(
            isinstance(name, str) for name in entry["layers"]
        ):
            return None
        segments.append({key: entry[key] for key in _SEGMENT_FIELDS})
    saved = {k: record.get(k) for k in ("params_saved", "bytes_saved")}
    return {
        "enabled": bool(record.get("enabled")),
        "segments": segments,
        **{k: v if _is_int(v) else None for k, v in saved.items()},
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def recorded_preprocessing(record: Any) -> dict[str, Any] | None:
    """The provenance's `preprocessing` entry, type-checked: `rescale` and `offset`
    (numbers or None), `resize` (text), `members` (file, height, width, color mode)."""
    if not isinstance(record, dict):
        return None
    number = (int, float)
    members = record.get("members")
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("file"), str)
        and isinstance(m.get("height"), int) and isinstance(m.get("width"), int)
        and isinstance(m.get("color_mode"), str) for m in members
    ):
        return None
    scale, offset = record.get("rescale"), record.get("offset")
    if not all(v is None or (isinstance(v, number) and not isinstance(v, bool))
               for v in (scale, offset)):
        return None
    found = {"rescale": scale, "offset": offset, "resize": text_or_none(record.get("resize")),
             "members": [{k: m[k] for k in ("file", "height", "width", "color_mode")}
                         for m in members]}
    size = record.get("input")
    if record.get("baked") is True and isinstance(size, list) and all(_is_int(v) for v in size):
        found["baked"], found["input"] = True, size  # `--inputs image`: in the graph
    return found


@dataclass(frozen=True)
class TuningSummary:
    """What a file records about its tuning, type-checked, for one line of `inspect`."""

    method: str | None
    metric: str | None
    data_file: str | None
    rows: int | None
    holdout: float | None
    cv_log_losses: list[float] = field(default_factory=list)
    heldout: dict[str, float] = field(default_factory=dict)


def tuning_summary(tuning: Any) -> TuningSummary | None:
    """The recorded `tuning` entry as a `TuningSummary`, or None if there is none."""
    if not isinstance(tuning, dict):
        return None
    data = tuning.get("data") if isinstance(tuning.get("data"), dict) else {}
    assert isinstance(data, dict)
    cv = tuning.get("cv") if isinstance(tuning.get("cv"), dict) else {}
    assert isinstance(cv, dict)
    folds = cv.get("folds") if isinstance(cv.get("folds"), list) else []
    assert isinstance(folds, list)
    losses = [f.get("log_loss") for f in folds if isinstance(f, dict)]
    held = tuning.get("heldout") if isinstance(tuning.get("heldout"), dict) else {}
    assert isinstance(held, dict)
    holdout = tuning.get("holdout")
    rows = data.get("rows")
    return TuningSummary(
        method=text_or_none(tuning.get("method")),
        metric=text_or_none(tuning.get("metric")),
        data_file=text_or_none(data.get("file")),
        rows=rows if _is_int(rows) else None,
        holdout=float(holdout) if isinstance(holdout, int | float)
        and not isinstance(holdout, bool) else None,
        cv_log_losses=[v for v in losses if isinstance(v, float)]
        if losses and all(isinstance(v, float) for v in losses) else [],
        heldout={str(k): v for k, v in held.items()
                 if k in ("accuracy", "log_loss") and isinstance(v, float)},
    )


# --- checking it against the graph ---------------------------------------------------------


def check(
    path: Path | str,
    raw: dict[str, Any],
    *,
    mode: str,
    inputs: str,
    renormalize: bool,
    weights: Sequence[float],
    members: int,
) -> None:
    """What the file records about itself must agree with what its graph computes.

    Raises:
        VerificationError: Naming the recorded value and the graph's.
    """
    for key, found in (("mode", mode), ("inputs", inputs), ("renormalize", renormalize)):
        said = raw.get(key)
        if said is not None and said != found:
            raise VerificationError(
                f"{path}: the provenance records {key} {_shown(said)}, but the model has "
                f"{found!r}"
            )
    recorded = raw.get("weights")
    if recorded is not None and not _same_numbers(recorded, weights):
        raise VerificationError(
            f"{path}: the provenance records weights {_shown(recorded)}, but the combining "
            f"layer computes with {list(weights)}"
        )
    given = raw.get("weights_given")
    if given is not None and numbers_or_none(given) is None:
        raise VerificationError(
            f"{path}: the provenance records weights as given {_shown(given)}, not a list "
            "of numbers"
        )
    if given is not None and not _normalizes_to(given, weights):
        raise VerificationError(
            f"{path}: the provenance records weights as given {_shown(given)}, which do not "
            f"normalize to {list(weights)}"
        )
    entries = raw.get("members")
    if entries is not None and not isinstance(entries, list):
        raise VerificationError(
            f"{path}: the provenance records members as {_shown(entries)}, not a list"
        )
    if entries is not None and len(entries) != members:
        raise VerificationError(
            f"{path}: the provenance records {len(entries)} members, the model embeds "
            f"{members}"
        )


def check_appended(
    path: Path | str, raw: dict[str, Any], graph: Sequence[Sequence[str | None]]
) -> None:
    """The activations `--to-probabilities` appended in the graph must be the recorded ones.

    Raises:
        VerificationError: The record and the graph disagree.
    """
    recorded = raw.get("to_probabilities")
    if not isinstance(recorded, list):
        return
    said = {e.get("member"): e.get("appended") for e in recorded if isinstance(e, dict)}
    found = {i: list(added) for i, added in enumerate(graph) if any(added)}
    if said != found:
        raise VerificationError(
            f"{path}: the provenance records --to-probabilities on members "
            f"{said}, but the graph appends {found}"
        )


def check_sharing(what: str, raw: dict[str, Any], found: dict[str, list[int]]) -> None:
    """The shared segments the graph has must be the recorded ones.

    Raises:
        VerificationError: A member runs through other segments than the record says.
    """
    record = raw.get("sharing")
    segments = record.get("segments") if isinstance(record, dict) else None
    if isinstance(segments, list):
        recorded = {
            str(s.get("name")): list(s.get("members") or [])
            for s in segments
            if isinstance(s, dict)
        }
        if recorded != found:
            raise VerificationError(
                f"{what}: the provenance records shared segments {recorded}, but the "
                f"graph has {found}"
            )
    elif found:
        raise VerificationError(
            f"{what}: the graph has shared segments {found}, which the provenance does not record"
        )


def _shown(value: Any, limit: int = 80) -> str:
    """A recorded value in a message: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same_numbers(a: Any, b: Sequence[float]) -> bool:
    try:
        return len(a) == len(b) and all(
            math.isclose(float(x), y, rel_tol=1e-9, abs_tol=1e-12)
            for x, y in zip(a, b, strict=True)
        )
    except (TypeError, ValueError):
        return False


def _normalizes_to(given: Any, coefficients: Sequence[float]) -> bool:
    try:
        total = math.fsum(float(w) for w in given)
    except (TypeError, ValueError):
        return False
    return total > 0 and _same_numbers([float(w) / total for w in given], coefficients)


def recorded_temperatures(tuning: Any) -> tuple[float, ...]:
    """The temperatures `fuse tune --calibrate` recorded in a record's `tuning` entry (and
    built in after the combination), if any."""
    found = tuning.get("calibration") if isinstance(tuning, dict) else None
    values = found.get("temperatures") if isinstance(found, dict) else None
    if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        return ()
    return tuple(float(v) for v in values)
