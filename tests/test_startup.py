"""`fuse --help` and `--version` start without TensorFlow or Keras (DESIGN §7)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from fuse_cli.cli import main
sys.argv = ["fuse", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "h5py"})
print("HEAVY:", ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["merge", "--help"]])
def test_help_and_version_import_no_tensorflow(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("HEAVY:"), result.stdout[-300:]
    assert "fuse" in result.stdout


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fuse_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("fuse ")
