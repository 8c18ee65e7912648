"""Measure backbone sharing (issue #16): members built like Teachable Machine exports.

    python benchmarks/share_bench.py                  # alpha 1.0 and 0.35, 2 and 4 members
    python benchmarks/share_bench.py --quick          # tiny members: checks the script
    python benchmarks/share_bench.py --json OUT.json --markdown OUT.md

Each member is shaped like a Teachable Machine image export: a Sequential holding a
frozen nested feature extractor — `keras.applications.MobileNetV2(weights=None,
include_top=False)` at 224x224 built after `keras.utils.set_random_seed(0)`, so every
member's backbone is bit-identical, then global average pooling — and a Dense head of
its own (`Dense(100, relu)`, `Dense(classes, softmax, no bias)`, weights from the
member's seed). Nothing is downloaded.

For 2 and 4 members, `fuse merge` (verification on) writes the ensemble with sharing
(the default) and with `--no-share`; `predict_bench.py` then times, in a fresh
process each, the merged model's `predict` on one batch against the members'
`predict` calls added up (median of the rounds; CPU time too). File sizes are
compared with the members' files added up. Goals (issue #16): with sharing, 2
members <= 0.55x the members' summed predict time and file size, 4 members <= 0.3x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
GOALS = {2: 0.55, 4: 0.3}


def build_members(folder: Path, count: int, alpha: float, size: int, classes: int,
                  tiny: bool) -> list[Path]:
    """Save `count` Teachable-Machine-shaped members; formats alternate .keras / .h5."""
    code = f"""
import os, sys, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
folder, count = {str(folder)!r}, {count}
for i in range(count):
    keras.utils.set_random_seed(0)  # the same backbone in every member
    if {tiny!r}:
        inp = keras.Input(({size}, {size}, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
        backbone = keras.Model(inp, keras.layers.DepthwiseConv2D(3)(x), name="tiny_backbone")
    else:
        backbone = keras.applications.MobileNetV2(
            input_shape=({size}, {size}, 3), alpha={alpha}, include_top=False, weights=None)
    backbone.trainable = False
    features = keras.Sequential(
        [keras.Input(({size}, {size}, 3)), backbone, keras.layers.GlobalAveragePooling2D()],
        name="sequential_1")
    width = features.outputs[0].shape[-1]
    head = keras.Sequential([keras.Input((width,)), keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense({classes}, activation="softmax", use_bias=False)], name="sequential_3")
    rng = np.random.default_rng(100 + i)
    for layer in head.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32")
                           for w in layer.get_weights()])
    model = keras.Sequential([keras.Input(({size}, {size}, 3)), features, head],
                             name="sequential_4")
    path = os.path.join(folder, f"member_{{i}}." + ("keras" if i % 2 == 0 else "h5"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    print(path, model.count_params(), backbone.count_params())
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return [Path(line.split()[0]) for line in out.splitlines() if line.strip()]


def fuse_merge(members: list[Path], out: Path, share: bool) -> dict[str, Any]:
    fuse = Path(sys.executable).with_name("fuse")
    command = [str(fuse), "merge", *map(str, members), "-o", str(out), "--json", "--force"]
    if not share:
        command.append("--no-share")
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fuse merge failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - start
    return report


def predict_times(merged: Path, members: list[Path], batch: int, repeats: int,
                  folder: Path) -> dict[str, float]:
    out = folder / f"{merged.stem}_predict.json"
    subprocess.run(
        [sys.executable, str(HERE / "predict_bench.py"), "--merged", str(merged),
         "--members", *map(str, members), "--batch", str(batch), "--repeats", str(repeats),
         "--json", str(out)],
        check=True, capture_output=True, text=True,
    )
    data = json.loads(out.read_text())
    return {
        "merged_s": statistics.median(data["merged_s"]),
        "members_s": statistics.median(sum(t) for t in data["members_s"]),
        "merged_cpu_s": statistics.median(data["merged_cpu_s"]),
        "members_cpu_s": statistics.median(sum(t) for t in data["members_cpu_s"]),
    }


def measure(alpha: float, count: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    work = folder / f"alpha{alpha}_n{count}"
    work.mkdir(parents=True)
    members = build_members(work, count, alpha, args.size, args.classes, args.quick)
    summed_size = sum(p.stat().st_size for p in members)
    backbone = "tiny CNN (--quick)" if args.quick else f"MobileNetV2 alpha {alpha}"
    row: dict[str, Any] = {"backbone": backbone, "alpha": alpha, "members": count,
                           "members_size": summed_size}
    for share in (True, False):
        key = "shared" if share else "no_share"
        out = work / f"{key}.keras"
        report = fuse_merge(members, out, share)
        times = predict_times(out, members, args.batch, args.repeats, work)
        row[key] = {
            "size": out.stat().st_size,
            "merge_wall_s": report["wall_s"],
            "sharing": report["sharing"],
            **times,
        }
    shared, whole = row["shared"], row["no_share"]
    row["ratios"] = {
        "predict_vs_members": shared["merged_s"] / shared["members_s"],
        "predict_cpu_vs_members": shared["merged_cpu_s"] / shared["members_cpu_s"],
        "size_vs_members": shared["size"] / summed_size,
        "predict_vs_no_share": shared["merged_s"] / whole["merged_s"],
        "size_vs_no_share": shared["size"] / whole["size"],
        "no_share_predict_vs_members": whole["merged_s"] / whole["members_s"],
    }
    for path in work.iterdir():
        if path.is_file():
            path.unlink()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backbone | members | predict: shared / members summed | CPU | vs `--no-share` | "
        "file: shared / members summed | vs `--no-share` | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in rows:
        r, s = row["ratios"], row["shared"]
        goal = GOALS.get(row["members"])
        met = "" if goal is None else (
            "yes" if r["predict_vs_members"] <= goal and r["size_vs_members"] <= goal
            else "**no**")
        lines.append(
            f"| {row['backbone']} | {row['members']} | "
            f"{s['merged_s']:.3f} s / {s['members_s']:.3f} s = {r['predict_vs_members']:.2f}x | "
            f"{r['predict_cpu_vs_members']:.2f}x | {r['predict_vs_no_share']:.2f}x | "
            f"{s['size'] / 1e6:.2f} MB / {row['members_size'] / 1e6:.2f} MB = "
            f"{r['size_vs_members']:.3f}x | {r['size_vs_no_share']:.3f}x | "
            f"<= {goal}x | {met} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.35])
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny members, 32x32, 1 repeat")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.alphas, args.counts, args.size, args.batch, args.repeats = [1.0], [2], 32, 4, 1
    started = time.time()
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuse-share-") as tmp:
        for alpha in args.alphas:
            for count in args.counts:
                rows.append(measure(alpha, count, args, Path(tmp)))
                sys.stderr.write(f"alpha {alpha}, {count} members: {rows[-1]['ratios']}\n")
    text = table(rows)
    text += (
        f"\nBatch {args.batch} at {args.size}x{args.size}, median of {args.repeats} rounds; "
        f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
        f"load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
        f"{(time.time() - started) / 60:.1f} min.\n"
    )
    sys.stdout.write(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "quick": args.quick}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
