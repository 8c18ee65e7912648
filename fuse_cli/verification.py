"""`fuse verify` as a library call: re-check a merged file, and its original members.

`verify_file` re-runs the formula check (`fuse_cli.formula`) on a merged file's embedded
members, checks that what the file records about itself agrees with what it computes,
and, given the original member files, proves they are the ones recorded (SHA-256) and
compute the same outputs as their embedded copies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli import provenance
from fuse_cli.choices import Mode
from fuse_cli.compatibility import input_specs, shared_input_specs
from fuse_cli.errors import UsageError, VerificationError
from fuse_cli.formats import check_keras, check_model_path, load_model
from fuse_cli.formula import SEED, check_formula, compare, run, sample_batch
from fuse_cli.image_input import feeder, file_branches
from fuse_cli.inspection import (
    EnsembleInfo,
    appended_activations,
    combining_heads,
    embedded_members,
    read_ensemble,
    read_soup,
    recorded,
    soup_record,
)
from fuse_cli.methods.base import Head
from fuse_cli.provenance import recorded_temperatures
from fuse_cli.report import MemberCheck, Progress, VerifyReport
from fuse_cli.sharing import check_record, member_functions

if TYPE_CHECKING:
    import keras



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
    start = time.perf_counter()
    say = progress or (lambda _message: None)
    merged = Path(merged)
    files = [Path(p) for p in member_files]
    for path in (merged, *files):
        check_model_path(path)
    check_keras()
    say(f"loading {merged}")
    loaded = load_model(merged, unsafe=unsafe)
    model = loaded.model
    heads = combining_heads(model)
    if not heads and soup_record(loaded.provenance) is not None:
        return _verify_soup(merged, model, loaded.provenance, files, unsafe, say, start)
    if not heads:
        raise UsageError(
            f"{merged}: not a merged model (no fuse combining layer); "
            "`fuse verify` checks files written by `fuse merge`"
        )
    embedded = embedded_members(model)
    raw = recorded(heads, loaded.provenance)
    info = _check_structure(merged, model, heads, embedded, raw)
    shared = check_record(str(merged), model, embedded, raw)
    # A shared member is its shared segments followed by its own part.
    members = member_functions(model, embedded, str(merged))
    if files and len(files) != len(members):
        raise UsageError(
            f"{merged} has {len(members)} members; got {len(files)} member "
            f"file{'' if len(files) == 1 else 's'}"
        )

    transforms = _check_appended(merged, heads, raw, len(members))
    say(f"checking the formula of {merged}")
    feed = feeder(file_branches(model, members)) if info.inputs == "image" else None
    error = check_formula(
        model, members, info.weights, Mode(info.mode), renormalize=info.renormalize,
        shared_inputs=info.inputs == "shared", transforms=transforms, what=str(merged),
        calibration=recorded_temperatures(raw.get("tuning")), member_inputs=feed,
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
        provenance_recorded=bool(raw),
        members=checks,
        elapsed_seconds=time.perf_counter() - start,
        shared=shared,
        backend=_backend(),
    )


def _check_structure(
    path: Path,
    model: keras.Model,
    heads: list[Head],
    members: list[keras.Model],
    raw: dict[str, Any],
) -> EnsembleInfo:
    """The heads must agree with each other, the members and the provenance."""
    info = read_ensemble(model, raw)
    assert info is not None  # the caller found heads
    for head in heads[1:]:
        if head.mode != info.mode or head.coefficients != info.weights:
            raise VerificationError(
                f"{path}: combining layer {head.name!r} ({head.mode}, "
                f"{head.coefficients}) disagrees with {heads[0].name!r} "
                f"({info.mode}, {info.weights})"
            )
    if len(members) != len(info.weights):
        raise VerificationError(
            f"{path}: {len(info.weights)} weights but {len(members)} embedded members"
        )
    provenance.check(path, raw, mode=info.mode, inputs=info.inputs,
                     renormalize=info.renormalize, weights=info.weights, members=len(members))
    return info


def _check_appended(
    path: Path, heads: list[Head], raw: dict[str, Any], count: int
) -> list[list[str | None]]:
    """The activations `--to-probabilities` appended, read from the graph and checked
    against the provenance's record of them."""
    found = appended_activations(heads, count)
    for i, added in enumerate(found):
        if any(a is not None and a not in ("softmax", "sigmoid") for a in added):
            raise VerificationError(
                f"{path}: member {i} feeds the combining layer through a "
                f"to_probabilities layer with an unexpected activation: {added}"
            )
    provenance.check_appended(path, raw, found)
    return found


def _check_member_files(
    merged: Path,
    files: Sequence[Path],
    members: Sequence[keras.Model],
    checks: list[MemberCheck],
    unsafe: bool,
    say: Progress,
) -> None:
    """Each file must be the recorded member (SHA-256 of the very bytes loaded) and
    compute what its embedded copy does."""
    recorded = [c.recorded_sha256 for c in checks]
    for i, (path, embedded, check) in enumerate(zip(files, members, checks, strict=True)):
        check.given = str(path)
        if check.recorded_sha256 is None:
            raise VerificationError(
                f"{path}: {merged} records no SHA-256 for member {i}, so it cannot be "
                "confirmed"
            )
        say(f"comparing {path} with its embedded copy")
        loaded = load_model(path, unsafe=unsafe)
        if loaded.sha256 != check.recorded_sha256:
            hint = ""
            if loaded.sha256 in recorded:
                hint = (
                    f"; it is member {recorded.index(loaded.sha256)}: give the member files "
                    "in the order they were merged"
                )
            raise VerificationError(
                f"{path}: SHA-256 {loaded.sha256[:12]}… is not the one {merged} records for "
                f"member {i} ({check.recorded_file}: {check.recorded_sha256[:12]}…){hint}"
            )
        original = loaded.model
        if shared_input_specs([original, embedded]) is None:
            raise VerificationError(
                f"{merged}: embedded member {i} ({embedded.name}) takes inputs "
                f"{_specs_text(embedded)}, but {path} takes {_specs_text(original)}"
            )
        batch = sample_batch(input_specs(original), seed=SEED + i, what=str(path),
                             model=original)
        check.max_abs_error = compare(
            run(embedded, batch),
            run(original, batch),
            f"{merged}: embedded member {i} ({embedded.name})",
            against=str(path),
        )


def _specs_text(model: keras.Model) -> str:
    return ", ".join(f"{spec} {spec.dtype}" for spec in input_specs(model))


def _verify_soup(
    path: Path,
    model: keras.Model,
    raw: dict[str, Any] | None,
    files: Sequence[Path],
    unsafe: bool,
    say: Progress,
    start: float,
) -> VerifyReport:
    """A soup holds no members: it is checked against the member files it records —
    their SHA-256s, one architecture with it, and every variable their weighted average
    (bit for bit; BatchNormalization statistics a build recomputed from data excepted)."""
    from fuse_cli import soup

    info = read_soup(model, raw)
    assert info is not None
    count = len(info.members)
    if not files:
        raise UsageError(f"{path} is a soup of {count} members: give their files "
                         "(fuse verify SOUP MEMBER...) to check its variables against them")
    if len(files) != count or len(info.weights) != count:
        raise UsageError(f"{path} is a soup of {count} members; got {len(files)} member "
                         f"file{'' if len(files) == 1 else 's'}")
    checks = [MemberCheck(i, "(averaged)", m["file"], m["sha256"])
              for i, m in enumerate(info.members)]
    members = []
    for i, (file, check) in enumerate(zip(files, checks, strict=True)):
        say(f"loading {file}")
        loaded = load_model(file, unsafe=unsafe)
        check.given = str(file)
        if loaded.sha256 != check.recorded_sha256:
            raise VerificationError(
                f"{file}: SHA-256 {loaded.sha256[:12]}… is not the one {path} records for "
                f"member {i} ({check.recorded_file})"
            )
        members.append(loaded.model)
    soup.check_architecture([model, *members], [str(path), *map(str, files)])
    floats = [soup.is_float(v) for v in soup.variables(model)]
    expected = soup.soup_values([soup.values(m) for m in members], floats, info.weights)
    written = soup.values(model)
    batchnorm = (info.soup or {}).get("batchnorm") or {}
    recomputed = batchnorm.get("statistics") == "recomputed"
    if recomputed:  # from data fuse verify does not have
        skipped = {id(v) for layer in soup.batchnorm_layers(model)
                   for v in (layer.moving_mean, layer.moving_variance)}
        expected = [w if id(v) in skipped else e for v, w, e
                    in zip(soup.variables(model), written, expected, strict=True)]
    say(f"checking the variables of {path}")
    soup.check_values(written, expected, [v.path for v in soup.variables(model)], str(path))
    return VerifyReport(file=str(path), mode=info.mode, formula_max_abs_error=0.0,
                        provenance_recorded=True, members=checks,
                        elapsed_seconds=time.perf_counter() - start, soup=recomputed,
                        backend=_backend())



def _backend() -> str:
    import keras

    return str(keras.backend.backend())
