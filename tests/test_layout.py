"""One home per job: every write through `files.publish`, every private Keras symbol
through `formats._keras_private`, and the consistency that buys."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fuse_cli
from fuse_cli.cli import app
from fuse_cli.files import current_umask, publish, remove_stale_temporaries

PACKAGE = Path(fuse_cli.__file__).parent


def _calls_and_imports(path: Path) -> set[str]:
    """Dotted names the module calls or imports (`os.replace`, `keras.src.saving...`)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if isinstance(node.func.value, ast.Name):
                found.add(f"{node.func.value.id}.{node.func.attr}")
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_files_py_renames_or_makes_temporaries() -> None:
    writers = {"os.replace", "os.rename", "tempfile.mkstemp", "tempfile.mkdtemp"}
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(_calls_and_imports(path) & writers)
        for path in _modules()
        if path.name != "files.py" and _calls_and_imports(path) & writers
    }
    assert offenders == {}


def test_only_keras_private_imports_keras_src() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if path.name != "_keras_private.py"
        and any(name.startswith("keras.src") for name in _calls_and_imports(path))
    ]
    assert offenders == []
    # And it names them as text, looked up when needed: one place to change.
    text = (PACKAGE / "formats" / "_keras_private.py").read_text()
    assert "keras.src.saving.saving_lib" in text


def test_no_import_cycle_and_no_keras_at_cli_import() -> None:
    code = (
        "import sys, importlib, pkgutil, fuse_cli, fuse_cli.cli\n"
        "heavy = [m for m in ('keras', 'tensorflow', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "none"


def test_plot_file_gets_the_mode_of_a_model(tmp_path: Path) -> None:
    """Every file fuse writes is 0644 less the umask, a plot as much as a model."""
    old = os.umask(0o022)
    try:
        for name in ("model.keras", "search.png", "predictions.npz"):
            publish(tmp_path / name, lambda tmp: tmp.write_bytes(b"content"))
        folder = tmp_path / "artifact_saved_model"
        publish(folder, lambda tmp: (tmp / "saved_model.pb").write_bytes(b"pb"), directory=True)
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes == {
        "model.keras": 0o644,
        "search.png": 0o644,
        "predictions.npz": 0o644,
        "artifact_saved_model": 0o755,
    }
    assert current_umask() == old


def test_tune_plot_and_model_share_the_mode(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    import numpy as np

    data = tmp_path / "val.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 5), dtype=np.float32), y=rng.integers(0, 10, 40))
    out, plot = tmp_path / "tuned.keras", tmp_path / "search.png"
    result = runner.invoke(app, ["tune", str(zoo["a.keras"]), str(zoo["b.keras"]), "--data",
                                 str(data), "-o", str(out), "--plot", str(plot)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    expected = 0o644 & ~current_umask()
    assert out.stat().st_mode & 0o777 == expected
    assert plot.stat().st_mode & 0o777 == expected


def test_a_failed_check_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    out.write_bytes(b"old")

    def refuse(_tmp: Path) -> None:
        raise RuntimeError("check failed")

    with pytest.raises(RuntimeError):
        publish(out, lambda tmp: tmp.write_bytes(b"new"), check=refuse)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ens.keras"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_a_killed_run_are_swept_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "ens.keras"
    dead = _dead_pid()
    stale = [
        tmp_path / f".ens.keras.fuse-{dead}-abc123.tmp.keras",
        tmp_path / f".ens.keras.fuse-{dead}-zz_9.old",
    ]
    kept = [
        tmp_path / f".ens.keras.fuse-{os.getpid()}-live.tmp.keras",  # a run still going
        tmp_path / f".other.keras.fuse-{dead}-abc123.tmp.keras",  # another output's
        tmp_path / ".ens.keras.backup",  # not fuse's name
        tmp_path / f".ens.keras.fuse-{dead}-abc123.tmp.keras.mine",  # not fuse's name either
        tmp_path / "ens.keras.fuse-1-a.tmp",  # not hidden: the user's
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    (tmp_path / f".ens.keras.fuse-{dead}-dir.tmp").mkdir()  # a SavedModel's temp folder
    stale.append(tmp_path / f".ens.keras.fuse-{dead}-dir.tmp")

    publish(out, lambda tmp: tmp.write_bytes(b"new"))

    assert out.read_bytes() == b"new"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert remove_stale_temporaries(out) == []


@pytest.mark.parametrize(
    ("module", "name", "model"),
    [
        ("keras.src.saving.saving_lib", "load_model", "a.keras"),
        ("keras.src.legacy.saving.legacy_h5_format", "load_model_from_hdf5", "c.h5"),
    ],
)
def test_a_moved_keras_internal_is_one_clear_line_not_the_files_fault(
    monkeypatch: pytest.MonkeyPatch,
    runner: CliRunner,
    zoo: dict[str, Path],
    tmp_path: Path,
    module: str,
    name: str,
    model: str,
) -> None:
    import importlib

    import keras

    monkeypatch.delattr(importlib.import_module(module), name)
    result = runner.invoke(app, ["merge", str(zoo[model]), str(zoo["b.keras"]), "-o",
                                 str(tmp_path / "e.keras")])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"the installed Keras {keras.__version__} has no {module}.{name}" in lines[0]
    assert "cannot load model" not in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "e.keras").exists()


# --- the shape of the package (issue: plan once, then execute) ---------------------------

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
PRIVATE_KERAS_ATTRIBUTES = ("_keras_history", "_inbound_nodes", "_flatten_layers", "_keras_mask")


def test_no_module_over_500_lines() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_over_80_lines() -> None:
    """A typer command counts from its body: its signature is its option declarations."""
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.body[0].lineno if path.parent.name == "cli" else node.lineno
                length = node.end_lineno - first + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = length
    assert long == {}


def test_private_keras_attributes_only_in_keras_private() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if path.name != "_keras_private.py"
        and any(name in path.read_text() for name in PRIVATE_KERAS_ATTRIBUTES)
    ]
    assert offenders == []


def test_no_mode_branches_outside_the_methods() -> None:
    """A method is one module plus one registry line: nothing compares with a mode."""
    offenders = []
    for path in _modules():
        if path.parent.name == "methods":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
                if any(isinstance(p, ast.Attribute) and isinstance(p.value, ast.Name)
                       and p.value.id == "Mode" for p in parts) or any(
                    isinstance(p, ast.Constant) and p.value in ("sum", "product") for p in parts
                ):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
