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
from test_images import cnn
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
    cnn((12, 12, 3), 1).save(folder / "rgb12.keras")
    cnn((10, 8, 1), 2).save(folder / "gray10x8.keras")
    specs = {
        "sum.keras": [a, b, "-w", "0.3"],
        "sum.h5": [a, b, "-w", "0.3"],
        "to_probabilities.keras": [a, str(zoo["linear.keras"]), "--to-probabilities"],
        "multi_output.keras": [str(zoo["heads_a.keras"]), str(zoo["heads_b.keras"])],
        "separate_inputs.keras": [a, str(zoo["wide7.keras"])],
        "shared_backbone.keras": [a, a, b],
        "product.keras": [a, b, "--mode", "product"],
        "soup.keras": [a, b, "--mode", "soup"],
        "soup.h5": [a, b, "--mode", "soup", "-w", "0.3"],
        "image_input.keras": [str(folder / "rgb12.keras"), str(folder / "gray10x8.keras"),
                              "--inputs", "image", "--rescale", "1/255"],
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


def test_files_of_earlier_releases_are_still_read_and_verified(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """A merged file as fuse wrote it before sums were plain Keras: a `fuse>WeightedSum`
    layer that keeps the provenance in its config. inspect and verify still read it."""
    import keras

    from fuse_cli.formats import sha256_of
    from fuse_cli.layers import WeightedSum

    members = [keras.saving.load_model(zoo[n], compile=False) for n in ("a.keras", "c.h5")]
    record = {"tool": "fuse 0.1.0", "mode": "sum", "weights_given": [3.0, 1.0],
              "weights": [0.75, 0.25], "renormalize": False, "inputs": "shared",
              "members": [{"file": n, "name": m.name, "sha256": sha256_of(zoo[n]),
                           "migrations": []}
                          for n, m in zip(("a.keras", "c.h5"), members, strict=True)],
              "to_probabilities": [],
              "sharing": {"enabled": True, "segments": [], "params_saved": 0,
                          "bytes_saved": 0}}
    inputs = keras.Input((5,), name="input")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"member_{i}_{member.name}"
        outputs.append(member(inputs))
    combined = WeightedSum([0.75, 0.25], provenance=record, name="combine")(outputs)
    old = tmp_path / "old.keras"
    keras.Model(inputs, combined, name="ensemble").save(old)

    runner = CliRunner()
    shown = validated(runner.invoke(app, ["inspect", str(old), "--json"],
                                    catch_exceptions=False).stdout)
    ensemble = shown["models"][0]["ensemble"]
    assert ensemble["mode"] == "sum" and ensemble["weights"] == [0.75, 0.25]
    assert ensemble["weights_given"] == [3.0, 1.0] and ensemble["tool"] == "fuse 0.1.0"
    verified = runner.invoke(app, ["verify", str(old), str(zoo["a.keras"]), str(zoo["c.h5"]),
                                   "--json"], catch_exceptions=False)
    assert verified.exit_code == 0, verified.stderr
    assert validated(verified.stdout)["provenance_recorded"] is True


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("mode", ["sum", "product"])
def test_the_record_beside_the_model_is_read_back_by_verify_and_inspect(
    suffix: str, mode: str, zoo: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / f"ens{suffix}"
    a, b = str(zoo["a.keras"]), str(zoo["b.keras"])
    merged = runner.invoke(app, ["merge", a, b, "-m", mode, "--weights", "1,3", "-o", str(out)],
                           catch_exceptions=False)
    assert merged.exit_code == 0, merged.stderr
    verified = runner.invoke(app, ["verify", str(out), a, b, "--json"], catch_exceptions=False)
    assert verified.exit_code == 0, verified.stderr
    assert validated(verified.stdout)["provenance_recorded"] is True
    shown = validated(runner.invoke(app, ["inspect", str(out), "--json"],
                                    catch_exceptions=False).stdout)["models"][0]["ensemble"]
    assert shown["mode"] == mode and shown["weights_given"] == [1.0, 3.0]
    assert [m["file"] for m in shown["members"]] == ["a.keras", "b.keras"]
