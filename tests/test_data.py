"""The `--data` .npz format: what is accepted, and the message for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fuse_cli.compatibility import TensorSpec
from fuse_cli.data import check_inputs, class_labels, read_data, split_rows
from fuse_cli.errors import DataError, DataLoadError
from fuse_cli.predictions import (
    Predictions,
    check_provenance,
    read_predictions,
    save_predictions,
)


def npz(tmp_path: Path, name: str = "d.npz", **arrays: object) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_reads_x_and_y(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = read_data(npz(tmp_path, x=x, y=np.array([0, 1, 2, 0, 1, 2]), note=np.zeros(1)))
    assert data.keys == ["x"] and data.rows == 6
    np.testing.assert_array_equal(data.model_input(), x)


def test_reads_numbered_inputs_in_order(tmp_path: Path) -> None:
    path = npz(tmp_path, x1=np.ones((3, 2)), x0=np.zeros((3, 5)), x2=np.ones((3, 1)), y=[0, 1, 0])
    data = read_data(path)
    assert data.keys == ["x0", "x1", "x2"]
    assert [a.shape for a in data.inputs] == [(3, 5), (3, 2), (3, 1)]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 2)), "labels": [0, 1, 0]},
         "no 'y' array (the labels); found 'labels', 'x'"),
        ({"inputs": np.zeros((3, 2)), "y": [0, 1, 0]}, "expected 'x' (one input) or 'x0', 'x1'"),
        ({"x": np.zeros((3, 2)), "x0": np.zeros((3, 2)), "y": [0, 1, 0]}, "both 'x' and 'x0'"),
        ({"x0": np.zeros((3, 2)), "x2": np.zeros((3, 2)), "y": [0, 1, 0]},
         "has 'x0', 'x2' but no 'x1'"),
        ({"x": np.zeros((4, 2)), "y": [0, 1, 0]}, "'x' has 4 rows but 'y' has 3"),
        ({"x": np.float32(1.0), "y": [0]}, "'x' is a scalar"),
        ({"x": np.array(["a", "b"]), "y": [0, 1]}, "'x' has dtype <U1; expected numbers"),
        ({"x": np.array([[0.0], [np.nan]]), "y": [0, 1]}, "'x' has 1 NaN or inf values"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "'y' has no rows"),
    ],
)
def test_structure_errors_are_exit_2(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DataError) as caught:
        read_data(npz(tmp_path, **arrays))
    assert caught.value.exit_code == 2
    assert message in str(caught.value)


def test_unreadable_files_are_exit_3(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("x,y\n1,2\n")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    pickled = npz(tmp_path, "objects.npz", x=np.array([1, "a"], dtype=object), y=[0, 1])
    cases = [
        (tmp_path / "missing.npz", "no such file"),
        (tmp_path, "is a directory"),
        (text, "not an .npz archive"),
        (single, "is a single .npy array"),
        (pickled, "'x' holds pickled Python objects"),
    ]
    for path, message in cases:
        with pytest.raises(DataLoadError) as caught:
            read_data(path)
        assert caught.value.exit_code == 3
        assert message in str(caught.value), path


def data_with(tmp_path: Path, y: object, x: object = None) -> object:
    rows = len(np.asarray(y))
    return read_data(npz(tmp_path, x=np.zeros((rows, 2)) if x is None else x, y=y))


def test_labels_as_indices_one_hot_and_sigmoid(tmp_path: Path) -> None:
    indices = data_with(tmp_path, np.array([2, 0, 1]))
    np.testing.assert_array_equal(class_labels(indices, (3,), "m"), [2, 0, 1])
    floats = data_with(tmp_path, np.array([2.0, 0.0, 1.0]))
    np.testing.assert_array_equal(class_labels(floats, (3,), "m"), [2, 0, 1])
    onehot = data_with(tmp_path, np.eye(3)[[2, 0, 1]])
    np.testing.assert_array_equal(class_labels(onehot, (3,), "m"), [2, 0, 1])
    sigmoid = data_with(tmp_path, np.array([[1], [0], [1]]))
    np.testing.assert_array_equal(class_labels(sigmoid, (1,), "m"), [1, 0, 1])
    per_pixel = data_with(tmp_path, np.zeros((2, 4, 4), dtype=int))
    assert class_labels(per_pixel, (4, 4, 3), "m").shape == (2, 4, 4)


@pytest.mark.parametrize(
    ("y", "shape", "message"),
    [
        (np.array([0, 1, 7]), (3,),
         "'y' holds class index 7, but m outputs 3 classes (expected 0 to 2)"),
        (np.array([0, 1, 2]), (1,), "expected 0 or 1 for a single sigmoid column"),
        (np.array([0, -1, 1]), (3,), "'y' holds class index -1; expected indices >= 0"),
        (np.array([0, 0.5, 1]), (3,), "'y' holds 0.5, which is not a class index"),
        (np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]]), (3,), "row 1 is not"),
        (np.zeros((3, 5)), (3,), "'y' has shape (3, 5); m outputs (None, 3), so 'y' should be "
         "class indices (3,) or one-hot (3, 3)"),
    ],
)
def test_bad_labels(tmp_path: Path, y: np.ndarray, shape: tuple, message: str) -> None:
    with pytest.raises(DataError) as caught:
        class_labels(data_with(tmp_path, y), shape, "m")
    assert message in str(caught.value)


def test_inputs_must_fit_the_model(tmp_path: Path) -> None:
    data = data_with(tmp_path, [0, 1, 0], x=np.zeros((3, 5), dtype=np.float32))
    check_inputs(data, [TensorSpec((5,), "float32")], "m")
    check_inputs(data, [TensorSpec((None,), "float32")], "m")
    with pytest.raises(DataError, match=r"m: input expects shape \(None, 4\), but 'x' in d.npz "
                       r"has shape \(3, 5\)"):
        check_inputs(data, [TensorSpec((4,), "float32")], "m")
    with pytest.raises(DataError, match=r"m takes 2 inputs, but d.npz has 1 \(x\); give 'x0'"):
        check_inputs(data, [TensorSpec((5,), "float32")] * 2, "m")


def test_split_is_fixed_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    fit, held = split_rows(labels, 0.3)
    again_fit, again_held = split_rows(labels, 0.3)
    np.testing.assert_array_equal(held, again_held)
    np.testing.assert_array_equal(fit, again_fit)
    assert len(held) == 30 and len(fit) == 70
    assert not set(fit) & set(held)
    for c, count in enumerate([50, 30, 15, 5]):
        assert abs(np.sum(labels[held] == c) - 0.3 * count) <= 1
    everything, nothing = split_rows(labels, 0.0)
    assert len(everything) == 100 and len(nothing) == 0
    with pytest.raises(DataError, match="needs at least 2 rows"):
        split_rows(labels[:1], 0.3)


# --- saved predictions (fuse_cli.predictions) ---

SHA = "ab" * 32


def predictions_file(tmp_path: Path, **changes: object) -> Path:
    arrays: dict[str, object] = {
        "y": np.array([0, 1, 2]), "p0": np.eye(3, dtype=np.float32),
        "p1": np.full((3, 3), 1 / 3, dtype=np.float32), "files": np.array(["a.keras", "b.h5"]),
        "sha256": np.array([SHA, SHA]),
    }
    arrays.update(changes)
    return npz(tmp_path, "p.npz", **{k: v for k, v in arrays.items() if v is not None})


def test_predictions_round_trip(tmp_path: Path) -> None:
    written = Predictions(None, np.array([2, 0]), [np.eye(3)[[2, 0]], np.eye(3)[[1, 0]]],
                          ["a.keras", "b.h5"], [SHA, "cd" * 32], ["x", "y", "z"], "val")
    save_predictions(written, tmp_path / "p.npz")
    read = read_predictions(tmp_path / "p.npz")
    np.testing.assert_array_equal(read.y, [2, 0])
    for a, b in zip(read.outputs, written.outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (read.files, read.sha256, read.classes, read.data) == (
        ["a.keras", "b.h5"], [SHA, "cd" * 32], ["x", "y", "z"], "val")
    check_provenance(read, ["a.keras", "b.h5"], [SHA, "cd" * 32])
    with pytest.raises(DataError, match="holds predictions of 2 models"):
        check_provenance(read, ["a.keras"], [SHA])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sha256": None}, "no 'sha256'"),
        ({"p0": None}, "has p1: expected p0, p1, ..."),
        ({"files": np.array(["a.keras"])}, "2 prediction arrays but 1 'files'"),
        ({"sha256": np.array([SHA, "nope"])}, "'sha256' holds 'nope', not 64 lowercase hex"),
        ({"p1": np.ones((3, 4), dtype=np.float32)}, "'p1' has shape (3, 4) but 'p0' has (3, 3)"),
        ({"p1": np.full((3, 3), np.nan, dtype=np.float32)}, "'p1' has 9 NaN or inf values"),
        ({"y": np.array([0.0, 1.0, 2.0])}, "expected integer class indices"),
        ({"y": np.array([0, 1, 3])}, "'y' holds class index 3; the outputs have 3 classes"),
        ({"files": np.array([1, 2])}, "'files' must be a 1-D string array"),
    ],
)
def test_predictions_structure_errors_are_exit_2(
    tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(DataError) as caught:
        read_predictions(predictions_file(tmp_path, **changes))
    assert caught.value.exit_code == 2
    assert message in str(caught.value)


def test_unreadable_predictions_are_exit_3(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    text.write_text("y,p0\n")
    pickled = predictions_file(tmp_path, files=np.array(["a", 1], dtype=object))
    for path, message in ((tmp_path / "none.npz", "no such file"),
                          (text, "not an .npz archive"), (pickled, "pickled Python objects")):
        with pytest.raises(DataLoadError) as caught:
            read_predictions(path)
        assert caught.value.exit_code == 3 and message in str(caught.value)
