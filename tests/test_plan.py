"""Plan once, then execute: every check of a merge runs exactly once per command, the
plan is what the dry run shows, and merge methods live in one registry."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fuse_cli import files, formats, formula, merge, planning, sharing
from fuse_cli.choices import Mode
from fuse_cli.cli import app
from fuse_cli.methods import METHODS, method_for
from fuse_cli.methods.sum import WeightedSumMethod


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the calls of every check a merge makes, where the code looks them up."""
    counted: Counter[str] = Counter()

    def count(owner: Any, name: str, key: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counted[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    count(planning, "check_options", "options")
    count(planning, "check_destinations", "destinations")
    count(planning, "check_combination", "combination")
    count(planning, "check_outputs", "outputs")
    count(formula, "check_batch_bound", "batch bound")
    count(sharing, "find_sharing", "sharing")
    count(formats, "load_model", "member loads")
    count(merge, "load_model", "reloads")
    count(formula, "check_formula", "formula")
    original = WeightedSumMethod.check_members

    def members(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted["method checks"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WeightedSumMethod, "check_members", members)
    return counted


ONCE = {"options": 1, "destinations": 1, "combination": 1, "outputs": 1, "batch bound": 2,
        "sharing": 1, "method checks": 1, "member loads": 2}


def test_merge_runs_each_check_once(
    calls: Counter[str], runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                 str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    # "batch bound" is per member: each member's check batch is bounded once.
    assert dict(calls) == {**ONCE, "reloads": 1, "formula": 1}


def test_dry_run_runs_each_check_once_and_verifies_nothing(
    calls: Counter[str], runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                 str(out), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert dict(calls) == ONCE
    assert not out.exists()


def test_tune_runs_each_check_once(
    calls: Counter[str], runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "val.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 5), dtype=np.float32), y=rng.integers(0, 10, 40))
    out = tmp_path / "tuned.keras"
    result = runner.invoke(app, ["tune", str(zoo["a.keras"]), str(zoo["b.keras"]), "--data",
                                 str(data), "-o", str(out), "--cv", "2"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert dict(calls) == {**ONCE, "reloads": 1, "formula": 1}


def test_a_destination_error_comes_before_any_load(
    calls: Counter[str], runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "exists.keras"
    out.write_bytes(b"old")
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                 str(out)])
    assert result.exit_code == 5
    assert f"-o {out}: already exists; pass --force to replace it" in result.stderr
    assert calls["member loads"] == 0 and calls["combination"] == 0


def test_dry_run_prints_a_file_name_with_control_characters_literally(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """A file name is data: an escape sequence in it is shown, never sent to the terminal."""
    hostile = tmp_path / "a\x1b]0;owned\x07\x1b[31m[bold]red.keras"
    shutil.copy(zoo["a.keras"], hostile)
    result = runner.invoke(app, ["merge", str(hostile), str(zoo["b.keras"]), "-o",
                                 str(tmp_path / "ens.keras"), "--dry-run"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "a\\x1b]0;owned\\x07\\x1b[31m[bold]red.keras" in result.stdout.replace("\n", "")


def test_every_mode_has_one_method_and_its_layer() -> None:
    assert sorted(METHODS) == sorted(m.value for m in Mode)
    for mode in Mode:
        method = method_for(mode)
        assert method.name == mode.value
        if not method.combines_outputs:  # a soup averages variables: no combining layer
            assert method.layer_name == ""
            continue
        layer = method.layer_class()([0.5, 0.5], name="combine")
        assert type(layer).__name__ == method.layer_name
        # the layer and the method's numpy reference compute the same function
        a = np.array([[0.2, 0.8]], dtype=np.float32)
        b = np.array([[0.6, 0.4]], dtype=np.float32)
        expected = method.combine([a.astype(np.float64), b.astype(np.float64)], [0.5, 0.5],
                                  False)
        np.testing.assert_allclose(np.asarray(layer([a, b])), expected, rtol=1e-6)


def test_merge_options_are_frozen() -> None:
    options = planning.MergeOptions(weights=[1, 2])
    assert options.weights == (1, 2)
    with pytest.raises(AttributeError):
        options.mode = Mode.PRODUCT  # type: ignore[misc]


def test_destinations_are_checked_by_one_function(tmp_path: Path) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    with pytest.raises(files.OutputError, match=r"^--plot .*m.keras: is also the input"):
        files.check_destinations([files.Destination("--plot", model)], [model], force=True)
    assert files.check_destinations([files.Destination("-o", model)], [], force=True) == [True]


def test_usage_and_path_errors_come_before_tensorflow(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """Each command checks what needs no model before it imports Keras (DESIGN §7): one
    fresh process runs every error below and has imported neither at the end."""
    import subprocess
    import sys

    existing = tmp_path / "exists.keras"
    existing.write_bytes(b"old")
    a, b = str(zoo["a.keras"]), str(zoo["b.keras"])
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    cases = [
        (["merge", a, b, "-o", str(existing)], 5),
        (["merge", a, b, "-o", str(tmp_path / "e.keras"), "--weight", "1.5"], 2),
        (["merge", a, b, "-o", str(tmp_path / "e.txt")], 2),
        (["merge", a, str(tmp_path / "missing.keras"), "-o", str(tmp_path / "e.keras")], 3),
        (["export", a, "--format", "onnx", "-o", str(tmp_path / "e.tflite")], 2),
        (["evaluate", a, "--data", str(folder), "--offset", "nan"], 2),
        (["tune", a, b, "--data", str(folder), "-o", str(existing)], 5),
    ]
    script = (
        "import sys\n"
        "from fuse_cli.cli import app\n"
        f"for args, _ in {cases!r}:\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        print(exc.code)\n"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    lines = result.stdout.split()
    assert lines[:-1] == [str(code) for _, code in cases], result.stderr
    assert lines[-1] == "[]", result.stdout
