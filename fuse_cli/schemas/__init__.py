"""The `--json` contract: every command's JSON object, described by a JSON Schema here.

Every object fuse prints with `--json` starts with `"schema": "fuse/1"` and
`"command": "<name>"`. Within `fuse/1`, fields are only ever added, never renamed,
removed or given another type; a change that breaks that is `fuse/2`. The schema
files (`fuse-1.json`, with one definition per command, and one for errors) ship in the
package: `schema_path()` says where. `recipe-1.json` describes `fuse build`'s recipe
files (`recipe_schema_path()`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

JSON_SCHEMA = "fuse/1"
_FILE = "fuse-1.json"


def schema_path() -> Path:
    """The installed JSON Schema file of the current contract."""
    return Path(str(resources.files(__name__).joinpath(_FILE)))


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every `--json` object validates against."""
    schema: dict[str, Any] = json.loads(
        resources.files(__name__).joinpath(_FILE).read_text(encoding="utf-8")
    )
    return schema


def recipe_schema_path() -> Path:
    """The installed JSON Schema of `fuse build` recipes (the TOML, as parsed)."""
    return Path(str(resources.files(__name__).joinpath("recipe-1.json")))
