"""`--inputs image`: one raw-image input for members of different sizes and channels,
each member's resize, grayscale and rescale built into the file.

The reference is computed here with TensorFlow's own image ops and the members' own
predictions, never with the file's layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from helpers import load, validated
from test_images import cnn, make_folder
from typer.testing import CliRunner

from fuse_cli.cli import app


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("image_input")
    make_folder(folder / "photos", per_class=5)
    cnn((12, 12, 3), 1).save(folder / "rgb12.keras")
    cnn((10, 8, 1), 2).save(folder / "gray10x8.keras")
    return {"folder": folder, "photos": folder / "photos", "rgb": folder / "rgb12.keras",
            "gray": folder / "gray10x8.keras"}


def test_a_folder_tune_writes_one_input_that_evaluate_scores_the_same(
    setup: dict[str, Path]
) -> None:
    out = setup["folder"] / "tuned.keras"
    result = invoke("tune", setup["rgb"], setup["gray"], "--data", setup["photos"],
                    "--rescale", "1/255", "--inputs", "image", "--cv", "0",
                    "--keep-zero-weights", "-o", out, "--force", "--json")
    assert result.exit_code == 0, result.stderr
    tuned = validated(result.stdout)
    assert tuned["merge"]["inputs"] == "image"
    model = load(out)
    assert len(model.inputs) == 1 and tuple(model.inputs[0].shape) == (None, 12, 12, 3)
    # the file takes raw pixels: no --rescale here, the tune's numbers come back
    scored = invoke("evaluate", out, "--data", setup["photos"], "--json")
    assert scored.exit_code == 0, scored.stderr
    found = validated(scored.stdout)["models"][0]
    assert found["accuracy"] == pytest.approx(tuned["fit"]["ensemble"]["accuracy"])
    assert found["log_loss"] == pytest.approx(tuned["fit"]["ensemble"]["log_loss"], rel=1e-5)
    assert invoke("verify", out, setup["rgb"], setup["gray"]).exit_code == 0
    record = json.loads(__import__("zipfile").ZipFile(out).read("fuse.json"))
    assert record["inputs"] == "image"
    assert record["preprocessing"]["baked"] is True
    assert record["preprocessing"]["input"] == [12, 12, 3]


def test_the_baked_preprocessing_is_what_tensorflow_does_to_raw_pixels(
    setup: dict[str, Path]
) -> None:
    out = setup["folder"] / "merged.keras"
    result = invoke("merge", setup["rgb"], setup["gray"], "--inputs", "image",
                    "--rescale", "1/255", "--weights", "1,3", "-o", out)
    assert result.exit_code == 0, result.stderr
    raw = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3)).astype(np.float32)
    rgb = load(setup["rgb"]).predict(raw / 255, verbose=0)
    small = tf.image.resize(raw, (10, 8), method="bilinear")
    gray = tf.image.rgb_to_grayscale(small).numpy() / 255
    gray_out = load(setup["gray"]).predict(gray, verbose=0)
    expected = 0.25 * rgb + 0.75 * gray_out
    np.testing.assert_allclose(load(out).predict(raw, verbose=0), expected, rtol=1e-5,
                               atol=1e-6)
    # Keras's own layers only
    assert "fuse" not in __import__("zipfile").ZipFile(out).read("config.json").decode()


def test_members_that_are_not_images_are_exit_4_and_a_soup_exit_2(
    setup: dict[str, Path], zoo: dict[str, Path], tmp_path: Path
) -> None:
    from helpers import dense_classifier

    dense_classifier(5, classes=3).save(tmp_path / "flat.keras")
    dense = invoke("merge", tmp_path / "flat.keras", setup["rgb"], "--inputs", "image", "-o",
                   tmp_path / "x.keras")
    assert dense.exit_code == 4 and "--inputs image:" in dense.stderr
    soup = invoke("merge", setup["rgb"], setup["rgb"], "--mode", "soup", "--inputs", "image",
                  "-o", tmp_path / "x.keras")
    assert soup.exit_code == 2 and "--inputs image does not apply" in soup.stderr


def test_saved_predictions_cannot_stand_for_the_files_preprocessing(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    np.savez(tmp_path / "p.npz", y=np.zeros(2, np.int64))
    result = invoke("tune", setup["rgb"], setup["gray"], "--inputs", "image", "--predictions",
                    tmp_path / "p.npz", "-o", tmp_path / "x.keras")
    assert result.exit_code == 2 and "give --data, not --predictions" in result.stderr
