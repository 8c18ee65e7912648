"""Every kind of file fuse writes, run on JAX in a process where TensorFlow cannot be
imported, against TensorFlow's predictions here; and `fuse verify --backend`.

One subprocess loads every file (Keras's own loader, `fuse_cli.layers` imported for the
files that name fuse's objects) with `KERAS_BACKEND=jax` and an import hook that refuses
`tensorflow`, predicts on inputs saved here, and saves the outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import load, mobilenet_like, predict, tm_member
from test_images import cnn
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.compatibility import input_specs

pytest.importorskip("jax", reason="the JAX parity tests need jax (the test extra has it)")

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "hard_sigmoid_dense.h5"

ON_JAX = r"""
import json, sys

class NoTensorFlow:  # this process must not use TensorFlow, even where it is installed
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoTensorFlow())
import os
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np
import keras
import fuse_cli.layers  # fuse's registered objects: the product layer, Keras 2 activations

found = {"backend": keras.backend.backend()}
for path in json.loads(sys.argv[1]):
    inputs = np.load(path + ".in.npz")
    x = [inputs[f"x{i}"] for i in range(len(inputs.files))]
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    result = model.predict(x if len(x) > 1 else x[0], verbose=0)
    outputs = list(result) if isinstance(result, (list, tuple)) else [result]
    np.savez(path + ".jax.npz", **{f"y{i}": np.asarray(y) for i, y in enumerate(outputs)})
found["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
print(json.dumps(found))
"""


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def kinds(zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file of each kind fuse writes."""
    folder = tmp_path_factory.mktemp("backends")
    backbone = mobilenet_like(0)
    for seed in (1, 2):
        tm_member(seed, backbone=backbone).save(folder / f"tm{seed}.keras")
    shutil.copy(LEGACY, folder / "legacy.h5")
    cnn((12, 12, 3), 1).save(folder / "rgb12.keras")
    cnn((10, 8, 1), 2).save(folder / "gray10x8.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.random((60, 5), dtype=np.float32),
             y=rng.integers(0, 10, 60))
    a, b = str(zoo["a.keras"]), str(zoo["b.keras"])
    specs: dict[str, list[str]] = {
        "sum.keras": [a, b, "-w", "0.3"],
        "sum.h5": [a, b, "-w", "0.3"],
        "product.keras": [a, b, "--mode", "product"],
        "product_renormalized.keras": [a, b, "--mode", "product", "--renormalize"],
        "to_probabilities.keras": [a, str(zoo["linear.keras"]), "--to-probabilities"],
        "multi_output.keras": [str(zoo["heads_a.keras"]), str(zoo["heads_b.keras"])],
        "separate_inputs.keras": [a, str(zoo["wide7.keras"])],
        "shared_backbone.keras": [str(folder / "tm1.keras"), str(folder / "tm2.keras")],
        "legacy_member.keras": [str(folder / "legacy.h5"), str(folder / "legacy.h5")],
        "soup.keras": [a, b, "--mode", "soup"],
        "image_input.keras": [str(folder / "rgb12.keras"), str(folder / "gray10x8.keras"),
                              "--inputs", "image", "--rescale", "1/255"],
    }
    paths = {}
    for name, args in specs.items():
        result = invoke("merge", *args, "-o", folder / name)
        assert result.exit_code == 0, (name, result.stderr)
        paths[name] = folder / name
    result = invoke("tune", a, b, "--data", folder / "d.npz", "--calibrate", "temperature",
                    "--cv", "0", "-o", folder / "calibrated.keras")
    assert result.exit_code == 0, result.stderr
    paths["calibrated.keras"] = folder / "calibrated.keras"
    return paths


def test_every_kind_runs_on_jax_without_tensorflow_as_on_tensorflow(
    kinds: dict[str, Path], tmp_path: Path
) -> None:
    expected = {}
    for name, path in kinds.items():
        model = load(path)
        rng = np.random.default_rng(7)
        x = [rng.random((6, *(d or 4 for d in s.shape)), dtype=np.float32)
             for s in input_specs(model)]
        np.savez(f"{path}.in.npz", **{f"x{i}": v for i, v in enumerate(x)})
        expected[name] = predict(model, x if len(x) > 1 else x[0])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.run([sys.executable, "-c", ON_JAX, json.dumps([str(p) for p in
                                                                      kinds.values()])],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert found == {"backend": "jax", "tensorflow_imported": False}
    for name, path in kinds.items():
        got = np.load(f"{path}.jax.npz")
        assert len(got.files) == len(expected[name]), name
        for i, want in enumerate(expected[name]):  # verification's float32 tolerance
            np.testing.assert_allclose(got[f"y{i}"], want, rtol=1e-5, atol=1e-6,
                                       err_msg=name)


def test_verify_backend_jax_proves_a_file_and_catches_a_wrong_one(
    kinds: dict[str, Path], zoo: dict[str, Path], tmp_path: Path
) -> None:
    result = invoke("verify", kinds["sum.keras"], zoo["a.keras"], zoo["b.keras"],
                    "--backend", "jax", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "jax" and report["formula_max_abs_error"] < 1e-5
    assert [m["given"] for m in report["members"]] == [str(zoo["a.keras"]),
                                                         str(zoo["b.keras"])]
    # a record that disagrees with the graph fails there too, with verify's exit code
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(kinds["sum.keras"]) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "fuse.json":
                record = json.loads(data)
                record["weights"] = [0.5, 0.5]
                data = json.dumps(record).encode()
            dst.writestr(info, data)
    wrong = invoke("verify", bad, "--backend", "jax")
    assert wrong.exit_code == 6 and "on jax:" in wrong.stderr


def test_verify_backend_names_a_missing_package(
    kinds: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    result = invoke("verify", kinds["sum.keras"], "--backend", "torch")
    assert result.exit_code == 2
    assert "--backend torch needs torch, which is not installed: pip install torch" in (
        result.stderr)
    assert keras.backend.backend() == "tensorflow"  # this process never changed backend
