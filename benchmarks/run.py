"""Benchmark `fuse` against the plain-Keras script it replaces (DESIGN §7).

Run from the repository root, in the environment fuse is installed in:

    python benchmarks/run.py            # the full run: MobileNetV2 members, 5 runs each
    python benchmarks/run.py --quick    # tiny members, one run each (what the smoke test runs)

Every measured command runs in a fresh interpreter; its wall time is taken here and
its peak RSS and CPU time come from `os.wait4`, which reports that one child's own
resource usage. Commands being compared run interleaved, in alternating order
(A B, B A, ...), so drift on the machine hits both sides alike. Medians are
reported, with the ratio fuse / peer for each pair.

Measured:
  1. `fuse --help` (and `--version`) against `python -c "import keras"`;
  2. `fuse merge` of two MobileNetV2 members (`.keras` + `.h5`) against
     `peer_merge_checked.py`, the plain-Keras load, combine and save that then checks
     its result as the seed answer does (reload, predict, compare); and
     `fuse merge --no-verify` against `peer_merge.py`, the same script without that
     check;
  3. the merged model's `predict` on one batch against the members' `predict` calls
     added up (`predict_bench.py`);
  4. merging 2, 4 and 8 members, fuse against the checking peer: time and peak
     memory, with a straight-line fit;
  5. the merged file's size against the members' sizes added up.

This script imports neither Keras nor numpy: it stays small, so nothing of it
leaks into its children's measurements. Results go to `benchmarks/results/<time>/`
(`results.json`, `table.md`, one log per command); `--latest` also copies the table
and the JSON to `benchmarks/latest.md` and `benchmarks/latest.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# DESIGN §7, as numbers.
GOAL_HELP = 0.10
GOAL_MERGE_WALL = 1.00  # against the checking peer, at every member count
GOAL_MERGE_RSS = 1.20
GOAL_NO_VERIFY_WALL = 0.90  # `--no-verify` against the peer without the check
GOAL_PREDICT = 1.05
GOAL_SIZE_OVERHEAD = 64 * 1024  # "plus a few KB": the merged config and provenance
GOALS = {
    "help": GOAL_HELP,
    "merge_wall": GOAL_MERGE_WALL,
    "merge_rss": GOAL_MERGE_RSS,
    "merge_no_verify_wall": GOAL_NO_VERIFY_WALL,
    "predict": GOAL_PREDICT,
    "size_overhead_bytes": GOAL_SIZE_OVERHEAD,
}


class BenchmarkError(Exception):
    """A measured command failed: the numbers would mean nothing."""


@dataclass
class Sample:
    """One run of one command."""

    wall_s: float
    cpu_s: float
    max_rss_mib: float


@dataclass
class Series:
    """Every run of one command, and their medians."""

    command: list[str]
    samples: list[Sample] = field(default_factory=list)

    def median(self, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "runs": len(self.samples),
            "wall_s": self.median("wall_s"),
            "cpu_s": self.median("cpu_s"),
            "max_rss_mib": self.median("max_rss_mib"),
            "samples": [asdict(s) for s in self.samples],
        }


class Runner:
    """Runs commands in fresh processes and measures each one on its own."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.count = 0

    def measure(self, command: Sequence[str], label: str) -> Sample:
        """Run `command` to completion; its wall time, CPU time and peak RSS.

        Raises:
            BenchmarkError: The command exited with a non-zero status.
        """
        self.count += 1
        log = self.logs / f"{self.count:03d}-{re.sub(r'[^A-Za-z0-9_.]+', '-', label)}.log"
        with open(log, "wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(
                list(command), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=self.env
            )
            # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be a running max.
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise BenchmarkError(
                f"{label}: exit {proc.returncode}: {' '.join(command)}\n  " + "\n  ".join(tail)
            )
        return Sample(
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_mib=usage.ru_maxrss / 1024,  # Linux: KiB
        )

    def run_quietly(self, command: Sequence[str], label: str) -> None:
        """Run a preparation step (not measured); fail loudly."""
        self.measure(command, label)


def interleaved(names: Sequence[str], runs: int) -> Iterator[tuple[int, str]]:
    """`(run, name)` in A B, B A, A B, ... order."""
    for run in range(runs):
        order = names if run % 2 == 0 else list(reversed(names))
        for name in order:
            yield run, name


def measure_all(
    runner: Runner, commands: dict[str, list[str]], runs: int, section: str,
    before: dict[str, list[Path]] | None = None,
) -> dict[str, Series]:
    """Measure every command `runs` times, interleaved; `before` lists files to delete."""
    series = {name: Series(command) for name, command in commands.items()}
    for run, name in interleaved(list(commands), runs):
        for path in (before or {}).get(name, []):
            path.unlink(missing_ok=True)
        sample = runner.measure(commands[name], f"{section}-{name}")
        series[name].samples.append(sample)
        log(f"[{section} {run + 1}/{runs}] {name:16s} {sample.wall_s:7.2f} s "
            f"{sample.max_rss_mib:7.0f} MiB  cpu {sample.cpu_s:6.2f} s")
    return series


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def fuse_command() -> list[str]:
    """The installed `fuse` console script beside this interpreter, else `-m fuse_cli`."""
    beside = Path(sys.executable).with_name("fuse")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("fuse")
    return [found] if found else [sys.executable, "-m", "fuse_cli"]


# --- the sections -------------------------------------------------------------------


def bench_startup(runner: Runner, runs: int) -> dict[str, Any]:
    fuse = fuse_command()
    series = measure_all(
        runner,
        {
            "fuse --help": [*fuse, "--help"],
            "import keras": [sys.executable, "-c", "import keras"],
            "fuse --version": [*fuse, "--version"],
        },
        runs,
        "startup",
    )
    help_, keras_, version = (series[k] for k in ("fuse --help", "import keras", "fuse --version"))
    return {
        "fuse_help": help_.to_dict(),
        "fuse_version": version.to_dict(),
        "import_keras": keras_.to_dict(),
        "ratio_wall": ratio(help_.median("wall_s"), keras_.median("wall_s")),
        "ratio_wall_version": ratio(version.median("wall_s"), keras_.median("wall_s")),
        "ratio_rss": ratio(help_.median("max_rss_mib"), keras_.median("max_rss_mib")),
    }


def bench_merge(
    runner: Runner, members: list[Path], outputs: Path, runs: int, *, no_verify: bool
) -> dict[str, Any]:
    """`fuse merge` against `peer_merge_checked.py` on the given members.

    With `no_verify`, also `fuse merge --no-verify` against `peer_merge.py` (no check).
    In the results, `peer` is always the checking peer (what `fuse` is compared with)
    and `peer_unchecked` the one without the check.
    """
    n = len(members)
    fuse_out = outputs / f"fuse_{n}.keras"
    peer_out = outputs / f"peer_{n}.keras"
    unchecked_out = outputs / f"peer_{n}_unchecked.keras"
    plain_out = outputs / f"fuse_{n}_no_verify.keras"
    names = [str(m) for m in members]
    commands = {
        "fuse": [*fuse_command(), "merge", *names, "-o", str(fuse_out)],
        "peer": [sys.executable, str(HERE / "peer_merge_checked.py"), str(peer_out), *names],
    }
    before = {"fuse": [fuse_out], "peer": [peer_out], "fuse --no-verify": [plain_out],
              "peer unchecked": [unchecked_out]}
    if no_verify:
        commands["fuse --no-verify"] = [
            *fuse_command(), "merge", *names, "-o", str(plain_out), "--no-verify"
        ]
        commands["peer unchecked"] = [
            sys.executable, str(HERE / "peer_merge.py"), str(unchecked_out), *names
        ]
    series = measure_all(runner, commands, runs, f"merge-{n}", before)
    fuse, peer = series["fuse"], series["peer"]
    members_size = sum(m.stat().st_size for m in members)
    result: dict[str, Any] = {
        "members": n,
        "fuse": fuse.to_dict(),
        "peer": peer.to_dict(),
        "ratio_wall": ratio(fuse.median("wall_s"), peer.median("wall_s")),
        "ratio_cpu": ratio(fuse.median("cpu_s"), peer.median("cpu_s")),
        "ratio_rss": ratio(fuse.median("max_rss_mib"), peer.median("max_rss_mib")),
        "members_size_bytes": members_size,
        "fuse_size_bytes": fuse_out.stat().st_size,
        "peer_size_bytes": peer_out.stat().st_size,
        "size_overhead_bytes": fuse_out.stat().st_size - members_size,
        "ratio_size": ratio(fuse_out.stat().st_size, members_size),
        "output": str(fuse_out),
    }
    if no_verify:
        plain, unchecked = series["fuse --no-verify"], series["peer unchecked"]
        result["fuse_no_verify"] = plain.to_dict()
        result["peer_unchecked"] = unchecked.to_dict()
        result["ratio_wall_no_verify"] = ratio(plain.median("wall_s"),
                                               unchecked.median("wall_s"))
        result["ratio_rss_no_verify"] = ratio(
            plain.median("max_rss_mib"), unchecked.median("max_rss_mib")
        )
    return result


def bench_predict(
    runner: Runner, merged: Path, members: list[Path], results: Path, *,
    processes: int, repeats: int, batch: int,
) -> dict[str, Any]:
    """The merged model's `predict` against its members' `predict` calls added up."""
    merged_s: list[float] = []
    summed_s: list[float] = []
    merged_cpu: list[float] = []
    summed_cpu: list[float] = []
    cold_merged: list[float] = []
    cold_summed: list[float] = []
    for process in range(processes):
        out = results / f"predict-{process}.json"
        runner.run_quietly(
            [sys.executable, str(HERE / "predict_bench.py"), "--merged", str(merged),
             "--members", *map(str, members), "--batch", str(batch),
             "--repeats", str(repeats), "--json", str(out)],
            "predict",
        )
        data = json.loads(out.read_text())
        merged_s += data["merged_s"]
        summed_s += [sum(times) for times in data["members_s"]]
        merged_cpu += data["merged_cpu_s"]
        summed_cpu += [sum(times) for times in data["members_cpu_s"]]
        cold_merged.append(data["cold_merged_s"])
        cold_summed.append(sum(data["cold_members_s"]))
        merged_median = statistics.median(data["merged_s"])
        summed_median = statistics.median(sum(t) for t in data["members_s"])
        log(f"[predict {process + 1}/{processes}] merged {merged_median:.3f} s  "
            f"members summed {summed_median:.3f} s")
    return {
        "batch": batch,
        "processes": processes,
        "repeats": repeats,
        "merged_s": statistics.median(merged_s),
        "members_summed_s": statistics.median(summed_s),
        "ratio": ratio(statistics.median(merged_s), statistics.median(summed_s)),
        # CPU seconds barely move when another process takes a core; wall time does.
        "merged_cpu_s": statistics.median(merged_cpu),
        "members_summed_cpu_s": statistics.median(summed_cpu),
        "ratio_cpu": ratio(statistics.median(merged_cpu), statistics.median(summed_cpu)),
        "cold_merged_s": statistics.median(cold_merged),
        "cold_members_summed_s": statistics.median(cold_summed),
        "ratio_cold": ratio(statistics.median(cold_merged), statistics.median(cold_summed)),
        "samples": {
            "merged_s": merged_s, "members_summed_s": summed_s,
            "merged_cpu_s": merged_cpu, "members_summed_cpu_s": summed_cpu,
        },
    }


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares `y = intercept + slope * x`, and how well a line explains the points."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    total = sum((y - mean_y) ** 2 for y in ys)
    return {
        "slope": slope,
        "intercept": intercept,
        "r2": 1.0 - residual / total if total > 0 else 1.0,
    }


def scaling_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = [float(r["members"]) for r in rows]
    fits = {}
    if len(rows) >= 2:
        for who in ("fuse", "peer"):
            for what in ("wall_s", "max_rss_mib"):
                ys = [r[who][what] for r in rows]
                fits[f"{who}_{what}"] = line_fit(counts, ys)
    return {"rows": rows, "fits": fits}


# --- report ---------------------------------------------------------------------------


def _fmt_s(value: float) -> str:
    return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"


def _fmt_mib(value: float) -> str:
    return f"{value:,.0f} MiB"


def _fmt_bytes(value: int) -> str:
    return f"{value / 1e6:,.2f} MB" if abs(value) >= 1e6 else f"{value / 1e3:,.1f} KB"


def _met(value: float, goal: float) -> str:
    return "yes" if value <= goal else "**no**"


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each DESIGN §7 goal with its measured value."""
    startup, merge, predict = results["startup"], results["merge"], results["predict"]
    rows = [
        ("`fuse --help` / `import keras`, wall", startup["ratio_wall"], GOAL_HELP),
        *(
            goal
            for row in results["scaling"]["rows"]
            for goal in (
                (f"`fuse merge` / checking peer, {row['members']} members, wall",
                 row["ratio_wall"], GOAL_MERGE_WALL),
                (f"`fuse merge` / checking peer, {row['members']} members, peak RSS",
                 row["ratio_rss"], GOAL_MERGE_RSS),
            )
        ),
        ("`fuse merge --no-verify` / unchecked peer, wall", merge["ratio_wall_no_verify"],
         GOAL_NO_VERIFY_WALL),
        ("merged `predict` / members' `predict` summed, wall", predict["ratio"], GOAL_PREDICT),
        ("merged `predict` / members' `predict` summed, CPU", predict["ratio_cpu"],
         GOAL_PREDICT),
        ("merged file − members' files (bytes)", merge["size_overhead_bytes"],
         GOAL_SIZE_OVERHEAD),
    ]
    return [
        {"goal": name, "value": value, "limit": limit, "met": value <= limit}
        for name, value, limit in rows
    ]


def render_table(results: dict[str, Any]) -> str:
    """The Markdown tables: the pairs, the goals, the scaling, the machine."""
    cfg, machine = results["config"], results["machine"]
    startup, merge, predict = results["startup"], results["merge"], results["predict"]
    scaling = results["scaling"]
    n = merge["members"]
    arch = f"{cfg['architecture']} {cfg['input_size']}x{cfg['input_size']}x3, "
    if cfg["architecture"] == "MobileNetV2":
        arch += f"alpha {cfg['alpha']}, "
    arch += f"{cfg['member_params']:,} params"
    lines = [
        f"Members: {arch}. Medians of {cfg['runs']} interleaved runs "
        f"(scaling: {cfg['scale_runs']}); each run a fresh process.",
        "",
        "Peers: `peer_merge_checked.py` (load, combine, save, then reload, predict and "
        "compare, as the seed answer checks) for `fuse merge`; `peer_merge.py` (the same "
        "without the check) for `--no-verify`.",
        "",
        "| measurement | fuse | plain Keras | fuse / Keras | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]

    def pair(  # noqa: ANN001
        name: str, a: float, b: float, fmt, goal: float | None, digits: int = 2
    ) -> None:
        r = ratio(a, b)
        goal_text = f"<= {goal:.2f}x" if goal is not None else ""
        met = _met(r, goal) if goal is not None else ""
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {r:.{digits}f}x | {goal_text} | {met} |")

    pair("`fuse --help` vs `python -c \"import keras\"`, wall", startup["fuse_help"]["wall_s"],
         startup["import_keras"]["wall_s"], _fmt_s, GOAL_HELP)
    pair("`fuse --version` vs `import keras`, wall", startup["fuse_version"]["wall_s"],
         startup["import_keras"]["wall_s"], _fmt_s, GOAL_HELP)
    pair(f"merge {n} members (`.keras` + `.h5`) vs checking peer, wall",
         merge["fuse"]["wall_s"], merge["peer"]["wall_s"], _fmt_s, GOAL_MERGE_WALL)
    pair(f"merge {n} members vs checking peer, peak RSS", merge["fuse"]["max_rss_mib"],
         merge["peer"]["max_rss_mib"], _fmt_mib, GOAL_MERGE_RSS)
    pair(f"merge {n} members vs checking peer, CPU time", merge["fuse"]["cpu_s"],
         merge["peer"]["cpu_s"], _fmt_s, None)
    if "fuse_no_verify" in merge:
        pair(f"merge {n} members `--no-verify` vs unchecked peer, wall",
             merge["fuse_no_verify"]["wall_s"], merge["peer_unchecked"]["wall_s"], _fmt_s,
             GOAL_NO_VERIFY_WALL)
        pair(f"merge {n} members `--no-verify` vs unchecked peer, peak RSS",
             merge["fuse_no_verify"]["max_rss_mib"],
             merge["peer_unchecked"]["max_rss_mib"], _fmt_mib, None)
    lines.append(
        f"| `predict`, batch {predict['batch']}: merged vs members summed | "
        f"{_fmt_s(predict['merged_s'])} | {_fmt_s(predict['members_summed_s'])} | "
        f"{predict['ratio']:.2f}x | <= {GOAL_PREDICT:.2f}x | "
        f"{_met(predict['ratio'], GOAL_PREDICT)} |"
    )
    pair(f"`predict`, batch {predict['batch']}: CPU time", predict["merged_cpu_s"],
         predict["members_summed_cpu_s"], _fmt_s, GOAL_PREDICT)
    lines.append(
        f"| first `predict` (traces), merged vs members summed | "
        f"{_fmt_s(predict['cold_merged_s'])} | {_fmt_s(predict['cold_members_summed_s'])} | "
        f"{predict['ratio_cold']:.2f}x |  |  |"
    )
    overhead = merge["size_overhead_bytes"]
    lines.append(
        f"| merged file vs members' files summed | {_fmt_bytes(merge['fuse_size_bytes'])} | "
        f"{_fmt_bytes(merge['members_size_bytes'])} | {merge['ratio_size']:.4f}x "
        f"({'+' if overhead >= 0 else '−'}{_fmt_bytes(abs(overhead))}) | "
        f"<= +{GOAL_SIZE_OVERHEAD // 1024} KB | {_met(overhead, GOAL_SIZE_OVERHEAD)} |"
    )
    pair("merged file, fuse's vs plain Keras's", merge["fuse_size_bytes"],
         merge["peer_size_bytes"], _fmt_bytes, None, digits=4)
    lines += [
        "",
        "Scaling (`fuse merge` with verification, and the checking peer; goals <= "
        f"{GOAL_MERGE_WALL:.2f}x wall, <= {GOAL_MERGE_RSS:.2f}x peak RSS at every row):",
        "",
        "| members | fuse wall | Keras wall | ratio | fuse peak RSS | Keras peak RSS | ratio "
        "| merged file | members' files |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in scaling["rows"]:
        lines.append(
            f"| {row['members']} | {_fmt_s(row['fuse']['wall_s'])} | "
            f"{_fmt_s(row['peer']['wall_s'])} | {row['ratio_wall']:.2f}x | "
            f"{_fmt_mib(row['fuse']['max_rss_mib'])} | {_fmt_mib(row['peer']['max_rss_mib'])} | "
            f"{row['ratio_rss']:.2f}x | {_fmt_bytes(row['fuse_size_bytes'])} | "
            f"{_fmt_bytes(row['members_size_bytes'])} |"
        )
    fits = scaling["fits"]
    if fits:
        lines += [
            "",
            "Per added member (least-squares line over the rows above): "
            f"fuse {fits['fuse_wall_s']['slope']:.2f} s and "
            f"{fits['fuse_max_rss_mib']['slope']:.0f} MiB "
            f"(R² {fits['fuse_wall_s']['r2']:.3f} / {fits['fuse_max_rss_mib']['r2']:.3f}); "
            f"checking peer {fits['peer_wall_s']['slope']:.2f} s and "
            f"{fits['peer_max_rss_mib']['slope']:.0f} MiB "
            f"(R² {fits['peer_wall_s']['r2']:.3f} / {fits['peer_max_rss_mib']['r2']:.3f}).",
        ]
    load = machine["load_average"]
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']:.0f} GiB RAM, {machine['os']}; Python {machine['python']}, "
        f"TensorFlow {machine['versions'].get('tensorflow')}, "
        f"Keras {machine['versions'].get('keras')}, fuse {machine['versions'].get('fuse-cli')} "
        f"({machine['git']}). Load average {load['start'][0]:.2f} at the start, "
        f"{load['end'][0]:.2f} at the end. {results['finished']}, "
        f"{results['duration_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


# --- the machine ------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    memory_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    versions = {}
    for dist in ("tensorflow", "keras", "numpy", "h5py", "typer", "fuse-cli"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cpus": cpus,
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": git_revision(),
        "load_average": {"start": list(os.getloadavg())},
    }


def git_revision() -> str:
    """The commit measured, `+dirty` with uncommitted changes; read-only git calls."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # never rewrite the index
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, env=env,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, env=env,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark fuse against plain Keras (DESIGN §7).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny CNN members (32x32), one run each, members 2,3: checks "
                        "that the script works, measures nothing worth keeping")
    parser.add_argument("--runs", type=int, default=5, help="runs of each startup/merge command")
    parser.add_argument("--scale-runs", type=int, default=3,
                        help="runs of each merge in the scaling section")
    parser.add_argument("--members", default="2,4,8",
                        help="member counts for the scaling section; the first is the pair")
    parser.add_argument("--predict-processes", type=int, default=3,
                        help="fresh processes for the predict comparison")
    parser.add_argument("--predict-repeats", type=int, default=5,
                        help="timed predict rounds in each process, after one cold call")
    parser.add_argument("--batch", type=int, default=64, help="predict batch size")
    parser.add_argument("--arch", choices=("mobilenetv2", "tiny"), default="mobilenetv2",
                        help="member architecture")
    parser.add_argument("--input-size", type=int, default=224, help="member image side")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--classes", type=int, default=1000, help="member output classes")
    parser.add_argument("--out", type=Path, help="results folder "
                        "(default: benchmarks/results/<date-time>)")
    parser.add_argument("--json", type=Path, help="also write the JSON results here")
    parser.add_argument("--latest", action="store_true",
                        help="also write benchmarks/latest.md and benchmarks/latest.json")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep the member and merged model files in the results folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = args.scale_runs = args.predict_processes = 1
        args.predict_repeats = 2
        args.arch, args.input_size, args.classes = "tiny", 32, 10
        if args.members == parser.get_default("members"):
            args.members = "2,3"
    args.member_counts = sorted({int(n) for n in args.members.split(",")})
    if args.member_counts[0] < 2 or min(args.runs, args.scale_runs) < 1:
        parser.error("--members start at 2, --runs and --scale-runs are at least 1")
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    out = args.out or HERE / "results" / time.strftime("%Y%m%d-%H%M%S")
    models, logs = out / "models", out / "logs"
    for folder in (models, logs):
        folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    runner = Runner(logs, env)
    machine = machine_info()

    log(f"building {max(args.member_counts)} members in {models} ...")
    runner.run_quietly(
        [sys.executable, str(HERE / "make_members.py"), "--out", str(models),
         "--count", str(max(args.member_counts)), "--arch", args.arch,
         "--input-size", str(args.input_size),
         "--alpha", str(args.alpha), "--classes", str(args.classes)],
        "make-members",
    )
    manifest = json.loads((models / "members.json").read_text())
    member_files = [models / m["file"] for m in manifest["members"]]

    results: dict[str, Any] = {
        "schema": 1,
        "config": {
            "runs": args.runs, "scale_runs": args.scale_runs, "members": args.member_counts,
            "predict_processes": args.predict_processes,
            "predict_repeats": args.predict_repeats, "batch": args.batch,
            "architecture": manifest["architecture"], "input_size": args.input_size,
            "alpha": args.alpha, "classes": args.classes,
            "member_params": manifest["members"][0]["params"],
            "member_files": manifest["members"], "quick": args.quick,
        },
        "goals_limits": GOALS,
        "machine": machine,
    }
    results["startup"] = bench_startup(runner, args.runs)
    pair_n = args.member_counts[0]
    merge = bench_merge(runner, member_files[:pair_n], models, args.runs, no_verify=True)
    results["merge"] = merge
    results["predict"] = bench_predict(
        runner, Path(merge["output"]), member_files[:pair_n], out,
        processes=args.predict_processes, repeats=args.predict_repeats, batch=args.batch,
    )
    rows = [merge]
    for n in args.member_counts[1:]:
        rows.append(bench_merge(runner, member_files[:n], models, args.scale_runs,
                                no_verify=False))
    results["scaling"] = scaling_summary(
        [{k: v for k, v in row.items() if k not in ("fuse_no_verify", "peer_unchecked")}
         for row in rows]
    )
    machine["load_average"]["end"] = list(os.getloadavg())
    results["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
    results["duration_s"] = time.time() - started
    results["goals"] = goal_rows(results)

    if not args.keep_models:
        shutil.rmtree(models, ignore_errors=True)
    table = render_table(results)
    text = json.dumps(results, indent=2) + "\n"
    (out / "results.json").write_text(text)
    (out / "table.md").write_text(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    if args.latest:
        (HERE / "latest.json").write_text(text)
        (HERE / "latest.md").write_text(table)
    sys.stdout.write(table)
    log(f"results in {out}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_benchmark(args)
    except BenchmarkError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
