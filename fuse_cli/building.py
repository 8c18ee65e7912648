"""`fuse build RECIPE.toml` as a library call: a recipe turned into the request a merge or
a tune makes, then the same plan and execution (no third pipeline).

- `build`: pins checked (SHA-256 of each pinned member, before anything loads), the
  request made from the recipe with the recipe's record (its file name and SHA-256, the
  versions of fuse, Keras and TensorFlow) for the provenance, then `merge_request` or
  `tune`. Model files are reproducible (`formats.reproducible`): the same recipe on the
  same inputs writes the same bytes.
- `check` (`--check`): whether OUT is what the recipe builds now: it exists, records
  this recipe and these members, and a build into a scratch folder gives the same bytes
  (exports: the same bytes where the converter is deterministic, else a parity run
  against OUT). Else `OutOfDateError` (exit 7) with the reason.
- A lock (`--lock FILE`): what the build resolved, as TOML; `--locked` rebuilds from it
  without the data pass and the search, refusing a recipe or member that changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_cli import __version__
from fuse_cli.choices import EngineKind, ExportFormat, InputsMode, Metric, Mode
from fuse_cli.errors import ModelLoadError, OutOfDateError, UsageError
from fuse_cli.recipe import Recipe

if TYPE_CHECKING:
    from fuse_cli.images import ImageOptions
    from fuse_cli.planning import MergeOptions, Request
    from fuse_cli.report import Advance, MergeReport, Progress
    from fuse_cli.soup_tuning import SoupTuneReport
    from fuse_cli.tuning import TuneOptions, TuneReport, TuneRequest

# The checked request of a merge, or of a tune (the other is None).
Checked = tuple["Request | None", "TuneRequest | None"]

# Artifacts whose converter writes the same bytes for the same model (measured: the
# LiteRT flatbuffer; tf2onnx numbers its nodes from a counter that varies, and a
# SavedModel carries a random fingerprint and checkpoint ids).
DETERMINISTIC_EXPORTS = (ExportFormat.LITERT,)


@dataclass
class BuildReport:
    """What `fuse build` did: built OUT, or (`--check`) found it up to date."""

    recipe: str
    recipe_sha256: str
    output: str
    action: str  # "built" or "up to date"
    kind: str  # "merge" or "tune"
    result: Any = None  # the merge's or the tune's report
    lock: str | None = None
    checked: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    @property
    def warnings(self) -> list[str]:
        """The merge's or the tune's warnings."""
        return list(getattr(self.result, "warnings", []))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"recipe": self.recipe, "recipe_sha256": self.recipe_sha256,
                "output": self.output, "action": self.action, "kind": self.kind,
                "result": self.result.to_dict() if self.result is not None else None,
                "lock": self.lock, "checked": self.checked,
                "elapsed_seconds": self.elapsed_seconds}


# --- the recipe as a request ---------------------------------------------------------


def _images(table: dict[str, Any]) -> ImageOptions:
    from fuse_cli.image_input import parse_scale
    from fuse_cli.images import ImageOptions

    names = table.get("class_names")
    return ImageOptions(
        rescale=parse_scale(table.get("rescale")), offset=table.get("offset"),
        skip_bad=table.get("skip_bad_images", False),
        interpolation=table.get("interpolation", "bilinear").lower(),
        crop_to_aspect_ratio=table.get("crop_to_aspect_ratio", False),
        class_names=tuple(names) if names is not None else None,
        validation_split=table.get("validation_split"), subset=table.get("subset"),
        seed=table.get("seed"),
    )


def merge_options(recipe: Recipe, *, force: bool, quiet: bool = True) -> MergeOptions:
    """The merge options a recipe says (`fuse merge`'s defaults for what it leaves out)."""
    from fuse_cli.planning import MergeOptions

    t, tune = recipe.table, recipe.tune
    # The images are the tune's data (its folder's options) if there is a [tune], else
    # what the top level says (a soup's --recompute-bn data, an --inputs image merge).
    images = _images(tune if tune is not None else t)
    if tune is not None:
        wanted = tune.get("recompute_bn") and "data" in tune
        recompute = recipe.resolve(tune["data"]) if wanted else None
    else:
        recompute = recipe.resolve(t["recompute_bn"]) if "recompute_bn" in t else None
    return MergeOptions(
        mode=Mode(t.get("mode", "sum")), weight=t.get("weight"), weights=t.get("weights"),
        inputs=InputsMode(t.get("inputs", "auto")), renormalize=t.get("renormalize", False),
        assume_nonnegative=t.get("assume_nonnegative", False),
        allow_mixed_outputs=t.get("allow_mixed_outputs", False),
        to_probabilities=t.get("to_probabilities", False), name=t.get("name", "ensemble"),
        force=force, verify=t.get("verify", True), unsafe=t.get("unsafe", False),
        share=t.get("share", True),
        exports=[ExportFormat(e) for e in t.get("exports", [])], quiet=quiet,
        recompute_bn=recompute, images=images,
        batch_size=(tune or t).get("batch_size"),
    )


def tune_options(recipe: Recipe, merge: MergeOptions) -> TuneOptions:
    """The tune options of a recipe's `[tune]` table."""
    from fuse_cli.engines import EngineOptions
    from fuse_cli.tuning import CV_FOLDS, HOLDOUT, TuneOptions

    t = recipe.tune or {}
    return TuneOptions(
        merge=merge, metric=Metric(t.get("metric", "log_loss")),
        holdout=float(t.get("holdout", HOLDOUT)), cv=t.get("cv", CV_FOLDS),
        batch_size=t.get("batch_size"), images=_images(t),
        predictions=recipe.resolve(t["predictions"]) if "predictions" in t else None,
        plot=recipe.resolve(t["plot"]) if "plot" in t else None,
        keep_zero_weights=t.get("keep_zero_weights", False),
        even_if_worse=t.get("even_if_worse", False),
        engine=EngineOptions(kind=EngineKind(t.get("engine", "local")),
                             workers=t.get("workers"), address=t.get("address")),
    )


def record(recipe: Recipe) -> dict[str, Any]:
    """What the built file records of its recipe: name, SHA-256, the versions of fuse,
    Keras and the backend Keras runs on (read from the installed packages)."""
    from importlib.metadata import PackageNotFoundError, version

    import keras

    backend = str(keras.backend.backend())
    try:
        found = version(backend)
    except PackageNotFoundError:
        found = None
    return {"recipe": recipe.path.name, "recipe_sha256": recipe.sha256,
            "versions": {"fuse": __version__, "keras": keras.__version__, backend: found}}


def check_pins(recipe: Recipe) -> None:
    """Each pinned member's SHA-256, before anything loads.

    Raises:
        ModelLoadError: A member that is missing, or whose bytes are not the pinned ones.
    """
    from fuse_cli.formats import check_model_path, sha256_of

    for i, member in enumerate(recipe.members):
        if member.sha256 is None:
            continue
        check_model_path(member.path)
        found = sha256_of(member.path)
        if found != member.sha256:
            raise ModelLoadError(
                f"{member.path}: SHA-256 {found[:12]}… is not the one {recipe.path} pins "
                f"for member {i + 1} ({member.sha256[:12]}…): it changed; nothing was loaded"
            )


def requests(recipe: Recipe, out: Path, *, force: bool, quiet: bool = True) -> Checked:
    """The checked request of the merge, or of the tune, the recipe declares.

    Raises:
        UsageError, OutputError: As `fuse merge` or `fuse tune` would, prefixed with the
            recipe's name.
    """
    from fuse_cli.planning import check_request
    from fuse_cli.tuning import check_tune

    files = [m.path for m in recipe.members]
    try:
        merge = merge_options(recipe, force=force, quiet=quiet)
        if recipe.tune is None:
            return check_request(files, out, merge), None
        tune = recipe.tune
        data = recipe.resolve(tune["data"]) if "data" in tune else None
        return None, check_tune(files, data, out, tune_options(recipe, merge))
    except UsageError as exc:
        raise type(exc)(recipe_message(recipe, str(exc))) from None


def recipe_message(recipe: Recipe, message: str) -> str:
    """A command-line message said of the recipe: its first `--option` becomes the
    recipe's key, with the line it is on (`ens.toml:4: weight must be ...`)."""
    import re

    from fuse_cli.recipe import TOP, TUNE

    found = re.search(r"(?<![\w-])--([a-z][a-z-]*)", message)
    if found:
        key = found.group(1).replace("-", "_")
        table = "tune" if key in TUNE and (recipe.tune or {}).get(key) is not None else ""
        if key in TOP or key in TUNE:
            text = message.replace(found.group(0), key, 1)
            return f"{recipe.where(key, table).rsplit(': ', 1)[0]}: {text}"
    return f"{recipe.path}: {message}"


# --- build, check, lock -------------------------------------------------------------------


def build(
    recipe: Recipe,
    *,
    out: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    advance: Advance | None = None,
    quiet: bool = True,
    checked: Checked | None = None,
) -> MergeReport | TuneReport | SoupTuneReport:
    """Build what the recipe declares into `out` (default: the recipe's output); `checked`
    is its request if `requests` made it already."""
    from fuse_cli.merge import merge_request
    from fuse_cli.tuning import tune

    start = time.perf_counter()
    merge, tuned = checked or requests(recipe, out or recipe.output, force=force, quiet=quiet)
    check_pins(recipe)
    stamp = record(recipe)
    if merge is not None:
        return merge_request(replace(merge, recipe=stamp), progress=progress, start=start)
    assert tuned is not None
    tuned = replace(tuned, merge=replace(tuned.merge, recipe=stamp))
    return tune(tuned, progress=progress, advance=advance, start=start)


def recorded(path: Path) -> dict[str, Any]:
    """The provenance record kept beside a model file (`{}` if none), without loading it."""
    from fuse_cli.formats import read_record

    return read_record(path) or {}


def check(
    recipe: Recipe, progress: Progress | None = None, advance: Advance | None = None,
    quiet: bool = True,
) -> list[str]:
    """Whether OUT is what the recipe builds now (the recipe's request checked already).

    Returns:
        What was compared, one line each.

    Raises:
        OutOfDateError: It is not (exit 7), with the first reason found.
    """
    from fuse_cli.files import scratch_folder
    from fuse_cli.formats import sha256_of

    out = recipe.output
    check_pins(recipe)
    if not out.exists():
        raise OutOfDateError(f"{out} does not exist: run fuse build {recipe.path}")
    found = recorded(out)
    raw = found.get("build")
    stamp: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if stamp.get("recipe_sha256") != recipe.sha256:
        why = "records another recipe" if stamp else "was not built from a recipe"
        raise OutOfDateError(f"{out} {why}: {recipe.path} changed since it was built")
    _check_members(recipe, found)
    checked = [f"{recipe.path}: SHA-256 {recipe.sha256[:12]}… as recorded",
               f"{len(recipe.members)} members: SHA-256s as recorded"]
    with scratch_folder() as folder:
        fresh = folder / out.name
        build(recipe, out=fresh, progress=progress, advance=advance, quiet=quiet)
        if sha256_of(fresh) != sha256_of(out):
            raise OutOfDateError(
                f"{out} differs from what {recipe.path} builds now (edited after the build, "
                "or built by other versions of fuse, Keras or TensorFlow)")
        checked.append(f"{out}: the same bytes as a fresh build")
        checked += _check_exports(recipe, out, fresh, quiet)
    return checked


def _check_members(recipe: Recipe, found: dict[str, Any]) -> None:
    from fuse_cli.formats import sha256_of

    names = {m.get("file"): m.get("sha256") for m in _members_of(found)}
    for member in recipe.members:
        if member.path.name in names and names[member.path.name] != sha256_of(member.path):
            raise OutOfDateError(f"{member.path} changed since {recipe.output} was built "
                                 "(its SHA-256 is not the recorded one)")


def _members_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A record's member entries that are tables (a record is data from a file)."""
    members = record.get("members")
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _check_exports(recipe: Recipe, out: Path, fresh: Path, quiet: bool) -> list[str]:
    from fuse_cli.export import artifact_path, check_parity, reference_outputs
    from fuse_cli.formats import load_model, sha256_of

    lines = []
    model = None
    for fmt in (ExportFormat(e) for e in recipe.table.get("exports", [])):
        path, made = artifact_path(out, fmt), artifact_path(fresh, fmt)
        if not path.exists():
            raise OutOfDateError(f"{path} does not exist: run fuse build {recipe.path}")
        if fmt in DETERMINISTIC_EXPORTS:
            if sha256_of(path) != sha256_of(made):
                raise OutOfDateError(f"{path} differs from what {recipe.path} builds now")
            lines.append(f"{path}: the same bytes as a fresh build")
            continue
        model = model or load_model(out).model
        batch, expected = reference_outputs(model, what=str(out))
        try:
            error, runtime = check_parity(model, fmt, path, batch, expected, what=str(path))
        except Exception as exc:  # any failure to match OUT means out of date
            raise OutOfDateError(f"{path} does not compute what {out} computes: "
                                 f"{exc}") from None
        lines.append(f"{path}: matches {out} in {runtime} (max abs error {error:.2e}); "
                     f"{fmt.value} converters are not byte-reproducible")
    return lines


def write_lock(recipe: Recipe, lock: Path, out: Path) -> None:
    """Write what the build resolved as TOML: recipe, members, versions, OUT's SHA-256 and
    the provenance record (weights chosen, tuning) a `--locked` build writes again."""
    from fuse_cli.files import publish
    from fuse_cli.formats import sha256_of

    found = recorded(out)
    kept = [m.get("file") for m in _members_of(found)]
    lines = [
        "# Written by fuse build: what the recipe resolved to. `fuse build RECIPE --lock",
        "# FILE --locked` rebuilds OUT from it without running the data pass or the search.",
        f"recipe = {json.dumps(recipe.path.name)}",
        f"recipe_sha256 = {json.dumps(recipe.sha256)}",
        f"output_sha256 = {json.dumps(sha256_of(out))}",
        f"provenance = {json.dumps(json.dumps(found, sort_keys=True))}",
    ]
    for member in recipe.members:
        lines += ["", "[[members]]", f"path = {json.dumps(str(member.path.name))}",
                  f"sha256 = {json.dumps(sha256_of(member.path))}",
                  f"kept = {'true' if member.path.name in kept else 'false'}"]
    text = "\n".join(lines) + "\n"
    publish(lock, lambda tmp: tmp.write_text(text), replace=True)


def build_locked(
    recipe: Recipe, lock: Path, *, force: bool, progress: Progress | None = None,
    quiet: bool = True,
) -> MergeReport:
    """Rebuild OUT from a lock: the recorded weights and tuning, no data pass, no search.

    Raises:
        OutOfDateError: The lock is not this recipe's, or a member changed since.
    """
    from fuse_cli.formats import load_models, sha256_of
    from fuse_cli.merge import execute
    from fuse_cli.planning import check_request, make_plan
    from fuse_cli.recipe import tomllib

    try:
        locked = tomllib.loads(lock.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{lock}: cannot read the lock: {exc}") from None
    if locked.get("recipe_sha256") != recipe.sha256:
        raise OutOfDateError(f"{lock} is not the lock of {recipe.path} as it is now: "
                             "build without --locked to write a new one")
    entries = locked.get("members", [])
    if len(entries) != len(recipe.members):
        raise OutOfDateError(f"{lock} has {len(entries)} members; {recipe.path} has "
                             f"{len(recipe.members)}")
    kept = []
    for member, entry in zip(recipe.members, entries, strict=True):
        if sha256_of(member.path) != entry.get("sha256"):
            raise OutOfDateError(f"{member.path} changed since {lock} was written")
        if entry.get("kept"):
            kept.append(member.path)
    try:
        provenance = json.loads(locked["provenance"])
        given = [float(w) for w in provenance["weights_given"]]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{lock}: not a lock fuse build wrote (no provenance with "
                         "weights); build without --locked to write one") from None
    options = replace(merge_options(recipe, force=force, quiet=quiet), weight=None,
                      weights=given)
    request = check_request(kept, recipe.output, options)
    request = replace(request, recipe=provenance.get("build"))
    loaded = load_models(kept, unsafe=options.unsafe, progress=progress)
    plan = make_plan(request, loaded)
    if "tuning" in provenance:
        plan = plan.with_weights(given, provenance["tuning"],
                                 provenance.get("preprocessing"))
    return execute(plan, progress=progress)


@dataclass(frozen=True)
class BuildRequest:
    """`fuse build` as checked before anything loads: the recipe, read, and the merge's or
    the tune's request it makes (options, weights, every destination)."""

    recipe: Recipe
    checked: Checked
    check_only: bool = False
    force: bool = False
    lock: Path | None = None
    locked: bool = False
    quiet: bool = True


def check_build(
    path: Path, *, check_only: bool = False, force: bool = False, lock: Path | None = None,
    locked: bool = False, quiet: bool = True,
) -> BuildRequest:
    """Every check `fuse build` makes before a model loads (no Keras needed).

    Raises:
        UsageError, OutputError: A bad recipe or options, a destination that cannot be
            written.
    """
    from fuse_cli.recipe import read_recipe

    recipe = read_recipe(path)
    if locked and lock is None:
        raise UsageError("--locked reads the lock --lock FILE names: give --lock")
    if check_only and (locked or force):
        raise UsageError("--check builds nothing: give no --force or --locked")
    checked = requests(recipe, recipe.output, force=force or check_only, quiet=quiet)
    return BuildRequest(recipe, checked, check_only, force, lock, locked, quiet)


def build_recipe(
    request: BuildRequest, progress: Progress | None = None, advance: Advance | None = None,
) -> BuildReport:
    """`fuse build` on a checked request: check OUT, build from a lock, or build."""
    start = time.perf_counter()
    recipe, lock, quiet = request.recipe, request.lock, request.quiet
    kind = "tune" if recipe.tune is not None else "merge"
    report = BuildReport(str(recipe.path), recipe.sha256, str(recipe.output), "built", kind)
    if request.check_only:
        report.checked = check(recipe, progress, advance, quiet)
        report.action = "up to date"
    elif request.locked:
        assert lock is not None
        report.result = build_locked(recipe, lock, force=request.force, progress=progress,
                                     quiet=quiet)
        report.lock = str(lock)
    else:
        report.result = build(recipe, force=request.force, progress=progress,
                              advance=advance, quiet=quiet, checked=request.checked)
        if lock is not None:
            write_lock(recipe, lock, recipe.output)
            report.lock = str(lock)
    report.elapsed_seconds = time.perf_counter() - start
    return report


__all__: Sequence[str] = ("BuildReport", "BuildRequest", "build", "build_recipe", "check",
                          "check_build", "write_lock")
