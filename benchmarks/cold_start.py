"""Cold start as a receiver meets it: each model's load and first `predict`, each in its
own fresh process, on TensorFlow and on JAX.

For each backend and each case, every model file (the merged file, and each member) is
loaded and called once on one batch in a fresh interpreter, `--runs` times (median); the
child reports its load time and its first call's time separately, after importing Keras
(the import is the same for every file and is not counted). The ratio is the merged
file's load + first call over the members' loads + first calls added up (goal <= 1.0x).
Cases: two MobileNetV2 members (`--size` x `--size`, weights=None: nothing downloaded),
and two Teachable-Machine-shaped members with one shared backbone.

Usage: python benchmarks/cold_start.py [--runs 3] [--size 224] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

CHILD = r"""
import json, os, sys, time
import numpy as np
import keras
import fuse_cli.layers
path, size = sys.argv[1], json.loads(sys.argv[2])
began = time.perf_counter()
model = keras.saving.load_model(path, compile=False)
loaded = time.perf_counter()
x = np.random.default_rng(0).random((1, *size), dtype=np.float32)
model.predict(x, verbose=0)
done = time.perf_counter()
print(json.dumps({"load": loaded - began, "first_call": done - loaded,
                  "backend": keras.backend.backend()}))
"""


def cold(path: Path, size: list[int], backend: str, runs: int) -> dict[str, float]:
    """Median load and first-call seconds of `path` over `runs` fresh processes."""
    loads, calls = [], []
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for _ in range(runs):
        child = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(size)],
                               capture_output=True, text=True, env=env, check=True)
        found = json.loads(child.stdout.strip().splitlines()[-1])
        assert found["backend"] == backend
        loads.append(found["load"])
        calls.append(found["first_call"])
    return {"load": statistics.median(loads), "first_call": statistics.median(calls)}


def cases(folder: Path, size: int) -> dict[str, tuple[list[Path], Path, list[int]]]:
    """Each case: its members, the merged file, the input shape."""
    from helpers import mobilenet_like, tm_member
    from make_members import build_member

    from fuse_cli.merge import MergeOptions, merge_files

    found = {}
    members = []
    for seed in (0, 1):
        path = folder / f"mobilenetv2_{seed}.keras"
        build_member(seed, "mobilenetv2", size, 1.0, 1000).save(path)
        members.append(path)
    merge_files(members, folder / "mobilenetv2_merged.keras", MergeOptions())
    found["two MobileNetV2"] = (members, folder / "mobilenetv2_merged.keras", [size, size, 3])
    backbone = mobilenet_like(0, (size, size, 3))
    shared = []
    for seed in (1, 2):
        path = folder / f"tm_{seed}.keras"
        tm_member(seed, backbone=backbone).save(path)
        shared.append(path)
    merge_files(shared, folder / "tm_merged.keras", MergeOptions())
    found["two heads, one shared backbone"] = (shared, folder / "tm_merged.keras",
                                               [size, size, 3])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--out", type=Path, default=HERE / "cold_start_latest.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (members, merged, shape) in cases(Path(tmp), args.size).items():
            for backend in args.backends.split(","):
                ours = cold(merged, shape, backend, args.runs)
                theirs = [cold(m, shape, backend, args.runs) for m in members]
                total = {k: sum(t[k] for t in theirs) for k in ("load", "first_call")}
                ratio = (ours["load"] + ours["first_call"]) / (total["load"]
                                                               + total["first_call"])
                rows.append({"case": name, "backend": backend, "merged": ours,
                             "members": total, "ratio": ratio})
                print(json.dumps(rows[-1]), flush=True)
    lines = [f"Median of {args.runs} fresh processes per file; seconds; input "
             f"{args.size}x{args.size}x3, batch 1.", "",
             "| case | backend | merged: load + first call | members added up: load + first "
             "call | ratio |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        m, t = r["merged"], r["members"]
        lines.append(f"| {r['case']} | {r['backend']} | {m['load']:.2f} + {m['first_call']:.2f}"
                     f" | {t['load']:.2f} + {t['first_call']:.2f} | {r['ratio']:.2f}x |")
    args.out.write_text("\n".join(lines) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
