"""Hostile inputs, round 3: what a crafted file, folder or command line can still cost.

Each class has its fixture made by `tests/hostile3.py` (the project's own script) and a
test here; `benchmarks/hostile_bounds.py` measures the same cases for peak memory and
time, one process each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.errors import OutputError
from fuse_cli.files import publish
from fuse_cli.merge import MergeOptions, merge_files


def one_line_error(result, code: int, text: str) -> None:  # noqa: ANN001
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert text in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- class 7: the no-clobber race ---------------------------------------------------------


def test_a_file_created_at_out_while_fuse_writes_is_never_replaced(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"

    def someone_else(message: str) -> None:
        if message.startswith("writing"):  # after every check, before the rename
            out.write_bytes(b"theirs")

    with pytest.raises(OutputError, match="was created by someone else while fuse wrote it"):
        merge_files([zoo["a.keras"], zoo["b.keras"]], out, progress=someone_else)
    assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.keras"]  # no temporary left

    # --force: the user asked for OUT to be replaced, whatever is there.
    merge_files([zoo["a.keras"], zoo["b.keras"]], out, MergeOptions(force=True),
                progress=someone_else)
    assert out.read_bytes()[:2] == b"PK"


@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
def test_publish_without_replace_refuses_what_appeared(tmp_path: Path, directory: bool) -> None:
    out = tmp_path / ("artifact" if directory else "model.keras")

    def write(tmp: Path) -> None:
        if directory:
            (tmp / "saved_model.pb").write_bytes(b"ours")
        else:
            tmp.write_bytes(b"ours")

    def appear(_tmp: Path) -> None:
        if directory:
            out.mkdir()  # an empty folder: a plain rename would silently replace it
        else:
            out.write_bytes(b"theirs")

    with pytest.raises(OutputError, match="pass --force to replace it"):
        publish(out, write, check=appear, directory=directory, replace=False)
    if directory:
        assert out.is_dir() and list(out.iterdir()) == []
    else:
        assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    publish(out, write, directory=directory, replace=True)
    assert (out / "saved_model.pb" if directory else out).read_bytes() == b"ours"


# --- class 8: usage and environment problems are not internal errors ----------------------


def test_an_output_name_too_long_for_the_folder_is_exit_5(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / ("e" * 240 + ".keras")
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                 str(out)])
    one_line_error(result, 5, "this folder takes names of at most 255 bytes")
    assert list(tmp_path.iterdir()) == []


def test_weights_that_overflow_their_sum_are_exit_2(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                 str(tmp_path / "e.keras"), "--weights", "1e308,1e308"])
    one_line_error(result, 2, "add up to inf: give smaller numbers")


def test_a_keras_config_keras_rejects_is_exit_2(zoo: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "keras_home"
    home.mkdir()
    (home / "keras.json").write_text('{"backend": "tensorflow", "floatx": "float99"}')
    env = {**os.environ, "KERAS_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", "from fuse_cli.cli import main; main()", "inspect",
         str(zoo["a.keras"])], capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Invalid `floatx` configuration" in lines[0]
    assert str(home / "keras.json") in lines[0]


# --- class 9: every numeric option is finite ----------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_offset_must_be_finite(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path, value: str
) -> None:
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    result = runner.invoke(app, ["evaluate", str(zoo["a.keras"]), "--data", str(folder),
                                 "--offset", value])
    one_line_error(result, 2, f"--offset must be a finite number; got {float(value)}")
