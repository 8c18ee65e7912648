"""`--engine ray`: the pass over the data on a local Ray (2 CPUs), against the local engine.

The reference is the local engine's own run of the same command (itself checked against
Keras and numpy in test_images.py, test_tables.py and test_tune.py): the predictions
file must have the same keys, rows and labels, and predictions equal to float32
tolerance; the scores and the tuned weights the same.

Each command starts Ray itself and stops it, as a user's does; every actor imports
TensorFlow, so each Ray command here costs 10-20 s.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import dense_classifier, validated
from hostile3 import png_bomb
from test_images import cnn, make_folder, run, write_image
from test_tables import write_table
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.engines.ray_worker import KILL_ONCE

pytest.importorskip("ray")
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines")
    rng = np.random.default_rng(5)
    paths = {"npz": root / "rows.npz"}
    np.savez(paths["npz"], x=rng.normal(size=(300, 6)).astype(np.float32),
             y=rng.integers(0, 3, 300))
    for i in range(2):
        paths[f"dense{i}"] = root / f"dense{i}.keras"
        dense_classifier(6, 3, name=f"dense{i}", seed=10 + i).save(paths[f"dense{i}"])
    folder = make_folder(root / "photos", per_class=7, seed=4)
    # Nested folders below a class, and one file that is not an image at all.
    write_image(folder / "dogs" / "2024" / "june" / "late.png",
                rng.integers(0, 255, (15, 17, 3)))
    (folder / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    paths["folder"] = folder
    # The folder's files (the undecodable one too) and a decompression bomb, screened by
    # the workers themselves (no listing screens a table's rows first).
    bomb = png_bomb(root, side=10_000).read_bytes()
    paths["table"] = write_table(folder, root / "table.parquet", groups=6, extra=[(bomb, 2)])
    paths["bomb"] = root / "bomb.parquet"
    good = (folder / "dogs" / "2024" / "june" / "late.png").read_bytes()
    pq.write_table(pa.table({"image": pa.array([good, bomb], pa.binary()),
                             "label": pa.array([2, 0], pa.int64())}), paths["bomb"])
    for name, shape, seed in (("rgb", (12, 10, 3), 1), ("gray", (9, 9, 1), 2)):
        paths[name] = root / f"{name}.keras"
        cnn(shape, seed).save(paths[name])
    return paths


def both(runner: CliRunner, tmp_path: Path, *args, ray=()) -> tuple[dict, dict]:
    """The same evaluate on both engines: the two reports, predictions in tmp_path."""
    reports, stderr = {}, {}
    for engine, extra in (("local", ()), ("ray", ("--engine", "ray", *ray))):
        result = run(runner, "evaluate", *args, "--save-predictions", tmp_path / f"{engine}.npz",
                     "--json", *extra, ok=True)
        reports[engine], stderr[engine] = validated(result.stdout), result.stderr
    assert stderr["ray"] == stderr["local"]  # fuse's warnings only: Ray's banner, logs stay off
    with np.load(tmp_path / "local.npz") as local, np.load(tmp_path / "ray.npz") as ray_:
        assert local.files == ray_.files
        for key in local.files:
            if local[key].dtype.kind == "f":
                assert local[key].shape == ray_[key].shape, key
                assert np.abs(local[key] - ray_[key]).max() <= TOLERANCE, key
            else:
                assert np.array_equal(local[key], ray_[key]), key
    for a, b in zip(reports["local"]["models"], reports["ray"]["models"], strict=True):
        assert a["accuracy"] == b["accuracy"]
        assert a["log_loss"] == pytest.approx(b["log_loss"], abs=1e-6)
    return reports["local"], reports["ray"]


def test_an_npz_file_gives_the_same_predictions_on_ray(inputs, runner, tmp_path) -> None:
    local, ray_ = both(runner, tmp_path, inputs["dense0"], inputs["dense1"], "--data",
                       inputs["npz"], "--batch-size", "64")  # one worker: the default
    assert local["rows"] == ray_["rows"] == 300


def test_a_nested_folder_gives_the_same_rows_on_ray(inputs, runner, tmp_path) -> None:
    local, ray_ = both(runner, tmp_path, inputs["rgb"], inputs["gray"], "--data",
                       inputs["folder"], "--skip-bad-images", "--batch-size", "4",
                       ray=("--workers", "2"))
    assert local["rows"] == ray_["rows"] == 22 and local["skipped"] == ray_["skipped"] == 1
    assert local["warnings"] == ray_["warnings"]


def test_a_parquet_table_gives_the_same_predictions_on_ray(inputs, runner, tmp_path) -> None:
    local, ray_ = both(runner, tmp_path, inputs["rgb"], inputs["gray"], "--data",
                       inputs["table"], "--batch-size", "5", "--skip-bad-images")
    assert local["rows"] == ray_["rows"] == 22 and local["skipped"] == ray_["skipped"] == 2


@pytest.mark.parametrize(("data", "words"), [
    ("folder", "broken.png: cannot be read as an image"),
    ("bomb", "bomb.parquet row 1: cannot be read as an image: a png image that declares "
             "10,000 x 10,000 pixels"),
])
def test_a_bad_image_stops_a_ray_run_naming_it(inputs, runner, data, words) -> None:
    result = run(runner, "evaluate", inputs["rgb"], "--data", inputs[data], "--engine", "ray")
    local = run(runner, "evaluate", inputs["rgb"], "--data", inputs[data])
    assert result.exit_code == local.exit_code == 3
    assert result.stderr == local.stderr  # the same words whichever engine read it
    assert words in result.stderr
    assert result.stderr.strip().endswith("(--skip-bad-images leaves such images out)")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_killed_worker_is_retried_and_tune_gives_the_local_answer(
    inputs, runner, tmp_path, monkeypatch
) -> None:
    found = {}
    for engine in ("local", "ray"):
        extra = ("--engine", "ray", "--workers", "2") if engine == "ray" else ()
        if engine == "ray":
            marker = tmp_path / "killed"
            monkeypatch.setenv(KILL_ONCE, str(marker))
        result = run(runner, "tune", inputs["dense0"], inputs["dense1"], "--data",
                     inputs["npz"], "-o", tmp_path / f"{engine}.keras", "--batch-size", "32",
                     "--json", *extra, ok=True)
        found[engine] = json.loads(result.stdout)
    assert marker.exists()  # an actor did kill itself (SIGKILL) in its first batch
    assert any("worker died" in w for w in found["ray"]["warnings"])
    assert found["ray"]["rows"] == found["local"]["rows"] == 300
    assert found["ray"]["weights"] == found["local"]["weights"]
    scores = {engine: [score for member in [*report["fit"]["members"], report["fit"]["ensemble"]]
                       for score in (member["accuracy"], member["log_loss"])]
              for engine, report in found.items()}
    assert scores["ray"] == pytest.approx(scores["local"], abs=1e-6)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_is_one_line_and_exit_2(inputs, runner, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        result = run(runner, "evaluate", inputs["dense0"], "--data", inputs["npz"],
                     "--engine", "ray", "--address", address)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: --address {address}: cannot reach")
        assert len(result.stderr.strip().splitlines()) == 1
    # `auto` with no cluster running: Ray looks for one, and says it found none.
    result = runner.invoke(app, ["evaluate", str(inputs["dense0"]), "--data", str(inputs["npz"]),
                                 "--engine", "ray", "--address", "auto"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --address auto: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_ray_not_installed_names_the_extra(inputs, runner, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as uninstalled
    result = run(runner, "tune", inputs["dense0"], inputs["dense1"], "--data", inputs["npz"],
                 "-o", "never.keras", "--engine", "ray")
    assert result.exit_code == 2
    assert "pip install 'fuse-cli[ray]'" in result.stderr
    assert not Path("never.keras").exists()


def test_ray_options_need_the_ray_engine(inputs, runner) -> None:
    for extra in (["--workers", "2"], ["--address", "auto"]):
        result = run(runner, "evaluate", inputs["dense0"], "--data", inputs["npz"], *extra)
        assert result.exit_code == 2 and "to --engine ray" in result.stderr
    result = run(runner, "evaluate", inputs["dense0"], "--data", inputs["npz"], "--engine",
                 "ray", "--workers", "0")
    assert result.exit_code == 2 and "--workers must be at least 1" in result.stderr
    result = run(runner, "tune", inputs["dense0"], inputs["dense1"], "--predictions",
                 inputs["npz"], "-o", "never.keras", "--engine", "ray")
    assert result.exit_code == 2 and "--predictions were computed already" in result.stderr


def test_a_worker_screens_each_file_again_before_reading_it(inputs, tmp_path) -> None:
    """What changed between the listing and the worker's read (a FIFO, a link leaving
    the folder, a file gone) is refused by the worker as the listing refuses it."""
    import os

    from fuse_cli.engines.ray_worker import _read_files

    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    good = folder / "cats" / "good.png"
    good.write_bytes((inputs["folder"] / "dogs" / "2024" / "june" / "late.png").read_bytes())
    fifo = folder / "cats" / "pipe.png"
    os.mkfifo(fifo)
    outside = tmp_path / "secret.png"
    outside.write_bytes(good.read_bytes())
    (folder / "cats" / "link.png").symlink_to(outside)
    files = np.array([str(good), str(fifo), str(folder / "cats" / "link.png"),
                      str(folder / "cats" / "gone.png")])
    blobs, reasons = _read_files(files, os.path.realpath(folder))
    assert blobs[0] == good.read_bytes() and reasons[0] is None
    assert reasons[1] == "not a regular file (a FIFO, device or socket)" and blobs[1] == b""
    assert reasons[2].startswith("a link to") and "outside the folder" in reasons[2]
    assert reasons[3].startswith("cannot be read")


def test_rows_lost_repeated_or_reordered_are_refused_not_used(inputs) -> None:
    """The driver's check on what the workers return (no Ray needed to feed it)."""
    from fuse_cli.data import read_data
    from fuse_cli.engines.ray_pass import _in_order
    from fuse_cli.images import ImageOptions
    from fuse_cli.tables import read_table

    data = read_data(inputs["npz"])
    rows = np.arange(data.rows)

    def returned(order: np.ndarray) -> dict[str, np.ndarray]:
        return {"row": order, "ok": np.ones(len(order), bool),
                "error": np.array([""] * len(order), object),
                "output": order[:, None].astype(np.float32)}

    shuffled = np.random.default_rng(0).permutation(rows)
    output, kept = _in_order(data, returned(shuffled), rows, ImageOptions())
    assert np.array_equal(kept, rows) and np.array_equal(output[:, 0], rows)  # sorted back
    for broken in (rows[1:], np.r_[rows, 7], np.r_[rows[:-1], 7]):
        with pytest.raises(RuntimeError, match="rows lost or repeated"):
            _in_order(data, returned(broken), rows, ImageOptions())
    table = read_table(inputs["table"])
    swapped = returned(np.full(table.rows, -1))
    swapped["label"] = table.labels[::-1].copy()
    with pytest.raises(RuntimeError, match="out of order"):
        _in_order(table, swapped, np.arange(table.rows), ImageOptions())


def test_what_a_worker_raises_reaches_the_user_as_fuses_own_error(inputs, tmp_path) -> None:
    """Ray keeps only the text of a worker's exception (UserCodeException): the worker
    returns fuse's own error as data and the driver raises it again, class and message.
    Fed past the checks that would stop it before Ray (rows of 7 for a model of 6)."""
    import keras

    from fuse_cli.data import read_data
    from fuse_cli.engines import EngineOptions
    from fuse_cli.engines.ray_pass import ray_session
    from fuse_cli.errors import DataError
    from fuse_cli.images import ImageOptions

    np.savez(tmp_path / "wide.npz", x=np.zeros((8, 7), np.float32), y=np.zeros(8, np.int64))
    data = read_data(tmp_path / "wide.npz")
    model = keras.saving.load_model(inputs["dense0"])
    with ray_session(EngineOptions(workers=1)) as engine, pytest.raises(DataError) as caught:
        engine.outputs(model, data, label="dense0.keras", batch_size=4,
                       images=ImageOptions(), advance=None)
    assert str(caught.value).startswith("dense0.keras: cannot run on the data: ")


def test_a_library_callers_ray_session_is_used_and_left_running(inputs) -> None:
    import keras
    import ray

    from fuse_cli.data import read_data
    from fuse_cli.engines import EngineOptions
    from fuse_cli.engines.ray_pass import ray_session
    from fuse_cli.evaluation import local_outputs
    from fuse_cli.images import ImageOptions

    data = read_data(inputs["npz"])
    model = keras.saving.load_model(inputs["dense1"])
    expected, rows = local_outputs(model, data, label="dense1", batch_size=50,
                                   images=ImageOptions(), advance=None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with ray_session(EngineOptions(workers=1)) as engine:
            found, found_rows = engine.outputs(model, data, label="dense1", batch_size=50,
                                               images=ImageOptions(), advance=None)
        assert ray.is_initialized()  # the caller's session: not shut down by fuse
        assert not ray.data.DataContext.get_current().execution_options.preserve_order
    finally:
        ray.shutdown()
    assert np.array_equal(found_rows, rows)
    assert np.abs(found - expected).max() <= TOLERANCE
