"""Writes under faults, in real subprocesses: a kill, a race, a full disk."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from helpers import head_weights, load, predict, validated

CHILD = textwrap.dedent(
    """
    import os, sys, time
    if os.environ.get("FUSE_TEST_STALL_AT_FSYNC"):
        real_fsync = os.fsync
        def stalled_fsync(fd):
            real_fsync(fd)
            print("STALLED", flush=True)
            time.sleep(300)
        os.fsync = stalled_fsync
    from fuse_cli.cli import main
    sys.argv = ["fuse", *sys.argv[1:]]
    main()
    """
)


def fuse(*args: str | Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:  # noqa: ANN003
    import os

    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_kill_while_saving_leaves_old_output(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    out.write_bytes(b"the previous ensemble")
    child = fuse(
        "merge",
        zoo["a.keras"],
        zoo["b.keras"],
        "-o",
        out,
        "--force",
        env={"FUSE_TEST_STALL_AT_FSYNC": "1"},
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # the new file is fully written, not yet in place
    assert line.strip() == "STALLED", child.stderr.read() if child.stderr else ""
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert out.read_bytes() == b"the previous ensemble"
    # What a kill leaves is a hidden temporary file beside OUT, never a torn OUT.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ens.keras"]
    assert all(name.startswith(".ens.keras.") for name in leftovers), leftovers


def test_two_merges_racing_to_one_output(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    children = [
        fuse("merge", zoo["a.keras"], zoo["b.keras"], "-w", weight, "-o", out, "--force", "--json")
        for weight in ("0.2", "0.8")
    ]
    for child in children:
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr
        assert validated(stdout)["ok"] is True
    merged = load(out)
    weight = head_weights(merged)[0]
    assert weight in (0.2, 0.8)
    x = np.random.default_rng(3).random((6, 5), dtype=np.float32)
    a, b = predict(load(zoo["a.keras"]), x)[0], predict(load(zoo["b.keras"]), x)[0]
    np.testing.assert_allclose(
        predict(merged, x)[0], weight * a + (1 - weight) * b, rtol=1e-5, atol=1e-6
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.keras"]


def test_disk_full_is_exit_5_and_leaves_nothing(zoo: dict[str, Path], tmp_path: Path) -> None:
    """A file-size limit makes the kernel fail the write (EFBIG), as a full disk would."""
    out = tmp_path / "ens.keras"
    out.write_bytes(b"the previous ensemble")
    limit = zoo["a.keras"].stat().st_size  # the merged file is about twice this

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = fuse(
        "merge", zoo["a.keras"], zoo["b.keras"], "-o", out, "--force", preexec_fn=limit_file_size
    )
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 5, stderr
    assert f"{out}: cannot write: File too large" in stderr
    assert out.read_bytes() == b"the previous ensemble"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.keras"]
