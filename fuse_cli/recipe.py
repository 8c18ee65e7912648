"""The recipe: a merge or a tune declared in one TOML file, for `fuse build`.

Everything a `fuse merge` or `fuse tune` command line says, in one file a CI keeps next
to its pipeline (mergekit's `mergekit-yaml config.yml` is the model): the members (each
optionally pinned by SHA-256), the merge options, the output and its exports, and a
`[tune]` table to choose the weights from data. Paths are relative to the recipe.
Unknown keys, wrong types and values out of range are exit 2 naming the key and its
line. The format is documented in the README and in `schemas/recipe-1.json`.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_cli.choices import EngineKind, ExportFormat, InputsMode, Metric, Mode
from fuse_cli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_RECIPE_BYTES = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_LINE = re.compile(r'^\s*("?)([A-Za-z0-9_-]+)\1\s*=')
_TABLE_LINE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")

# key: (the types it accepts, what a message calls them)
Spec = dict[str, tuple[tuple[type, ...], str]]
_NUMBER = ((int, float), "a number")
_BOOL = ((bool,), "true or false")
_TEXT = ((str,), "a string")
_INT = ((int,), "a whole number")
_LIST = ((list,), "an array")
TOP: Spec = {
    "output": _TEXT, "members": _LIST, "mode": _TEXT, "weight": _NUMBER, "weights": _LIST,
    "inputs": _TEXT, "renormalize": _BOOL, "assume_nonnegative": _BOOL,
    "allow_mixed_outputs": _BOOL, "to_probabilities": _BOOL, "name": _TEXT, "share": _BOOL,
    "verify": _BOOL, "unsafe": _BOOL, "exports": _LIST, "recompute_bn": _TEXT,
    "rescale": ((str, int, float), "a number or a fraction such as \"1/255\""),
    "offset": _NUMBER, "batch_size": _INT, "tune": ((dict,), "a table"),
}
MEMBER: Spec = {"path": _TEXT, "sha256": _TEXT}
TUNE: Spec = {
    "data": _TEXT, "predictions": _TEXT, "metric": _TEXT, "cv": _INT, "holdout": _NUMBER,
    "batch_size": _INT, "rescale": TOP["rescale"], "offset": _NUMBER,
    "skip_bad_images": _BOOL, "interpolation": _TEXT, "crop_to_aspect_ratio": _BOOL,
    "class_names": _LIST, "validation_split": _NUMBER, "subset": _TEXT, "seed": _INT,
    "plot": _TEXT, "keep_zero_weights": _BOOL, "even_if_worse": _BOOL,
    "recompute_bn": _BOOL, "engine": _TEXT, "workers": _INT, "address": _TEXT,
}


@dataclass(frozen=True)
class Member:
    """One member: its file (relative to the recipe, resolved) and optional pin."""

    path: Path
    sha256: str | None


@dataclass(frozen=True)
class Recipe:
    """A recipe as read and checked (types and keys; values by the merge's own checks).

    Attributes:
        path: The recipe file.
        sha256: Its SHA-256 (recorded in what it builds).
        table: The parsed TOML.
        members: The members in order.
        output: OUT, resolved against the recipe's folder.
        text: The recipe's text (for the lines messages name).
    """

    path: Path
    sha256: str
    table: dict[str, Any]
    members: tuple[Member, ...]
    output: Path
    text: str

    @property
    def tune(self) -> dict[str, Any] | None:
        """The `[tune]` table, if any."""
        found = self.table.get("tune")
        return found if isinstance(found, dict) else None

    def resolve(self, value: str) -> Path:
        """A path written in the recipe, relative to its folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    def where(self, key: str, table: str = "") -> str:
        """`RECIPE:LINE: key` for messages."""
        return f"{self.path}:{_line_of(self.text, table, key)}: {key}"


def read_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file.

    Raises:
        UsageError: Not readable, not TOML, an unknown key, a wrong type, a bad pin or
            enum value (exit 2, naming the key and its line).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise UsageError(f"{path}: a recipe is at most 1 MiB")
    try:
        text = data.decode("utf-8")
        table = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: not a TOML recipe: {exc}") from None
    _check_table(path, text, table, TOP, "")
    for required in ("output", "members"):
        if required not in table:
            raise UsageError(f"{path}: the recipe has no {required!r}")
    tune = table.get("tune")
    if isinstance(tune, dict):
        _check_table(path, text, tune, TUNE, "tune")
    members = []
    for i, entry in enumerate(table["members"]):
        if not isinstance(entry, dict):
            raise UsageError(f"{path}:{_line_of(text, '', 'members')}: members: each is a "
                             "table [[members]] with a 'path'")
        where = f"members.{i}"
        _check_table(path, text, entry, MEMBER, where)
        if "path" not in entry:
            raise UsageError(f"{path}: member {i + 1} ([[members]]) has no 'path'")
        pin = entry.get("sha256")
        if pin is not None and not _SHA256.match(pin):
            raise UsageError(f"{path}:{_line_of(text, where, 'sha256')}: sha256: 64 "
                             f"lowercase hex digits; got {pin!r}")
        member_path = Path(entry["path"]).expanduser()
        members.append(Member(member_path if member_path.is_absolute()
                              else path.parent / member_path, pin))
    _check_choices(path, text, table, tune if isinstance(tune, dict) else {})
    output = Path(table["output"]).expanduser()
    return Recipe(path, hashlib.sha256(data).hexdigest(), table, tuple(members),
                  output if output.is_absolute() else path.parent / output, text)


def _check_table(path: Path, text: str, table: dict[str, Any], spec: Spec, name: str) -> None:
    for key, value in table.items():
        if key not in spec:
            known = ", ".join(sorted(spec))
            raise UsageError(f"{path}:{_line_of(text, name, key)}: unknown key {key!r}"
                             f"{f' in [{name}]' if name and '.' not in name else ''}; "
                             f"known: {known}")
        types, wanted = spec[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise UsageError(f"{path}:{_line_of(text, name, key)}: {key} must be {wanted}; "
                             f"got {value!r}")


def _check_choices(path: Path, text: str, table: dict[str, Any], tune: dict[str, Any]) -> None:
    choices: list[tuple[str, str, Any, Sequence[str]]] = [
        ("", "mode", table.get("mode"), [m.value for m in Mode]),
        ("", "inputs", table.get("inputs"), [m.value for m in InputsMode]),
        ("tune", "metric", tune.get("metric"), [m.value for m in Metric]),
        ("tune", "engine", tune.get("engine"), [m.value for m in EngineKind]),
    ]
    choices += [("", "exports", value, [f.value for f in ExportFormat])
                for value in table.get("exports", [])]
    for where, key, value, allowed in choices:
        if value is not None and value not in allowed:
            raise UsageError(f"{path}:{_line_of(text, where, key)}: {key}: one of "
                             f"{', '.join(allowed)}; got {value!r}")
    for key in ("weights",):
        for value in table.get(key, []):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise UsageError(f"{path}:{_line_of(text, '', key)}: {key}: numbers only; "
                                 f"got {value!r}")
    for value in tune.get("class_names", []):
        if not isinstance(value, str):
            raise UsageError(f"{path}:{_line_of(text, 'tune', 'class_names')}: class_names: "
                             f"strings only; got {value!r}")


def _line_of(text: str, table: str, key: str) -> int | str:
    """The line of `key` in `table` (`""`: the top level; `members.<i>`: the i-th
    `[[members]]`), or `?` where the TOML says it another way (inline tables)."""
    current = ""
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_LINE.match(line)
        if header:
            name = header.group(2)
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                current = f"{name}.{counts[name]}"
            else:
                current = name
            continue
        found = _KEY_LINE.match(line)
        if found and found.group(2) == key and current == table:
            return number
    return "?"
