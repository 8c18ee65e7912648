"""The README's CI recipe, extracted from the README and run as written, so it cannot rot.

One subprocess test (three `fuse` processes): the recipe runs in a temporary folder
holding a copy of the bundled sample models, with this interpreter's `fuse` first
on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import JSON_VALIDATOR, load, predict

REPO = Path(__file__).resolve().parent.parent


def ci_recipe() -> str:
    """The first shell block under the README's `## In CI` heading, exactly as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## In CI\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## In CI' section"
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, "the '## In CI' section has no ```sh block"
    return block.group(1)


def test_the_readme_ci_recipe_runs(tmp_path: Path) -> None:
    recipe = ci_recipe()
    for step in ("fuse build \"$recipe\" --check --json", "--force --json", "status=$?"):
        assert step in recipe
    shutil.copytree(REPO / "sample_models", tmp_path / "sample_models")
    # As after the Quickstart, in a fresh shell: fuse is in ./.venv/bin and nowhere on PATH
    # (the recipe's first line puts it there).
    (tmp_path / ".venv").mkdir()
    os.symlink(Path(sys.executable).parent, tmp_path / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(p) / "fuse").exists())
    env = dict(os.environ, PATH=path, TF_CPP_MIN_LOG_LEVEL="3")

    def run() -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bash", "-c", recipe], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        return proc

    first = run()  # nothing built yet: the check says out of date (7), so it builds
    out = tmp_path / "build" / "ci"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".venv", "build", "sample_models"]
    check = json.loads((out / "check.json").read_text())
    JSON_VALIDATOR.validate(check)
    assert check["exit_code"] == 7 and "does not exist" in check["error"]
    build = json.loads((out / "build.json").read_text())
    JSON_VALIDATOR.validate(build)
    result = build["result"]
    assert build["action"] == "built" and result["formula"] == "0.5 * cnn_a.keras + 0.5 * cnn_b.h5"
    assert result["max_abs_error"] < 1e-5 and result["exports"][0]["verified"] is True
    assert (out / "ensemble_saved_model" / "saved_model.pb").is_file()
    assert "0.5 * cnn_a.keras + 0.5 * cnn_b.h5 | verified:" in first.stdout
    built = (out / "ensemble.keras").read_bytes()

    second = run()  # the same recipe and members: up to date, nothing rebuilt
    assert "build/ci/ensemble.keras is up to date" in second.stdout
    check = json.loads((out / "check.json").read_text())
    JSON_VALIDATOR.validate(check)
    assert check["action"] == "up to date"
    assert (out / "ensemble.keras").read_bytes() == built

    # The merged file computes the formula on the held-out digits (checked here, not by fuse).
    x = np.load(tmp_path / "sample_models" / "digits_heldout.npz")["x"][:32]
    members = [predict(load(tmp_path / "sample_models" / f), x)[0]
               for f in ("cnn_a.keras", "cnn_b.h5")]
    np.testing.assert_allclose(predict(load(out / "ensemble.keras"), x)[0],
                               0.5 * members[0] + 0.5 * members[1], rtol=1e-5, atol=1e-6)
