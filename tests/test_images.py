"""`--data DIR`: image folders in Keras's convention, checked against Keras's own loader.

The reference for every number is `keras.utils.image_dataset_from_directory` (the
loader this convention comes from) feeding the member's own `predict`, scored in numpy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import validated
from typer.testing import CliRunner

from fuse_cli.cli import app
from fuse_cli.errors import DataError, DataLoadError
from fuse_cli.images import read_image_folder

EPS = 1e-7
CLASSES = ("cats", "birds", "dogs")  # sorted: birds 0, cats 1, dogs 2


def run(runner: CliRunner, *args: str | Path, ok: bool = False):  # noqa: ANN201
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=not ok)
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def write_image(path: Path, pixels: np.ndarray) -> None:
    """A real PNG or JPEG file, encoded by TensorFlow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = tf.io.encode_jpeg if path.suffix == ".jpg" else tf.io.encode_png
    path.write_bytes(encode(pixels.astype(np.uint8)).numpy())


def make_folder(root: Path, per_class: int, seed: int = 0, size: int = 20) -> Path:
    """Images whose brightness pattern depends on the class, of varied sizes and kinds."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(sorted(CLASSES)):
        for i in range(per_class):
            h, w = size + (i % 3), size - (i % 2)
            base = np.zeros((h, w, 3))
            base[..., c] = 200
            pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255)
            suffix = ".jpg" if i % 4 == 3 else ".png"
            write_image(root / name / f"img_{i:03d}{suffix}", pixels)
    return root


def cnn(shape: tuple[int, int, int], seed: int, classes: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation="softmax"),
    ], name=f"cnn_{seed}")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of 3 classes and two members with different input sizes and channels."""
    root = tmp_path_factory.mktemp("images")
    paths = {"folder": make_folder(root / "photos", per_class=8)}
    (root / "photos" / "cats" / "notes.txt").write_text("not an image")
    (root / "photos" / "cats" / ".DS_Store").write_bytes(b"\0")
    for name, shape, seed in (("rgb", (12, 10, 3), 1), ("gray", (9, 9, 1), 2)):
        paths[name] = root / f"{name}.keras"
        cnn(shape, seed).save(paths[name])
    for name, seed in (("five", 3), ("five_b", 4)):
        paths[name] = root / f"{name}.keras"
        cnn((12, 10, 3), seed, classes=5).save(paths[name])
    return paths


def keras_reference(folder: Path, model_path: Path, scale: float = 1.0,
                    offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The model's predictions on Keras's own loading of the folder, in Keras's order."""
    model = keras.saving.load_model(model_path, compile=False)
    h, w, c = model.input_shape[1:]
    ds = keras.utils.image_dataset_from_directory(
        folder, labels="inferred", label_mode="int", image_size=(h, w), shuffle=False,
        color_mode={1: "grayscale", 3: "rgb"}[c], batch_size=5, verbose=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    x = np.concatenate(xs) * scale + offset
    return model.predict(x, verbose=0), np.concatenate(ys), list(ds.file_paths)


def numpy_scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    accuracy = float(np.mean(np.argmax(p, axis=1) == y))
    q = p[np.arange(len(y)), y] / p.sum(axis=1)
    return accuracy, float(np.mean(-np.log(np.clip(q, EPS, 1 - EPS))))


# --- the folder itself: names and labels, no decoding ---


def test_folder_classes_are_sorted_subfolders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", per_class=2)
    write_image(root / "dogs" / "nested" / "deep.png", np.zeros((4, 4, 3)))
    (root / "dogs" / "readme.md").write_text("x")
    (root / "loose.png").write_bytes(b"top level: not in a class folder")
    folder = read_image_folder(root)
    assert folder.classes == ["birds", "cats", "dogs"]
    names = [os.path.relpath(f, root) for f in folder.files]
    assert names == ["birds/img_000.png", "birds/img_001.png", "cats/img_000.png",
                     "cats/img_001.png", "dogs/img_000.png", "dogs/img_001.png",
                     "dogs/nested/deep.png"]
    np.testing.assert_array_equal(folder.labels, [0, 0, 1, 1, 2, 2, 2])
    assert [os.path.relpath(f, root) for f in folder.ignored] == ["dogs/readme.md"]


def test_folder_structure_errors(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match="no such folder"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match="has no class subfolders"):
        read_image_folder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in its 1 class folders"):
        read_image_folder(tmp_path / "empty")


# --- evaluate and tune on a folder ---


def test_evaluate_folder_matches_keras_loader(runner: CliRunner, images: dict[str, Path]) -> None:
    """Each member gets its own size and channels; the numbers are Keras's."""
    result = run(runner, "evaluate", images["rgb"], images["gray"], "--data", images["folder"],
                 "--rescale", "1/127.5", "--offset", "-1", "--batch-size", "7", "--json",
                 ok=True)
    report = validated(result.stdout)
    assert report["rows"] == 24
    for found, name in zip(report["models"], ("rgb", "gray"), strict=True):
        p, y, _ = keras_reference(images["folder"], images[name], 1 / 127.5, -1.0)
        accuracy, log_loss = numpy_scores(p.astype(np.float64), y)
        assert found["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert found["log_loss"] == pytest.approx(log_loss, rel=1e-5)
    assert "ignored 1 file without an image extension" in result.stderr
    assert "notes.txt" in result.stderr and ".DS_Store" not in result.stderr


def test_progress_reports_every_pass_over_the_folder(images: dict[str, Path]) -> None:
    """Each model's pass reports rows done, from 0 to all, batch by batch, in order."""
    from fuse_cli.evaluation import evaluate_files

    calls: list[tuple[str, int, int]] = []
    evaluate_files([images["rgb"], images["gray"]], images["folder"], batch_size=5,
                   advance=lambda label, done, total: calls.append((label, done, total)))
    for label in ("rgb.keras", "gray.keras"):
        done = [d for name, d, total in calls if name == label and total == 24]
        assert done == [0, 5, 10, 15, 20, 24], calls


def test_saved_predictions_are_the_members_own(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    """The round trip: P.npz holds each member's predict, the labels and the SHA-256s."""
    import hashlib

    saved = tmp_path / "p.npz"
    run(runner, "evaluate", images["rgb"], images["gray"], "--data", images["folder"],
        "--save-predictions", saved, ok=True)
    with np.load(saved, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert set(arrays) == {"format", "y", "p0", "p1", "files", "sha256", "classes", "data"}
    assert list(arrays["classes"]) == ["birds", "cats", "dogs"]
    assert list(arrays["files"]) == ["rgb.keras", "gray.keras"]
    for i, name in enumerate(("rgb", "gray")):
        assert arrays["sha256"][i] == hashlib.sha256(images[name].read_bytes()).hexdigest()
        p, y, _ = keras_reference(images["folder"], images[name])
        np.testing.assert_array_equal(arrays["y"], y)
        np.testing.assert_allclose(arrays[f"p{i}"], p, rtol=1e-5, atol=1e-6)

    from_predictions = json.loads(run(
        runner, "tune", images["rgb"], images["gray"], "--predictions", saved,
        "-o", tmp_path / "a.keras", "--json", ok=True).stdout)
    from_folder = json.loads(run(
        runner, "tune", images["rgb"], images["gray"], "--data", images["folder"],
        "-o", tmp_path / "b.keras", "--json", ok=True).stdout)
    assert from_predictions["weights"] == pytest.approx(from_folder["weights"], abs=1e-6)
    assert from_predictions["source"] == "predictions" and from_folder["source"] == "images"
    assert from_predictions["rows"] == from_folder["rows"] == 24

    swapped = run(runner, "tune", images["gray"], images["rgb"], "--predictions", saved,
                  "-o", tmp_path / "c.keras")
    assert swapped.exit_code == 2
    assert "p.npz: 'p0' was made by rgb.keras" in swapped.stderr
    assert "but gray.keras has sha256" in swapped.stderr
    assert not (tmp_path / "c.keras").exists()


def test_predictions_written_elsewhere_are_accepted(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    """A file in the documented format, made without fuse (here: Keras's loader)."""
    import hashlib

    members = [images["rgb"], images["gray"]]
    ps = [keras_reference(images["folder"], m)[0] for m in members]
    y = keras_reference(images["folder"], members[0])[1]
    path = tmp_path / "elsewhere.npz"
    np.savez(path, y=y, p0=ps[0], p1=ps[1], files=np.array([m.name for m in members]),
             sha256=np.array([hashlib.sha256(m.read_bytes()).hexdigest() for m in members]))
    report = json.loads(run(runner, "tune", *members, "--predictions", path, "--cv", "0",
                            "-o", tmp_path / "e.keras", "--json", ok=True).stdout)
    best = min(range(101), key=lambda i: (round(numpy_scores(
        (i / 100) * ps[0] + (1 - i / 100) * ps[1], y)[1], 6), abs(i - 50)))
    assert report["weights"][0] == pytest.approx(best / 100)


def test_bad_image_names_the_file_or_is_skipped(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    root = make_folder(tmp_path / "d", per_class=4)
    bad = root / "cats" / "img_001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "dogs" / "fake.jpg").write_text("this is text")
    result = run(runner, "evaluate", images["rgb"], "--data", root)
    assert result.exit_code == 3
    assert f"{bad}: cannot be read as an image" in result.stderr
    assert "--skip-bad-images" in result.stderr and "Traceback" not in result.output

    skipped = run(runner, "evaluate", images["rgb"], images["gray"], "--data", root,
                  "--skip-bad-images", "--json", ok=True)
    report = validated(skipped.stdout)
    assert report["rows"] == 11 and report["skipped"] == 2
    assert "skipped 2 images that cannot be decoded" in skipped.stderr
    clean = make_folder(tmp_path / "clean", per_class=4)
    (clean / "cats" / "img_001.png").unlink()
    p, y, _ = keras_reference(clean, images["rgb"])
    accuracy, log_loss = numpy_scores(p.astype(np.float64), y)
    assert report["models"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert report["models"][0]["log_loss"] == pytest.approx(log_loss, rel=1e-5)


def test_exit_4_class_folders_do_not_match_outputs(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    for command in (["evaluate", images["five"]],
                    ["tune", images["five"], images["five_b"], "-o", tmp_path / "e.keras"]):
        result = run(runner, *command, "--data", images["folder"])
        assert result.exit_code == 4, result.stderr
        assert ("photos: has 3 class folders (birds, cats, dogs), but five.keras outputs 5 "
                "classes") in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rescale", "1/0"], "--rescale: '1/0' is not a number or a fraction"),
        (["--rescale", "abc"], "--rescale: 'abc' is not a number"),
    ],
)
def test_exit_2_bad_image_options(
    runner: CliRunner, images: dict[str, Path], options: list[str], message: str
) -> None:
    result = run(runner, "evaluate", images["rgb"], "--data", images["folder"], *options)
    assert result.exit_code == 2
    assert message in result.stderr


def test_exit_2_image_options_need_a_folder(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((3, 12, 10, 3), dtype=np.float32), y=np.array([0, 1, 2]))
    result = run(runner, "evaluate", images["rgb"], "--data", data, "--rescale", "0.5")
    assert result.exit_code == 2
    assert "apply to a folder of images" in result.stderr


def test_exit_2_tune_needs_data_or_predictions_not_both(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    members = [images["rgb"], images["gray"]]
    for extra in ([], ["--data", images["folder"], "--predictions", tmp_path / "p.npz"]):
        result = run(runner, "tune", *members, *extra, "-o", tmp_path / "e.keras")
        assert result.exit_code == 2
        assert "give either --data (a .npz file or a folder of images) or --predictions" in (
            result.stderr)
    result = run(runner, "tune", *members, "--predictions", tmp_path / "p.npz",
                 "--rescale", "1/255", "-o", tmp_path / "e.keras")
    assert result.exit_code == 2 and "--predictions were computed already" in result.stderr


def test_exit_2_model_without_a_fixed_image_size(
    runner: CliRunner, images: dict[str, Path], zoo: dict[str, Path]
) -> None:
    result = run(runner, "evaluate", zoo["cnn_any.keras"], "--data", images["folder"])
    assert result.exit_code == 2
    assert "cnn_any.keras: takes (None, None, None, 3), with no fixed image size" in (
        result.stderr)


def test_exit_5_saved_predictions_cannot_replace_an_input(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    result = run(runner, "evaluate", images["rgb"], "--data", images["folder"],
                 "--save-predictions", images["rgb"])
    assert result.exit_code == 5
    assert f"--save-predictions {images['rgb']}: is also the input" in result.stderr
    existing = tmp_path / "p.npz"
    existing.write_bytes(b"old")
    result = run(runner, "evaluate", images["rgb"], "--data", images["folder"],
                 "--save-predictions", existing)
    assert result.exit_code == 5 and existing.read_bytes() == b"old"


# --- streaming: memory does not grow with the folder ---

_PEAK = textwrap.dedent("""
    import os, resource, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from typer.testing import CliRunner
    from fuse_cli.cli import app
    result = CliRunner().invoke(app, ["evaluate", sys.argv[1], "--data", sys.argv[2],
                                      "--batch-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_memory_stays_flat_as_the_folder_doubles(tmp_path: Path) -> None:
    """Held in memory, 600 images of 224x224x3 float32 would take 360 MB, 300 take 180."""
    model = tmp_path / "m.keras"
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((224, 224, 3)), keras.layers.AveragePooling2D(8),
                      keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
                     ).save(model)
    gradient = np.linspace(0, 255, 224)[None, :, None] * np.ones((224, 1, 3))
    peaks = []
    for count in (300, 600):
        root = tmp_path / f"d{count}"
        for i in range(count):
            write_image(root / f"c{i % 2}" / f"{i:04d}.png", (gradient + i) % 256)
        child = subprocess.run([sys.executable, "-c", _PEAK, str(model), str(root)],
                               capture_output=True, text=True, check=True)
        peaks.append(int(child.stdout.split()[-1]) / 1024)  # MB (ru_maxrss is in KB)
    assert peaks[1] - peaks[0] < 60, peaks


def test_a_folder_tune_records_the_preprocessing_it_fed(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    """The rescale, the offset, and each member's size and colour mode are in the file's
    provenance (and `inspect` shows them): whoever runs the file must feed it so."""
    from helpers import provenance_of

    out = tmp_path / "tuned.keras"
    run(runner, "tune", images["rgb"], images["gray"], "--data", images["folder"], "--rescale",
        "1/255", "--offset", "-0.5", "--cv", "0", "-o", out, ok=True)
    recorded = provenance_of(out)["preprocessing"]
    assert recorded["rescale"] == 1 / 255 and recorded["offset"] == -0.5
    assert recorded["members"] == [
        {"file": "rgb.keras", "height": 12, "width": 10, "color_mode": "rgb"},
        {"file": "gray.keras", "height": 9, "width": 9, "color_mode": "grayscale"},
    ]
    shown = run(runner, "inspect", out, ok=True).stdout
    assert "images: pixels (0-255) x 0.00392157 + -0.5, resized bilinear: rgb.keras 12x10 " \
           "rgb, gray.keras 9x9 grayscale" in " ".join(shown.split())


def test_a_scale_mismatch_is_warned_once_with_the_fix(
    runner: CliRunner, tmp_path: Path
) -> None:
    """The sample CNNs were trained on digits in 0-1 and have no Rescaling layer: fed the
    PNGs' 0-255 pixels their log-loss is far worse (argmax barely moves), and fuse says
    so once, with the fix; with --rescale 1/255, no warning."""
    repo = Path(__file__).resolve().parent.parent
    digits = np.load(repo / "sample_models" / "digits_heldout.npz")
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(digits["x"][:200], digits["y"][:200], strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        keras.utils.save_img(root / str(label) / f"{i:04d}.png", image * 255, scale=False)
    members = [repo / "sample_models" / "cnn_a.keras", repo / "sample_models" / "cnn_b.h5"]
    raw = run(runner, "evaluate", *members, "--data", root, "--json", ok=True)
    warnings = [line for line in raw.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "cnn_a.keras, cnn_b.h5: fed the pixels as decoded (0-255)" in warnings[0]
    assert "pass --rescale 1/255" in warnings[0]
    scaled = run(runner, "evaluate", *members, "--data", root, "--rescale", "1/255", "--json",
                 ok=True)
    assert "warning:" not in scaled.stderr
    losses = [[m["log_loss"] for m in validated(r.stdout)["models"]] for r in (raw, scaled)]
    assert all(bad > 2 * good for bad, good in zip(*losses, strict=True))  # the mismatch is real
    # a model that scales itself, given --rescale on top: the other warning
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    own = tmp_path / "own.keras"
    model.save(own)
    twice = run(runner, "evaluate", own, "--data", root, "--rescale", "1/255", ok=True)
    assert "own.keras: rescales its pixels itself, and --rescale scales them again" in \
        " ".join(twice.stderr.split())


@pytest.mark.parametrize("interpolation", ["nearest", "bicubic"])
def test_keras_folder_options_mean_what_they_mean_in_keras(
    interpolation: str, runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    """--interpolation, --crop-to-aspect-ratio and --class-names feed each member exactly
    what keras.utils.image_dataset_from_directory feeds it with the same options; a hidden
    folder is no class, as in Keras."""
    root = tmp_path / "photos"
    shutil.copytree(images["folder"], root)
    (root / ".ipynb_checkpoints").mkdir()
    write_image(root / ".ipynb_checkpoints" / "x.png", np.zeros((5, 5, 3)))
    order = ["dogs", "birds", "cats"]  # not sorted: class 0 is dogs
    saved = tmp_path / "p.npz"
    run(runner, "evaluate", images["rgb"], images["gray"], "--data", root, "--interpolation",
        interpolation, "--crop-to-aspect-ratio", "--class-names", ",".join(order),
        "--save-predictions", saved, ok=True)
    arrays = np.load(saved)
    assert list(arrays["classes"]) == order
    for i, name in enumerate(("rgb", "gray")):
        model = keras.saving.load_model(images[name], compile=False)
        h, w, c = model.input_shape[1:]
        ds = keras.utils.image_dataset_from_directory(
            root, labels="inferred", label_mode="int", image_size=(h, w), shuffle=False,
            color_mode={1: "grayscale", 3: "rgb"}[c], batch_size=5, verbose=False,
            interpolation=interpolation, crop_to_aspect_ratio=True, class_names=order)
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
        np.testing.assert_array_equal(arrays["y"], np.concatenate(ys))
        np.testing.assert_allclose(arrays[f"p{i}"], model.predict(np.concatenate(xs), verbose=0),
                                   rtol=1e-5, atol=1e-6)


def test_class_names_that_are_not_folders_are_exit_2(
    runner: CliRunner, images: dict[str, Path]
) -> None:
    result = run(runner, "evaluate", images["rgb"], "--data", images["folder"], "--class-names",
                 "cats,wolves")
    assert result.exit_code == 2
    assert "--class-names cats,wolves: each must be one of its subfolders, once" in result.stderr


@pytest.mark.parametrize("subset", ["training", "validation"])
def test_validation_split_selects_the_files_keras_selects(
    subset: str, runner: CliRunner, images: dict[str, Path]
) -> None:
    from fuse_cli.evaluation import read_any
    from fuse_cli.images import ImageOptions

    options = ImageOptions(validation_split=0.25, subset=subset, seed=7)
    ours = read_any(images["folder"], options)
    ds = keras.utils.image_dataset_from_directory(
        images["folder"], image_size=(8, 8), validation_split=0.25, subset=subset, seed=7,
        batch_size=4, verbose=False)
    assert [os.path.relpath(f, images["folder"]) for f in ours.files] == \
        [os.path.relpath(f, images["folder"]) for f in ds.file_paths]
    result = run(runner, "evaluate", images["rgb"], "--data", images["folder"],
                 "--validation-split", "0.25", "--subset", subset, "--seed", "7", "--json",
                 ok=True)
    assert validated(result.stdout)["rows"] == len(ds.file_paths)
    missing = run(runner, "evaluate", images["rgb"], "--data", images["folder"],
                  "--validation-split", "0.25", "--subset", subset)
    assert missing.exit_code == 2 and "--validation-split needs --seed" in missing.stderr


def test_evaluate_scores_the_file_a_folder_tune_wrote_as_the_tune_did(
    runner: CliRunner, images: dict[str, Path], tmp_path: Path
) -> None:
    """Members of different sizes and channels get one input each; `fuse evaluate` feeds
    each input the folder's images at its own size, as the tune fed each member: the same
    numbers as the tune's."""
    out = tmp_path / "tuned.keras"
    tuned = validated(run(runner, "tune", images["rgb"], images["gray"], "--data",
                          images["folder"], "--cv", "0", "--rescale", "1/255", "-o", out,
                          "--json", ok=True).stdout)
    evaluated = validated(run(runner, "evaluate", out, "--data", images["folder"], "--rescale",
                              "1/255", "--json", ok=True).stdout)
    (model,) = evaluated["models"]
    assert evaluated["rows"] == tuned["rows"]
    assert model["accuracy"] == pytest.approx(tuned["fit"]["ensemble"]["accuracy"])
    assert model["log_loss"] == pytest.approx(tuned["fit"]["ensemble"]["log_loss"], rel=1e-5)
