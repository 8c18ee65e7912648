"""Smoke test of the benchmark script: it runs end to end on tiny members.

Only the shape of the results is checked (every measurement present, positive,
every ratio finite); timings are never asserted (DESIGN §7).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
MEASURED = ("wall_s", "cpu_s", "max_rss_mib")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out / "results"),
         "--json", str(out / "bench.json")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| measurement |" in proc.stdout
    assert (out / "results" / "table.md").read_text() in proc.stdout
    assert not (out / "results" / "models").exists()  # model files are removed
    return json.loads((out / "bench.json").read_text())


def assert_series(series: dict, runs: int) -> None:
    assert series["runs"] == runs == len(series["samples"])
    for key in MEASURED:
        assert series[key] > 0
        assert all(sample[key] > 0 for sample in series["samples"])


def assert_ratio(value: float) -> None:
    assert math.isfinite(value) and value > 0


def test_startup_is_measured(results: dict) -> None:
    startup = results["startup"]
    for name in ("fuse_help", "fuse_version", "import_keras"):
        assert_series(startup[name], 1)
    for key in ("ratio_wall", "ratio_wall_version", "ratio_rss"):
        assert_ratio(startup[key])


def test_merge_against_plain_keras_is_measured(results: dict) -> None:
    merge = results["merge"]
    assert merge["members"] == 2
    for name in ("fuse", "peer", "fuse_no_verify", "peer_unchecked"):
        assert_series(merge[name], 1)
    for key in ("ratio_wall", "ratio_cpu", "ratio_rss", "ratio_wall_no_verify",
                "ratio_rss_no_verify", "ratio_size"):
        assert_ratio(merge[key])
    for key in ("members_size_bytes", "fuse_size_bytes", "peer_size_bytes"):
        assert merge[key] > 0
    member_sizes = [m["size"] for m in results["config"]["member_files"][:2]]
    assert merge["members_size_bytes"] == sum(member_sizes)


def test_predict_is_measured(results: dict) -> None:
    predict = results["predict"]
    assert predict["batch"] == 64
    for key in ("merged_s", "members_summed_s", "merged_cpu_s", "members_summed_cpu_s",
                "cold_merged_s", "cold_members_summed_s"):
        assert predict[key] > 0
    for key in ("ratio", "ratio_cpu", "ratio_cold"):
        assert_ratio(predict[key])
    assert len(predict["samples"]["merged_s"]) == 2  # --quick: two timed rounds


def test_scaling_is_measured(results: dict) -> None:
    rows = results["scaling"]["rows"]
    assert [row["members"] for row in rows] == [2, 3]
    for row in rows:
        assert_series(row["fuse"], 1)
        assert_series(row["peer"], 1)
        assert_ratio(row["ratio_wall"])
        assert_ratio(row["ratio_rss"])
        assert row["fuse_size_bytes"] > row["members_size_bytes"] // 2
    for fit in results["scaling"]["fits"].values():
        assert all(math.isfinite(fit[key]) for key in ("slope", "intercept", "r2"))


def test_goals_and_machine_are_recorded(results: dict) -> None:
    goals = results["goals"]
    # --help, wall and RSS per scaling row, --no-verify, predict wall and CPU, file size
    assert len(goals) == 5 + 2 * len(results["scaling"]["rows"])
    names = [goal["goal"] for goal in goals]
    assert "`fuse merge` / checking peer, 3 members, wall" in names
    assert "`fuse merge --no-verify` / unchecked peer, wall" in names
    for goal in goals:
        assert math.isfinite(goal["value"]) and goal["limit"] > 0
        assert isinstance(goal["met"], bool)
    machine = results["machine"]
    assert machine["cpus"] >= 1 and machine["memory_gib"] > 0
    assert machine["versions"]["keras"]
    assert len(machine["load_average"]["start"]) == len(machine["load_average"]["end"]) == 3
