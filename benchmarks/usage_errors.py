"""How fast fuse answers a usage or path error: each in a fresh process, median of runs.

    python benchmarks/usage_errors.py [--runs N] [--markdown OUT.md]

DESIGN §7: usage and path errors come before TensorFlow is imported (under 0.5 s). The
reference is typer's own error for an unknown option, which never reaches fuse's code.
Uses the `fuse` beside this interpreter and the bundled sample models.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fuse() -> str:
    here = Path(sys.executable).parent / "fuse"
    return str(here) if here.exists() else "fuse"


def cases(folder: Path) -> list[tuple[str, list[str], int]]:
    a, b = str(ROOT / "sample_models" / "cnn_a.keras"), str(ROOT / "sample_models" / "cnn_b.h5")
    existing = folder / "exists.keras"
    existing.write_bytes(b"old")
    images = folder / "images" / "cat"
    images.mkdir(parents=True, exist_ok=True)
    return [
        ("typer's own error (unknown option)", ["merge", a, b, "--no-such-option"], 2),
        ("merge --weight 1.5", ["merge", a, b, "-o", str(folder / "e.keras"), "--weight",
                                "1.5"], 2),
        ("merge, OUT exists", ["merge", a, b, "-o", str(existing)], 5),
        ("merge, a missing member", ["merge", a, str(folder / "missing.keras"), "-o",
                                     str(folder / "e.keras")], 3),
        ("merge, bad output extension", ["merge", a, b, "-o", str(folder / "e.txt")], 2),
        ("export, bad artifact extension", ["export", a, "--format", "litert", "-o",
                                            str(folder / "e.onnx")], 2),
        ("evaluate --offset nan", ["evaluate", a, "--data", str(folder / "images"),
                                   "--offset", "nan"], 2),
        ("tune, OUT exists", ["tune", a, b, "--data", str(folder / "images"), "-o",
                              str(existing)], 5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, argv, code in cases(Path(scratch)):
            times = []
            for _ in range(args.runs):
                began = time.perf_counter()
                done = subprocess.run([fuse(), *argv], capture_output=True, text=True)
                times.append(time.perf_counter() - began)
                assert done.returncode == code, (name, done.returncode, done.stderr)
            rows.append((name, code, statistics.median(times)))
            print(f"{name:40} exit {code}  {statistics.median(times):.2f} s", flush=True)
    if args.markdown:
        lines = ["# Usage and path errors: time to the answer", "",
                 f"`benchmarks/usage_errors.py --runs {args.runs}`: each a fresh process, "
                 "median wall time. Goal (DESIGN §7): under 0.5 s, before TensorFlow.", "",
                 "| case | exit | wall |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {code} | {seconds:.2f} s |" for name, code, seconds in rows]
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
