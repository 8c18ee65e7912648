"""Smoke test of the benchmark script: one section, run for real, reports what it measured.

The whole `--quick` run costs about 30 s and is left to `python benchmarks/run.py
--quick`; here the startup section runs once (three fresh processes), and its report
is checked against its own parts: each ratio is the quotient of the medians it names,
each median is its samples', and each log holds the measured command's real output.
Timings are never asserted (DESIGN §7).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

import fuse_cli

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def benchmark_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuse_benchmark_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_startup_section_reports_ratios_of_its_own_measurements(tmp_path: Path) -> None:
    run = benchmark_module()
    runner = run.Runner(tmp_path, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))

    startup = run.bench_startup(runner, 1)

    series = {name: startup[name] for name in ("fuse_help", "fuse_version", "import_keras")}
    for found in series.values():
        assert found["runs"] == len(found["samples"]) == 1
        for key in ("wall_s", "cpu_s", "max_rss_mib"):
            assert found[key] == statistics.median(s[key] for s in found["samples"]) > 0
    help_, version, keras_ = series["fuse_help"], series["fuse_version"], series["import_keras"]
    assert startup["ratio_wall"] == pytest.approx(help_["wall_s"] / keras_["wall_s"], rel=1e-12)
    assert startup["ratio_wall_version"] == pytest.approx(
        version["wall_s"] / keras_["wall_s"], rel=1e-12
    )
    assert startup["ratio_rss"] == pytest.approx(
        help_["max_rss_mib"] / keras_["max_rss_mib"], rel=1e-12
    )
    # The commands really ran: each log holds its command's own output.
    logs = {path.name: path.read_text() for path in tmp_path.iterdir()}
    assert len(logs) == 3
    (help_log,) = (text for name, text in logs.items() if name.endswith("fuse-help.log"))
    (version_log,) = (text for name, text in logs.items() if name.endswith("fuse-version.log"))
    assert "merge" in help_log and "Usage" in help_log
    assert fuse_cli.__version__ in version_log
    assert help_["command"][-1] == "--help" and keras_["command"][1:] == ["-c", "import keras"]
