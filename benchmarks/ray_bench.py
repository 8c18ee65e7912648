"""`fuse evaluate --data DIR` on the local engine and on Ray (1 and 2 workers), same folder.

The folder and the members are `images_bench.py`'s: sklearn's digits upscaled to
224x224 RGB (PNG and JPEG alternating), two MobileNetV2 (alpha 1.0, 10 classes,
weights=None). Each command runs in a fresh process; the runs are interleaved.

Measured per run:
- wall time and throughput (member-images/s: 2 members x images / wall);
- peak RSS per process: the fuse process itself and each process below it (Ray's GCS,
  raylet, dashboard agents, workers), sampled from /proc every 0.2 s; the largest worker
  and the largest sum over the tree at one sample;
- Ray's start-up cost: the same three commands on a 64-image folder, where the pass
  itself is short; the difference to the local engine is what Ray costs to start, load
  the members in its actors and stop.

Usage: python benchmarks/ray_bench.py [--size 20000] [--runs 1] [--out DIR]
Prints a Markdown table and writes results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from images_bench import ENV, make_folder  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree(root: int) -> dict[int, tuple[str, int]]:
    """Every process below `root` (itself included): name and RSS in bytes."""
    parents: dict[int, int] = {}
    found: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        found[int(entry)] = (command, int(fields[21]) * PAGE)
    below = {root}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in below and pid not in below:
                below.add(pid)
                changed = True
    return {pid: found[pid] for pid in below if pid in found}


def role(command: str, pid: int, root: int) -> str:
    if pid == root:
        return "fuse"
    for key, name in (("gcs_server", "gcs"), ("raylet", "raylet"), ("dashboard", "dashboard"),
                      ("log_monitor", "log monitor"), ("default_worker", "worker"),
                      ("ray::", "worker")):
        if key in command:
            return name
    return "other"


def measure(command: list[str], log: Path) -> dict:
    peaks: dict[int, tuple[str, int]] = {}
    total_peak = 0
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        done = threading.Event()

        def sample() -> None:
            nonlocal total_peak
            while not done.is_set():
                now = tree(proc.pid)
                total_peak = max(total_peak, sum(rss for _, rss in now.values()))
                for pid, (cmd, rss) in now.items():
                    if rss > peaks.get(pid, ("", 0))[1]:
                        peaks[pid] = (role(cmd, pid, proc.pid), rss)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)} (see {log})")
    by_role: dict[str, float] = {}
    for name, rss in peaks.values():
        by_role[name] = max(by_role.get(name, 0.0), rss / 2**20)
    return {"wall_s": wall, "peak_rss_mib": by_role, "tree_peak_mib": total_peak / 2**20,
            "workers": sum(1 for name, _ in peaks.values() if name == "worker")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=1)
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
    engines = {"local": [], "ray 1 worker": ["--engine", "ray", "--workers", "1"],
               "ray 2 workers": ["--engine", "ray", "--workers", "2"]}
    results = []
    for size in (64, args.size):
        folder = args.out / f"digits_{size}"
        if not folder.exists():
            make_folder(folder, size)
        for run in range(args.runs if size == args.size else 1):
            order = list(engines) if run % 2 == 0 else list(engines)[::-1]
            for name in order:
                command = [fuse, "evaluate", *paths, "--data", str(folder), "--batch-size",
                           str(args.batch_size), "--json", *engines[name]]
                sample = measure(command, args.out / f"ray_{name.replace(' ', '_')}_{size}.log")
                sample.update(engine=name, images=size, run=run,
                              images_per_s=2 * size / sample["wall_s"])
                results.append(sample)
                rss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(sample["peak_rss_mib"].items()))
                print(f"{name:13} {size:6} images: {sample['wall_s']:7.1f} s wall, "
                      f"{sample['images_per_s']:6.1f} member-images/s; peak RSS MiB: {rss}; "
                      f"tree {sample['tree_peak_mib']:.0f}", flush=True)
    (args.out / "ray_results.json").write_text(json.dumps({
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "batch_size": args.batch_size,
        "samples": results}, indent=2) + "\n")
    table(results, args.size)


def table(results: list[dict], size: int) -> None:
    def median(name: str, key: str, images: int) -> float:
        values = sorted(r[key] for r in results if r["engine"] == name and r["images"] == images)
        return values[len(values) // 2]

    local = median("local", "wall_s", size)
    start_local = median("local", "wall_s", 64)
    print(f"\n| engine | {size:,} images wall | member-images/s | vs local | start-up cost "
          "(64 images, minus local) | peak RSS: fuse process | largest worker | whole tree |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in ("local", "ray 1 worker", "ray 2 workers"):
        wall = median(name, "wall_s", size)
        sample = next(r for r in results if r["engine"] == name and r["images"] == size)
        startup = median(name, "wall_s", 64) - start_local
        worker = sample["peak_rss_mib"].get("worker")
        print(f"| {name} | {wall:.1f} s | {2 * size / wall:.1f} | {local / wall:.2f}x | "
              f"{startup:+.1f} s | {sample['peak_rss_mib'].get('fuse', 0):.0f} MiB | "
              f"{f'{worker:.0f} MiB' if worker else '-'} | {sample['tree_peak_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
