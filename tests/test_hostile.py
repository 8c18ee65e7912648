"""Hostile and broken model files: exit 3, no code runs, nothing written, inputs intact."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from hostile import (
    BROKEN,
    HOSTILE,
    Builder,
    get_file_payload,
    good_keras,
    lambda_h5,
    lambda_keras,
    os_system_payload,
    weights_with_link,
)
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.errors import ModelLoadError
from fuse_cli.formats import load_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def merge_with(runner: CliRunner, folder: Path, member: Path, *extra: str):  # noqa: ANN201
    good = good_keras(folder, "member.keras")
    out = folder / "out.keras"
    return runner.invoke(app, ["merge", str(good), str(member), "-o", str(out), *extra])


# fuse's own refusal of each hostile file, after "<file>: ". Keras's safe mode refuses
# most of them too, so the exit code alone cannot show that fuse's screen did its job.
OWN_REFUSAL = {
    "lambda_keras": "refused a Lambda layer: it carries Python code that would run on loading",
    "lambda_h5": "refused a Lambda layer: it carries Python code that would run on loading",
    "os_module_keras": "config refers to os.system, outside Keras: refused",
    "get_file_keras": "config calls 'get_file', a loading gadget: refused",
    "unsafe_toggle_keras": (
        "config calls 'enable_unsafe_deserialization', a loading gadget: refused"
    ),
    "hdf5_external_link": "HDF5 external link at /model_weights/leak is refused",
    "hdf5_external_storage": "HDF5 dataset /model_weights/leak uses external storage",
    "hdf5_virtual_dataset": "HDF5 dataset /model_weights/leak is a virtual dataset",
    "keras_inner_external_link": "HDF5 external link at model.weights.h5:/leak is refused",
    "zip_slip_..": "archive member '../PWNED' climbs out with '..'",
    "zip_slip_assets": "archive member 'assets/../../PWNED' climbs out with '..'",
    "zip_slip_absolute": "archive member '/tmp/PWNED' has an absolute path",
    "zip_symlink": "archive member 'assets/link' is a link",
    "huge_declared_size": "archive member 'config.json' declares 4294967280 bytes",
}


@pytest.mark.parametrize("build", HOSTILE, ids=lambda b: b.__name__)
def test_hostile_file_is_exit_3_and_runs_nothing(
    build: Builder, tmp_path: Path, runner: CliRunner
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    hostile = build(folder, marker)
    before = {p.name: sha256(p) for p in folder.iterdir()}

    result = merge_with(runner, folder, hostile)

    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert f"error: {hostile}: {OWN_REFUSAL[build.__name__]}" in result.stderr
    assert 1 <= len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (folder / "out.keras").exists()
    after = {p.name: sha256(p) for p in folder.iterdir() if p.name != "member.keras"}
    assert after == before
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("build", [lambda_keras, lambda_h5], ids=lambda b: b.__name__)
def test_lambda_payload_is_real_with_safe_mode_off(build: Builder, tmp_path: Path) -> None:
    """The proof that the corpus is armed: Keras with safe mode off runs the payload."""
    marker = tmp_path / "PWNED"
    path = build(tmp_path, marker)
    assert not marker.exists()
    keras.saving.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


def test_module_payload_is_real_when_resolved(tmp_path: Path) -> None:
    """Resolving the entry as Keras < 3.9 did (import `module`, take `class_name`) runs it."""
    marker = tmp_path / "PWNED"
    payload = os_system_payload(marker)
    function = getattr(importlib.import_module(payload["module"]), payload["class_name"])
    function(payload["config"])
    assert marker.exists()


def test_get_file_gadget_is_real_when_called(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "source.txt").write_text("written by a model config\n")
    payload = get_file_payload(marker)
    keras.utils.get_file(**payload["config"])
    assert marker.read_text() == "written by a model config\n"


@pytest.mark.parametrize("kind", ["external_link", "external_storage", "virtual_dataset"])
def test_hdf5_reference_really_reads_another_file(kind: str, tmp_path: Path) -> None:
    path = weights_with_link(kind)(tmp_path, tmp_path / "PWNED")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["model_weights/leak"][()], np.arange(4))


def test_lambda_message_names_the_layer_and_unsafe(tmp_path: Path, runner: CliRunner) -> None:
    path = lambda_keras(tmp_path, tmp_path / "PWNED")
    result = merge_with(runner, tmp_path, path)
    assert result.exit_code == 3
    assert "refused a Lambda layer" in result.stderr
    assert "pass --unsafe only if you trust this file" in result.stderr


def test_unsafe_is_the_users_explicit_choice(tmp_path: Path, runner: CliRunner) -> None:
    marker = tmp_path / "PWNED"
    path = lambda_keras(tmp_path, marker)
    result = merge_with(runner, tmp_path, path, "--unsafe")
    assert result.exit_code == 0, result.stderr
    assert "warning: --unsafe: lambda.keras: allowed code-carrying layer 'payload' (Lambda)" in (
        result.stderr
    )
    assert marker.exists()  # the user trusted the file, and its code did run


@pytest.mark.parametrize("build", BROKEN, ids=lambda b: b.__name__)
def test_broken_file_is_exit_3_with_reason(
    build,
    tmp_path: Path,  # noqa: ANN001
    runner: CliRunner,
) -> None:
    broken = build(tmp_path)
    result = merge_with(runner, tmp_path, broken)
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert str(broken) in result.stderr
    assert 1 <= len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert not (tmp_path / "out.keras").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hf://user/model", "remote locations are not loaded"),
        ("gs://bucket/model.keras", "remote locations are not loaded"),
    ],
)
def test_url_like_names_are_refused(
    name: str, message: str, tmp_path: Path, runner: CliRunner
) -> None:
    result = merge_with(runner, tmp_path, Path(name))
    assert result.exit_code == 3 and message in result.stderr


def test_directory_and_device_are_refused(tmp_path: Path, runner: CliRunner) -> None:
    folder = tmp_path / "model.keras"
    folder.mkdir()
    result = merge_with(runner, tmp_path, folder)
    assert result.exit_code == 3 and "is a directory" in result.stderr
    result = merge_with(runner, tmp_path, Path(os.devnull))
    assert result.exit_code == 3 and "not a regular file" in result.stderr


def test_format_is_decided_by_content(tmp_path: Path, zoo: dict[str, Path]) -> None:
    """An HDF5 model named .keras and a .keras archive named .h5 both load."""
    h5_named_keras = tmp_path / "legacy.keras"
    h5_named_keras.write_bytes(zoo["c.h5"].read_bytes())
    zip_named_h5 = tmp_path / "native.h5"
    zip_named_h5.write_bytes(zoo["a.keras"].read_bytes())
    assert load_model(h5_named_keras).format == "h5"
    assert load_model(zip_named_h5).format == "keras"


def test_load_model_raises_model_load_error_only(tmp_path: Path) -> None:
    for build in BROKEN:
        with pytest.raises(ModelLoadError):
            load_model(build(tmp_path))
