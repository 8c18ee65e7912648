"""`fuse evaluate --data DIR` on a generated image folder: peak memory and throughput.

For each folder size: writes sklearn's digits, upscaled to 224x224 RGB (PNG and JPEG
alternating), into one subfolder per class, then runs in fresh interpreters,
interleaved:

- `fuse`: `fuse evaluate member_0.keras member_1.h5 --data DIR` (streamed, one pass
  per member, scores computed);
- `peer`: `images_peer.py`, the members' own `model.predict` over the same `tf.data`
  pipeline (fuse's reading, decoding and resizing), nothing else.

Peak RSS and CPU time come from `os.wait4` on each child; wall time around it. The
goal (issue #15): peak RSS under 1.5 GB and flat as the folder grows; fuse's
throughput at least 0.9x the peer's. Members are two MobileNetV2 (alpha 1.0, 10
classes, weights=None: nothing is downloaded).

Usage: python benchmarks/images_bench.py [--sizes 1000,2000] [--runs 1] [--out DIR]
Prints a Markdown table and writes results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def make_folder(root: Path, count: int) -> None:
    """`count` digit images at 224x224 RGB: PNG and JPEG alternating, one folder per class."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images / 16.0
    for i in range(count):
        k = i % len(images)
        pixels = np.repeat(images[k][:, :, None], 3, axis=2) * 255
        pixels = tf.image.resize(pixels, (224, 224), method="bilinear")
        pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
        folder = root / f"digit_{digits.target[k]}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            (folder / f"{i:06d}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
        else:
            (folder / f"{i:06d}.png").write_bytes(tf.io.encode_png(pixels).numpy())


def measure(command: list[str], log: Path) -> dict[str, float]:
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)} (see {log})")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000", help="folder sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=1, help="runs per command and size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    members = args.out / "members"
    if not (members / "member_1.h5").exists():
        subprocess.run([sys.executable, HERE / "make_members.py", "--out", members,
                        "--count", "2", "--classes", "10"], check=True, env=ENV)
    paths = [str(members / "member_0.keras"), str(members / "member_1.h5")]
    fuse = str(Path(sys.executable).parent / "fuse")
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = args.out / f"digits_{size}"
        if not folder.exists():
            make_folder(folder, size)
        commands = {
            "fuse": [fuse, "evaluate", *paths, "--data", str(folder),
                     "--batch-size", str(args.batch_size), "--json"],
            "peer": [sys.executable, str(HERE / "images_peer.py"), str(folder),
                     str(args.batch_size), *paths],
        }
        for run in range(args.runs):
            order = list(commands) if run % 2 == 0 else list(commands)[::-1]
            for name in order:
                sample = measure(commands[name], args.out / f"{name}_{size}_{run}.log")
                sample.update(command=name, images=size, run=run,
                              images_per_s=2 * size / sample["wall_s"])
                results.append(sample)
                print(f"{name:4} {size:6} images: {sample['wall_s']:7.1f} s wall, "
                      f"{sample['images_per_s']:6.1f} member-images/s, peak RSS "
                      f"{sample['peak_rss_mib']:7.1f} MiB", flush=True)
    (args.out / "results.json").write_text(json.dumps({
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "batch_size": args.batch_size,
        "samples": results}, indent=2) + "\n")

    print("\n| images | fuse wall | peer wall | throughput fuse/peer | fuse CPU | peer CPU | "
          "fuse peak RSS | peer peak RSS |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
          "---: |")
    for size in sorted({r["images"] for r in results}):
        def median(name: str, key: str, size: int = size) -> float:
            values = sorted(r[key] for r in results if r["command"] == name
                            and r["images"] == size)
            return values[len(values) // 2]
        f, p = median("fuse", "wall_s"), median("peer", "wall_s")
        rss_fuse, rss_peer = median("fuse", "peak_rss_mib"), median("peer", "peak_rss_mib")
        cpu_fuse, cpu_peer = median("fuse", "cpu_s"), median("peer", "cpu_s")
        print(f"| {size:,} | {f:.1f} s | {p:.1f} s | {p / f:.2f}x | {cpu_fuse:.1f} s | "
              f"{cpu_peer:.1f} s | {rss_fuse:.0f} MiB | {rss_peer:.0f} MiB |")


if __name__ == "__main__":
    main()
