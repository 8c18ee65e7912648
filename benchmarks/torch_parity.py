"""Every kind of merged file on PyTorch: a separate virtual environment, then parity.

PyTorch's wheels on the package registry for Linux pull CUDA libraries (gigabytes); on
this kind of machine a CPU build lies on disk (`pip install torch==2.13.0` takes it).
This script measures the cheapest honest route:

1. makes a virtual environment in `--venv` (default: a temporary folder) with torch (CPU),
   keras, h5py and numpy, and fuse installed without its dependencies (no TensorFlow);
   the install's wall time and size are recorded;
2. in the current environment (TensorFlow), merges one file of each kind (the same kinds
   as `tests/test_backends.py`) and saves inputs and TensorFlow's predictions;
3. in the torch environment, with `KERAS_BACKEND=torch`, loads each file with Keras's own
   loader (`fuse_cli.layers` imported for the files that need fuse's objects), predicts,
   and compares (float32 tolerance: rtol 1e-5, atol 1e-6); then runs `fuse verify
   --backend torch` there on the plain-sum file.

Usage: python benchmarks/torch_parity.py [--torch torch==2.13.0] [--out benchmarks/torch_latest.md]
Writes a Markdown report; prints "not run" and the reason if the install fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

ON_TORCH = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np
import keras
import fuse_cli.layers
found = {"backend": keras.backend.backend(), "files": {},
         "tensorflow_installed": __import__("importlib").util.find_spec("tensorflow") is not None}
for path in json.loads(sys.argv[1]):
    inputs = np.load(path + ".in.npz")
    expected = np.load(path + ".tf.npz")
    x = [inputs[f"x{i}"] for i in range(len(inputs.files))]
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    result = model.predict(x if len(x) > 1 else x[0], verbose=0)
    outputs = list(result) if isinstance(result, (list, tuple)) else [result]
    worst, ok = 0.0, len(outputs) == len(expected.files)
    for i, y in enumerate(outputs):
        want = expected[f"y{i}"]
        worst = max(worst, float(np.max(np.abs(np.asarray(y, np.float64) - want))))
        ok = ok and bool(np.allclose(y, want, rtol=1e-5, atol=1e-6))
    found["files"][os.path.basename(path)] = {"ok": ok, "max_abs_error": worst}
print(json.dumps(found))
"""


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False,
                          **kwargs)  # type: ignore[call-overload,no-any-return]


def make_venv(folder: Path, torch: str) -> tuple[float, int, str]:
    """The torch environment: seconds, megabytes, and pip's last error line ('' if ok)."""
    began = time.perf_counter()
    done = run([sys.executable, "-m", "venv", str(folder)])
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q"]
    steps = [pip + [torch, "keras>=3.15.1", "h5py", "numpy", "packaging", "typer", "rich",
                    "ml-dtypes"],
             pip + ["--no-deps", str(REPO)]]
    for step in steps:
        if done.returncode != 0:
            break
        done = run(step)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) // 2**20
    error = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
    return time.perf_counter() - began, size, error


def make_files(folder: Path) -> list[Path]:
    """The kinds of file, their inputs and TensorFlow's predictions."""
    import numpy as np
    from helpers import dense_classifier, load, mobilenet_like, predict, tm_member, two_headed

    from fuse_cli.compatibility import input_specs
    from fuse_cli.merge import MergeOptions, merge_files
    from fuse_cli.tuning import TuneOptions, tune_files

    members = {"a.keras": dense_classifier(5, seed=1), "b.keras": dense_classifier(5, seed=2),
               "linear.keras": dense_classifier(5, seed=6, activation="linear"),
               "wide7.keras": dense_classifier(7, seed=4), "ha.keras": two_headed(9, "ha"),
               "hb.keras": two_headed(10, "hb")}
    backbone = mobilenet_like(0)
    members["tm1.keras"] = tm_member(1, backbone=backbone)
    members["tm2.keras"] = tm_member(2, backbone=backbone)
    for name, model in members.items():
        model.save(folder / name)
    shutil.copy(REPO / "tests" / "fixtures" / "legacy" / "hard_sigmoid_dense.h5",
                folder / "legacy.h5")
    f = {name: folder / name for name in [*members, "legacy.h5"]}
    kinds = {
        "sum.keras": ([f["a.keras"], f["b.keras"]], MergeOptions(weight=0.3)),
        "product.keras": ([f["a.keras"], f["b.keras"]], MergeOptions(mode="product")),
        "product_renormalized.keras": ([f["a.keras"], f["b.keras"]],
                                       MergeOptions(mode="product", renormalize=True)),
        "to_probabilities.keras": ([f["a.keras"], f["linear.keras"]],
                                   MergeOptions(to_probabilities=True)),
        "multi_output.keras": ([f["ha.keras"], f["hb.keras"]], MergeOptions()),
        "separate_inputs.keras": ([f["a.keras"], f["wide7.keras"]], MergeOptions()),
        "shared_backbone.keras": ([f["tm1.keras"], f["tm2.keras"]], MergeOptions()),
        "legacy_member.keras": ([f["legacy.h5"], f["legacy.h5"]], MergeOptions()),
        "soup.keras": ([f["a.keras"], f["b.keras"]], MergeOptions(mode="soup")),
    }
    for name, (paths, options) in kinds.items():
        merge_files(paths, folder / name, options)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.random((60, 5), dtype=np.float32),
             y=rng.integers(0, 10, 60))
    tune_files([f["a.keras"], f["b.keras"]], folder / "d.npz", folder / "calibrated.keras",
               TuneOptions(cv=0, calibrate="temperature"))  # type: ignore[arg-type]
    out = [folder / name for name in [*kinds, "calibrated.keras"]]
    for path in out:
        model = load(path)
        x = [rng.random((6, *(d or 4 for d in s.shape)), dtype=np.float32)
             for s in input_specs(model)]
        np.savez(f"{path}.in.npz", **{f"x{i}": v for i, v in enumerate(x)})
        ys = predict(model, x if len(x) > 1 else x[0])
        np.savez(f"{path}.tf.npz", **{f"y{i}": y.astype(np.float64) for i, y in enumerate(ys)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch==2.13.0")
    parser.add_argument("--venv", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "torch_latest.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        venv = args.venv or Path(tmp) / "torch-venv"
        seconds, size, error = make_venv(venv, args.torch)
        lines = ["# PyTorch parity (`benchmarks/torch_parity.py`)", "",
                 f"Install of `{args.torch}` + keras + h5py + numpy + fuse (no TensorFlow) into "
                 f"a fresh venv: {seconds:.0f} s, {size:,} MB.", ""]
        if error:
            lines += [f"**Not run**: the install failed: `{error}`"]
            args.out.write_text("\n".join(lines) + "\n")
            print("\n".join(lines))
            return
        files = make_files(Path(tmp))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        child = run([str(venv / "bin" / "python"), "-c", ON_TORCH,
                     json.dumps([str(p) for p in files])], env=env, timeout=1800)
        if child.returncode != 0:
            lines += ["**Failed** in the torch environment:", "", "```",
                      child.stderr.strip()[-2000:], "```"]
        else:
            found = json.loads(child.stdout.strip().splitlines()[-1])
            lines += [f"Backend `{found['backend']}`; TensorFlow installed in that environment: "
                      f"{found['tensorflow_installed']}.", "",
                      "| file kind | matches TensorFlow (rtol 1e-5, atol 1e-6) | max abs error |",
                      "| --- | --- | --- |"]
            lines += [f"| {name} | {'yes' if r['ok'] else '**no**'} | {r['max_abs_error']:.2e} |"
                      for name, r in found["files"].items()]
            verify = run([str(venv / "bin" / "fuse"), "verify", str(files[0]), "--json"],
                         env={**env, "KERAS_BACKEND": "torch"}, timeout=600)
            lines += ["", f"`KERAS_BACKEND=torch fuse verify sum.keras` in that environment: "
                      f"exit {verify.returncode}"
                      + (f", max abs error {json.loads(verify.stdout)['formula_max_abs_error']:.2e}"
                         if verify.returncode == 0 else f": {verify.stderr.strip()[-300:]}")]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
