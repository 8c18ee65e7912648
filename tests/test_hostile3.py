"""Hostile inputs, round 3: what a crafted file, folder or command line can still cost.

Each class has its fixture made by `tests/hostile3.py` (the project's own script) and a
test here; `benchmarks/hostile_bounds.py` measures the same cases for peak memory and
time, one process each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hostile3
import numpy as np
import pytest
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.errors import ModelLoadError, OutputError
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


# --- class 1: a refused virtual dataset leaves fuse cleanly ------------------------------


def test_a_refused_virtual_dataset_exits_3_not_139(tmp_path: Path) -> None:
    """In a real process: the refused dataset must not outlive its file into HDF5's
    atexit teardown (it crashed with SIGSEGV after the right message)."""
    path = hostile3.vds_h5(tmp_path)
    result = subprocess.run([sys.executable, "-c", "from fuse_cli.cli import main; main()",
                             "inspect", str(path)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: HDF5 dataset /model_weights/leak is a virtual dataset"]


def test_a_virtual_dataset_inside_a_keras_archive_is_refused(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = hostile3.vds_keras(tmp_path)
    one_line_error(runner.invoke(app, ["inspect", str(path)]), 3,
                   "HDF5 dataset model.weights.h5:/leak is a virtual dataset")


# --- class 2: costs a config declares -------------------------------------------------------


def test_a_numpy_value_of_a_huge_dtype_is_refused_before_keras(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = hostile3.numpy_argument_keras(tmp_path)
    one_line_error(runner.invoke(app, ["inspect", str(path)]), 3,
                   "config builds a __numpy__ value of dtype '(30000,15000)f8': only plain "
                   "numeric dtypes are read: refused")


def test_a_plain_numpy_dtype_is_still_read() -> None:
    from fuse_cli.formats.config_costs import check_config_costs

    for dtype in ("float32", "<f4", "int64", "bool", "uint8", "bfloat16"):
        check_config_costs({"class_name": "__numpy__", "config": {"value": [1], "dtype": dtype}},
                           Path("m.keras"))


def test_a_config_listed_out_of_order_is_refused_in_time(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = hostile3.reversed_chain_keras(tmp_path)
    one_line_error(runner.invoke(app, ["inspect", str(path)]), 3,
                   "layers so far out of order that Keras would try more than 2,000,000")


def test_the_order_simulation_counts_one_pass_for_a_config_in_order(tmp_path: Path) -> None:
    """The same chain in order is one pass: the bound refuses disorder, not size."""
    import json
    import zipfile

    from fuse_cli.formats import config_costs

    path = hostile3.reversed_chain_keras(tmp_path, length=3000)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    layers = config["config"]["layers"]
    ordered = [layers[0], layers[1], *layers[2:-1][::-1], layers[-1]]
    config["config"]["layers"] = ordered
    config_costs.check_config_costs(config, path)  # no error
    with pytest.raises(ModelLoadError, match="out of order"):
        config_costs.check_config_costs(json.loads(zipfile.ZipFile(path).read("config.json")),
                                        path)


@pytest.mark.parametrize("build", [hostile3.attention_keras, hostile3.repeated_layer_keras],
                         ids=["attention-scores", "one-layer-called-800-times"])
def test_memory_no_layer_output_shows_is_counted(
    build: Callable[[Path], Path], runner: CliRunner, tmp_path: Path
) -> None:
    path = build(tmp_path)
    result = runner.invoke(app, ["merge", str(path), str(path), "-o", str(tmp_path / "e.keras")])
    one_line_error(result, 3, "a sample on the check batch: too large to check")
    assert not (tmp_path / "e.keras").exists()


# --- class 3: prediction passes are bounded like the check batch ----------------------------


def test_a_prediction_pass_takes_fewer_rows_when_a_sample_is_large(tmp_path: Path) -> None:
    from fuse_cli.formats import load_model
    from fuse_cli.formula import PREDICT_BYTES, prediction_batch

    model = load_model(hostile3.upsampling_classifier_keras(tmp_path)).model
    batch = prediction_batch(model, 256, "upsampling.keras")
    sample = 2048 * 2048 * 4  # the upsampled image, float32
    assert 1 <= batch < 256 and batch * sample <= PREDICT_BYTES
    small = load_model(hostile3.functional_keras(tmp_path)).model
    assert prediction_batch(small, 256, "functional.keras") == 256


# --- classes 4 and 5: image folders -----------------------------------------------------------


def image_classifier(folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    path = folder / "tiny.keras"
    model.save(path)
    return path


def small_png(path: Path, seed: int) -> None:
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def two_classes(root: Path) -> Path:
    for c in ("cat", "dog"):
        for i in range(3):
            small_png(root / c / f"{i}.png", seed=i + (10 if c == "dog" else 0))
    return root


@pytest.mark.parametrize("bomb", ["png", "webp-named-png"])
def test_decompression_bombs_are_refused_from_their_header(
    bomb: str, runner: CliRunner, tmp_path: Path
) -> None:
    model = image_classifier(tmp_path)
    root = two_classes(tmp_path / "images")
    if bomb == "png":
        hostile3.png_bomb(root / "cat")
        name, text = "bomb.png", "a png image that declares 10,000 x 10,000 pixels"
    else:
        hostile3.webp_bomb_named_png(root / "cat")
        name, text = "photo.png", "a webp image that declares 16,383 x 16,383 pixels"
    result = runner.invoke(app, ["evaluate", str(model), "--data", str(root)])
    one_line_error(result, 3, f"{root / 'cat' / name}: {text}")
    skipped = runner.invoke(app, ["evaluate", str(model), "--data", str(root),
                                  "--skip-bad-images", "--json"])
    assert skipped.exit_code == 0, skipped.stderr
    assert '"skipped": 1' in skipped.stdout


def test_special_files_in_an_image_folder_are_never_read(
    runner: CliRunner, tmp_path: Path
) -> None:
    model = image_classifier(tmp_path)
    root = two_classes(tmp_path / "images")
    os.mkfifo(root / "cat" / "fifo.png")  # reading it would hang forever
    os.symlink("/dev/zero", root / "dog" / "zero.png")  # reading it never ends
    result = runner.invoke(app, ["evaluate", str(model), "--data", str(root)])
    one_line_error(result, 3, f"{root / 'cat' / 'fifo.png'}: not a regular file")
    skipped = runner.invoke(app, ["evaluate", str(model), "--data", str(root),
                                  "--skip-bad-images", "--json"])
    assert skipped.exit_code == 0, skipped.stderr
    assert '"skipped": 2' in skipped.stdout and '"rows": 6' in skipped.stdout


def test_links_that_leave_the_folder_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    model = image_classifier(tmp_path)
    root = two_classes(tmp_path / "images")
    outside = tmp_path / "elsewhere"
    small_png(outside / "x.png", seed=99)
    os.symlink(outside / "x.png", root / "dog" / "linked.png")
    result = runner.invoke(app, ["evaluate", str(model), "--data", str(root)])
    one_line_error(result, 3, f"{root / 'dog' / 'linked.png'}: a link to {outside / 'x.png'}, "
                   "outside the folder")
    (root / "dog" / "linked.png").unlink()
    os.symlink("/usr", root / "system")  # a class folder that is the system's
    result = runner.invoke(app, ["evaluate", str(model), "--data", str(root),
                                 "--skip-bad-images"])
    one_line_error(result, 3, f"{root / 'system'}: a link to /usr, outside the folder")
    (root / "system").unlink()
    os.symlink(root / "cat" / "0.png", root / "dog" / "inside.png")  # inside: read, as Keras
    assert runner.invoke(app, ["evaluate", str(model), "--data", str(root)]).exit_code == 0


def test_class_folders_sort_by_code_point_as_keras(tmp_path: Path) -> None:
    """`Dog` before `cat`: Keras sorts class names by code point, not case-insensitively."""
    import keras

    from fuse_cli.images import read_image_folder

    root = tmp_path / "images"
    for i, name in enumerate(("cat", "Dog", "bird")):
        small_png(root / name / "a.png", seed=i)
    ours = read_image_folder(root).classes
    theirs = keras.utils.image_dataset_from_directory(root, image_size=(8, 8),
                                                       verbose=False).class_names
    assert ours == theirs == ["Dog", "bird", "cat"]


# --- class 6: .npz members without the .npy suffix ----------------------------------------


@pytest.mark.parametrize("option", ["--data", "--predictions"])
def test_npz_members_without_suffix_are_checked_as_arrays(
    option: str, runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    data = hostile3.npz_without_suffix(tmp_path)
    if option == "--data":
        args = ["evaluate", str(zoo["a.keras"]), "--data", str(data)]
    else:
        args = ["tune", str(zoo["a.keras"]), str(zoo["b.keras"]), "--predictions", str(data),
                "-o", str(tmp_path / "t.keras")]
    one_line_error(runner.invoke(app, args), 3,
                   "'x' declares shape (1000000000000, 5) (36.4 TiB) but holds")


# --- mutation survivors: limits no test reached ---------------------------------------------


def test_the_npz_total_declared_size_limit(runner: CliRunner, zoo: dict[str, Path],
                                           tmp_path: Path) -> None:
    data = hostile3.npz_many_small_arrays(tmp_path)
    one_line_error(runner.invoke(app, ["evaluate", str(zoo["a.keras"]), "--data", str(data)]),
                   3, "its arrays declare")


def test_the_hdf5_total_declared_bytes_budget(runner: CliRunner, tmp_path: Path) -> None:
    path = hostile3.h5_many_ghost_datasets(tmp_path)
    one_line_error(runner.invoke(app, ["inspect", str(path)]), 3, "HDF5 datasets declare")


def test_backbones_that_differ_only_in_trainable_are_not_shared(tmp_path: Path) -> None:
    """The library call: a backbone whose kernel variable is frozen and one whose kernel
    trains compute alike and have equal configs (the layer's own flag is unchanged), but
    are not the same layer (fine-tuning would change one); nothing is shared."""
    import keras

    from fuse_cli.sharing import find_sharing

    def member(frozen_kernel: bool, seed: int) -> keras.Model:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        backbone = keras.layers.Dense(8, activation="relu", name="backbone")
        x = backbone(inputs)
        backbone.kernel.trainable = not frozen_kernel
        keras.utils.set_random_seed(seed)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))

    a, b = member(False, 1), member(True, 2)
    assert a.layers[1].get_config() == b.layers[1].get_config()
    assert find_sharing([member(False, 1), member(False, 2)]).segments  # shared when equal
    assert find_sharing([a, b]).segments == []
