"""The file people receive: every kind of merged file Keras's own layers can express loads
with plain `keras.saving.load_model` in a process where fuse cannot be imported, in safe
mode, and computes what fuse's own reload computes; a product file says what it needs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import predict, validated
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.formats import load_model

PLAIN_KERAS = """
import json, sys
sys.modules["fuse_cli"] = None  # fuse is not installed for the receiver
import keras, numpy as np
results = {}
for name in json.loads(sys.argv[1]):
    try:
        model = keras.saving.load_model(name)  # safe mode, nothing registered
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    rng = np.random.default_rng(0)
    x = [rng.random((4, *t.shape[1:]), dtype=np.float32) for t in model.inputs]
    out = model(x if len(x) > 1 else x[0])
    outs = out if isinstance(out, (list, tuple)) else [out]
    np.savez(name + ".plain.npz", **{f"x{i}": v for i, v in enumerate(x)},
             **{f"y{i}": np.asarray(o) for i, o in enumerate(outs)})
    results[name] = {"outputs": len(outs)}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def kinds(zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One merged file of each kind, written by the CLI."""
    folder = tmp_path_factory.mktemp("handoff")
    runner = CliRunner()
    a, b = str(zoo["a.keras"]), str(zoo["b.keras"])
    specs = {
        "sum.keras": [a, b, "-w", "0.3"],
        "sum.h5": [a, b, "-w", "0.3"],
        "to_probabilities.keras": [a, str(zoo["linear.keras"]), "--to-probabilities"],
        "multi_output.keras": [str(zoo["heads_a.keras"]), str(zoo["heads_b.keras"])],
        "separate_inputs.keras": [a, str(zoo["wide7.keras"])],
        "shared_backbone.keras": [a, a, b],
        "product.keras": [a, b, "--mode", "product"],
    }
    paths = {}
    for name, args in specs.items():
        out = folder / name
        result = runner.invoke(app, ["merge", *args, "-o", str(out), "--json"],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        paths[name] = out
    return paths


def test_every_sum_kind_loads_in_plain_keras_and_matches_fuse(
    kinds: dict[str, Path], tmp_path: Path
) -> None:
    names = [str(p) for p in kinds.values()]
    result = subprocess.run([sys.executable, "-c", PLAIN_KERAS, json.dumps(names)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for name, path in kinds.items():
        if name == "product.keras":
            continue
        assert "outputs" in found[str(path)], (name, found[str(path)])
        plain = np.load(f"{path}.plain.npz")
        model = load_model(path).model  # fuse's own reload
        x = [plain[f"x{i}"] for i in range(len(model.inputs))]
        expected = predict(model, x if len(x) > 1 else x[0])
        assert len(expected) == found[str(path)]["outputs"]
        for i, want in enumerate(expected):
            np.testing.assert_allclose(plain[f"y{i}"], want, rtol=1e-6, atol=1e-7)
    # A weighted product needs fuse's layer: without fuse, Keras names it.
    assert "fuse>WeightedProduct" in found[str(kinds["product.keras"])]["error"]


def test_the_report_says_what_loading_needs(zoo: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    a, b = str(zoo["a.keras"]), str(zoo["b.keras"])
    for mode, plain in (("sum", True), ("product", False)):
        out = tmp_path / f"{mode}.keras"
        result = runner.invoke(app, ["merge", a, b, "-m", mode, "-o", str(out), "--json"],
                               catch_exceptions=False)
        assert validated(result.stdout)["loads_without_fuse"] is plain
        text = runner.invoke(app, ["merge", a, b, "-m", mode, "-o", str(out), "--force"],
                             catch_exceptions=False).stdout
        assert ("loads with plain keras.saving.load_model" in text) is plain
        assert ("needs `import fuse_cli.layers`" in text) is not plain


def test_the_provenance_sits_beside_the_model(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    result = CliRunner().invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                      str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        record = json.loads(zf.read("fuse.json"))
    assert "fuse.json" in names and record["version"] == 1 and record["mode"] == "sum"
    config = json.loads(zipfile.ZipFile(out).read("config.json"))
    assert "fuse" not in json.dumps(config)  # nothing of fuse in what Keras reads
