"""Issue 13: files cheap to store and dear to open, crashes, confusion, overwrites, injection.

Each class has its refusal (or its clean success) tested through the CLI, and a proof
that the case is real: what the file declares, computed independently (numpy, h5py,
Keras in a stateless scope), or the old behaviour shown with the guard bypassed.
Peak memory and time before and after are measured by benchmarks/hostile_bounds.py,
not here.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from hostile import good_keras, lambda_keras
from hostile2 import (
    MiB,
    control_name_keras,
    cycle_h5,
    deep_config_keras,
    deep_layer_config_keras,
    edit_provenance,
    ghost_dataset_h5,
    huge_input_keras,
    ladder_h5,
    ladder_keras,
    long_input_keras,
    lying_npz,
    markup_version_keras,
    npy_header,
    npz_bools_keras,
    padded_config_keras,
    string_input_keras,
    upsampling_keras,
    wide_dense_keras,
    zero_assets_keras,
)
from typer.core import TyperCommand
from typer.main import get_command
from typer.testing import CliRunner

from fuse_cli.choices import ExportFormat
from fuse_cli.cli import app
from fuse_cli.export import artifact_path
from fuse_cli.formats import screening


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(result, code: int, *fragments: str) -> None:  # noqa: ANN001
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert 1 <= len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- 1. time ------------------------------------------------------------------------------


def paths_by_name(group: h5py.Group) -> int:
    """Walk by path, as fuse's link check did before: one visit per path (a cap stops it)."""
    count = 0
    stack = [group]
    while stack and count < 1_000_000:
        for name in (g := stack.pop()):
            count += 1
            item = g.get(name)
            if isinstance(item, h5py.Group):
                stack.append(item)
    return count


def test_link_ladder_paths_grow_as_two_to_the_depth(tmp_path: Path) -> None:
    """The proof: a 10-rung ladder has 2^11 - 2 paths; 40 rungs, 2^41 - 2 (days of walking)."""
    path = ladder_h5(tmp_path, depth=10)
    with h5py.File(path) as f:
        assert paths_by_name(f["model_weights/ladder"]) == 2**11 - 2
        objects = {h5py.h5o.get_info(f[f"model_weights/ladder/{'a/' * i}"].id).addr
                   for i in range(11)}
    assert len(objects) == 11  # the file holds 11 groups


@pytest.mark.parametrize("build", [ladder_h5, ladder_keras, cycle_h5], ids=lambda b: b.__name__)
def test_link_ladders_and_cycles_are_walked_once(build, tmp_path: Path, runner: CliRunner) -> None:  # noqa: ANN001
    path = build(tmp_path)  # 40 rungs: 2^41 paths, or a loop back to a parent
    result = runner.invoke(app, ["inspect", str(path)])
    # Extra groups are harmless: the model loads, and the walk ends.
    assert result.exit_code == 0, result.stderr
    assert "inputs:" in result.stdout


# --- 2. memory from a small file ------------------------------------------------------------


def test_wide_dense_declares_gigabytes_and_is_refused(tmp_path: Path, runner: CliRunner) -> None:
    path = wide_dense_keras(tmp_path)
    layers = json.loads(zipfile.ZipFile(path).read("config.json"))["config"]["layers"]
    width = layers[0]["config"]["batch_shape"][-1]
    units = layers[1]["config"]["units"]
    declared = (width * units + units) * 4  # the Dense kernel and bias, float32
    assert declared == 768 * MiB
    assert path.stat().st_size < 20_000

    result = runner.invoke(app, ["inspect", str(path)])
    one_line_error(result, 3, str(path), "config declares weights of", "too large")


def test_unwritten_dataset_listed_many_times_is_refused(tmp_path: Path, runner: CliRunner) -> None:
    path = ghost_dataset_h5(tmp_path, megabytes=16, repeats=8)
    with h5py.File(path) as f:  # the proof: stores nothing, reads as 16 MiB, listed 8 times
        first = f["model_weights"].attrs["layer_names"][0]
        layer = f["model_weights"][first]
        assert layer["phantom"].id.get_storage_size() == 0
        assert layer["phantom"][()].nbytes == 16 * MiB
        assert list(layer.attrs["weight_names"]) == ["phantom"] * 8
    result = runner.invoke(app, ["inspect", str(path)])
    one_line_error(result, 3, "lists weight 'phantom' 8 times")

    once = ghost_dataset_h5(tmp_path, megabytes=16, repeats=1)
    result = runner.invoke(app, ["inspect", str(once)])
    one_line_error(result, 3, "phantom declares 16.0 MiB", "stores 0 B")


@pytest.fixture
def small_margin(monkeypatch: pytest.MonkeyPatch) -> int:
    """A 1 MiB margin, so a few MiB of payload prove the bound (the real one is 256 MiB)."""
    monkeypatch.setattr(screening, "MARGIN_BYTES", MiB)
    return MiB


def test_npz_weights_past_the_allowance_are_refused(
    tmp_path: Path, runner: CliRunner, small_margin: int
) -> None:
    path = npz_bools_keras(tmp_path, count=MiB // 4)  # 256 KiB stored, 8 MiB as lists
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.npz")
        assert info.file_size < screening.MAX_RATIO * info.compress_size  # not a "zip bomb"
        with np.load(io.BytesIO(zf.read("model.weights.npz"))) as npz:
            (key,) = npz.files
            assert len(npz[key].tolist()) == MiB // 4  # what Keras's NpzIOStore.get builds
    result = runner.invoke(app, ["inspect", str(path)])
    one_line_error(result, 3, "model.weights.npz declares", "too large")


def test_many_assets_past_the_allowance_are_refused(
    tmp_path: Path, runner: CliRunner, small_margin: int
) -> None:
    path = zero_assets_keras(tmp_path, count=2, megabytes=4)
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if i.filename.startswith("assets/")]
    assert sum(i.file_size for i in infos) == 8 * MiB  # extracted to the temp folder
    assert all(i.file_size < screening.MAX_RATIO * i.compress_size for i in infos)
    result = runner.invoke(app, ["inspect", str(path)])
    one_line_error(result, 3, "archive members declare", "too large")


def test_oversized_config_is_refused(tmp_path: Path, runner: CliRunner) -> None:
    path = padded_config_keras(tmp_path, megabytes=17)
    info = zipfile.ZipFile(path).getinfo("config.json")
    assert info.file_size > 17 * 10**6 and info.compress_size < info.file_size / 10
    result = runner.invoke(app, ["inspect", str(path)])
    one_line_error(result, 3, f"'config.json' declares {info.file_size} bytes (limit 16777216)")


def test_input_too_large_to_check_is_refused(tmp_path: Path, runner: CliRunner) -> None:
    path = long_input_keras(tmp_path, 2**27)
    model = keras.saving.load_model(path, compile=False)
    assert math.prod(model.inputs[0].shape[1:]) * 4 == 512 * MiB  # one sample of the check
    good = good_keras(tmp_path)
    result = runner.invoke(app, ["merge", str(path), str(path), "-o", str(tmp_path / "o.keras")])
    one_line_error(result, 3, str(path), "512 MiB or more a sample: too large to check")
    assert not (tmp_path / "o.keras").exists()
    # --no-verify runs no check batch: nothing to bound
    result = runner.invoke(app, ["merge", str(good), str(good), "-o", str(tmp_path / "n.keras"),
                                 "--no-verify"])
    assert result.exit_code == 0, result.stderr


def test_activations_too_large_to_check_are_refused(tmp_path: Path, runner: CliRunner) -> None:
    path = upsampling_keras(tmp_path)
    model = keras.saving.load_model(path, compile=False)
    assert math.prod(model.layers[0].output.shape[1:]) * 4 == 2048 * MiB  # one sample
    assert path.stat().st_size < 30_000
    result = runner.invoke(app, ["merge", str(path), str(path), "-o", str(tmp_path / "o.keras")])
    one_line_error(result, 3, str(path), "layers' outputs take", "too large to check")


# --- 3. exit 1 where the file is at fault ---------------------------------------------------


def test_deeply_nested_configs_are_exit_3(tmp_path: Path, runner: CliRunner) -> None:
    path = deep_config_keras(tmp_path)
    with pytest.raises(RecursionError):  # the proof: Python's own parser gives up
        json.loads(zipfile.ZipFile(path).read("config.json"))
    one_line_error(runner.invoke(app, ["inspect", str(path)]), 3, "nested too deeply")

    deep = deep_layer_config_keras(tmp_path)
    one_line_error(runner.invoke(app, ["inspect", str(deep)]), 3, "nested more than 128")


def test_legacy_model_config_caps(tmp_path: Path, runner: CliRunner) -> None:
    """The same size and depth caps hold for a legacy file's `model_config` attribute."""
    deep = tmp_path / "deep.h5"
    good = tmp_path / "good.h5"
    keras.saving.load_model(good_keras(tmp_path), compile=False).save(good)
    for path, text in ((deep, "[" * 100_000 + "]" * 100_000),
                       (tmp_path / "big.h5", json.dumps({"pad": "x" * (17 * MiB)}))):
        path.write_bytes(good.read_bytes())
        with h5py.File(path, "a") as f:
            f.attrs["model_config"] = text
    one_line_error(runner.invoke(app, ["inspect", str(deep)]), 3, "model_config is nested too")
    one_line_error(runner.invoke(app, ["inspect", str(tmp_path / "big.h5")]), 3,
                   "model_config is 17.0 MiB: too large")


def test_input_of_a_trillion_values_is_exit_3(tmp_path: Path, runner: CliRunner) -> None:
    path = huge_input_keras(tmp_path)
    model = keras.saving.load_model(path, compile=False)
    assert model.inputs[0].shape[1] == 10**12  # 4 TB a sample
    result = runner.invoke(app, ["merge", str(path), str(path), "-o", str(tmp_path / "o.keras")])
    one_line_error(result, 3, "too large to check")


def test_string_inputs_are_exit_4(tmp_path: Path, runner: CliRunner) -> None:
    path = string_input_keras(tmp_path)
    model = keras.saving.load_model(path, compile=False)
    assert model.inputs[0].dtype == "string"
    with pytest.raises(TypeError):  # what sampling a batch for it used to run into
        np.dtype(model.inputs[0].dtype)
    result = runner.invoke(app, ["merge", str(path), str(path), "-o", str(tmp_path / "o.keras")])
    one_line_error(result, 4, "dtype string", "numeric tensors only")


def test_npz_header_that_lies_is_exit_3(tmp_path: Path, runner: CliRunner) -> None:
    data = lying_npz(tmp_path)
    with np.load(data) as npz, pytest.raises((MemoryError, ValueError)):
        npz["x"]  # numpy believes the header: 8 TB
    good = good_keras(tmp_path)
    result = runner.invoke(app, ["evaluate", str(good), "--data", str(data)])
    one_line_error(result, 3, "'x.npy' declares shape (1000000000000, 5)", "holds")


def test_predictions_header_that_lies_is_exit_3(tmp_path: Path, runner: CliRunner) -> None:
    """A `--predictions` file is read through the same checks as `--data`."""
    path = tmp_path / "lying_predictions.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("p0.npy", npy_header((10**12, 5)) + bytes(8))
        for key, value in {"y": np.zeros(4, dtype=np.int64), "p1": np.zeros((4, 10)),
                           "files": np.array(["a.keras", "b.keras"]),
                           "sha256": np.array(["0" * 64, "1" * 64])}.items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            zf.writestr(f"{key}.npy", buffer.getvalue())
    with np.load(path) as npz, pytest.raises((MemoryError, ValueError)):
        npz["p0"]  # numpy believes the header: 40 TB
    a, b = good_keras(tmp_path, "a.keras"), good_keras(tmp_path, "b.keras")
    result = runner.invoke(app, ["tune", str(a), str(b), "--predictions", str(path),
                                 "-o", str(tmp_path / "o.keras")])
    one_line_error(result, 3, "'p0.npy' declares shape (1000000000000, 5)", "holds")
    assert not (tmp_path / "o.keras").exists()


# --- 4. what a file says is data ------------------------------------------------------------


@pytest.fixture
def merged(tmp_path: Path, runner: CliRunner) -> Path:
    a, b = good_keras(tmp_path, "a.keras"), good_keras(tmp_path, "b.keras")
    out = tmp_path / "merged.keras"
    result = runner.invoke(app, ["merge", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


def test_provenance_of_wrong_types(merged: Path, tmp_path: Path, runner: CliRunner) -> None:
    bad = edit_provenance(merged, tmp_path / "bad.keras", weights_given=["1", "x"], members=5,
                          tool={"x": 1}, tuning=[1])
    result = runner.invoke(app, ["inspect", str(bad)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "(not recorded)" in result.stdout  # members: 5 names no member file
    assert "weights 0.5, 0.5" in result.stdout  # the layer's own coefficients
    result = runner.invoke(app, ["verify", str(bad)])
    one_line_error(result, 6, "weights as given ['1', 'x'], not a list of numbers")
    members_only = edit_provenance(merged, tmp_path / "bad2.keras", members=5)
    one_line_error(runner.invoke(app, ["verify", str(members_only)]), 6,
                   "records members as 5, not a list")


def test_markup_and_control_characters_print_literally(
    tmp_path: Path, runner: CliRunner
) -> None:
    markup = markup_version_keras(tmp_path, "[/x] [bold]3.15[/bold]")
    result = runner.invoke(app, ["inspect", str(markup)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "written by Keras [/x] [bold]3.15[/bold]" in result.stdout

    version = markup_version_keras(tmp_path, "3.15\x1b]0;owned\x07\x1b[2J", "esc.keras")
    result = runner.invoke(app, ["inspect", str(version)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout  # printed raw before: ESC reached the terminal
    assert "written by Keras 3.15\\x1b]0;owned\\x07\\x1b[2J" in result.stdout

    control = control_name_keras(tmp_path)
    result = runner.invoke(app, ["inspect", str(control)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "evil\\x1b]0;owned\\x07\\x1b[2J" in result.stdout


# --- 5. inputs are never overwritten -----------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with models under misleading names and data named like a model."""
    for seed, name in ((1, "ens.tflite"), (2, "a.png"), (3, "b.keras")):
        good_keras(tmp_path, "tmp.keras")
        keras.utils.set_random_seed(seed)
        (tmp_path / "tmp.keras").rename(tmp_path / name)
    rng = np.random.default_rng(0)
    with open(tmp_path / "data.keras", "wb") as f:
        np.savez(f, x=rng.random((20, 5), dtype=np.float32), y=np.arange(20) % 10)
    os.symlink("b.keras", tmp_path / "link.keras")
    os.link(tmp_path / "b.keras", tmp_path / "hard.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["merge", "ens.tflite", "b.keras", "-o", "ens.keras", "--export", "litert", "--force"],
         "--export litert ens.tflite: is also the input ens.tflite"),
        (["tune", "a.png", "b.keras", "--data", "data.keras", "-o", "data.keras", "--plot",
          "a.png", "--force"], "-o data.keras: is also the input data.keras"),
        (["tune", "a.png", "b.keras", "--data", "data.keras", "-o", "t.keras", "--plot",
          "hard.png", "--force"], "--plot hard.png: is also the input b.keras"),
        (["merge", "a.png", "b.keras", "-o", "link.keras", "--force"], "is also the input"),
        (["export", "ens.tflite", "--format", "litert", "-o", "ens.tflite", "--force"],
         "is also the input ens.tflite"),
    ],
    ids=["export-artifact", "tune-data-and-plot", "plot-hard-link", "out-symlink",
         "export-over-source"],
)
def test_inputs_are_never_overwritten(
    args: list[str], message: str, folder: Path, runner: CliRunner
) -> None:
    before = {p.name: sha256(p) for p in folder.iterdir() if p.is_file()}
    result = runner.invoke(app, args)
    one_line_error(result, 5, message)
    assert {p.name: sha256(p) for p in folder.iterdir() if p.is_file()} == before


def test_destinations_are_checked_against_folders_and_temporary_names(tmp_path: Path) -> None:
    from fuse_cli.errors import OutputError
    from fuse_cli.files import check_writes

    folder = tmp_path / "ens_saved_model"
    folder.mkdir()
    inside = folder / "member.keras"
    inside.write_bytes(b"model")
    with pytest.raises(OutputError, match="would replace a folder that holds the input"):
        check_writes([("--export saved_model", folder)], [inside])
    temp = tmp_path / ".out.keras.fuse-999999-abc.tmp.keras"  # publish removes such leftovers
    temp.write_bytes(b"model")
    with pytest.raises(OutputError, match="carries the name of a fuse temporary file"):
        check_writes([("-o", tmp_path / "out.keras")], [temp])
    with pytest.raises(OutputError, match="is also written by -o"):
        check_writes([("-o", tmp_path / "a.keras"), ("--plot", tmp_path / "a.keras")], [])
    check_writes([("-o", tmp_path / "out.keras")], [inside])  # unrelated paths pass


def test_export_artifact_is_named_after_the_output() -> None:
    """The proof for the first case: `--export litert` writes OUT's name with .tflite."""
    assert artifact_path(Path("ens.keras"), ExportFormat.LITERT) == Path("ens.tflite")


# --- 6. option injection ---------------------------------------------------------------------


def test_file_named_like_an_option_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "PWNED"
    good_keras(work, "a.keras")
    lambda_keras(work, marker)
    (work / "--unsafe").touch()
    monkeypatch.chdir(work)
    expanded = sorted(p.name for p in work.iterdir())  # what the shell makes of `*`
    args = ["merge", *expanded, "-o", "../out.keras"]

    # The proof: parsed as typer parses it, the file name turns --unsafe on.
    command = get_command(app).commands["merge"]  # type: ignore[attr-defined]
    ctx = command.context_class(command)
    TyperCommand.parse_args(command, ctx, args[1:])
    assert ctx.params["unsafe"] is True

    result = runner.invoke(app, args)
    one_line_error(result, 2, "--unsafe is given as an option but is also a file",
                   "put -- before the file names")
    assert not marker.exists() and not (tmp_path / "out.keras").exists()

    # With `--` first, the name is a file again: refused as an empty model, no code runs.
    result = runner.invoke(app, ["merge", "-o", "../out.keras", "--", *expanded])
    one_line_error(result, 3, "--unsafe: empty file")
    assert not marker.exists()
