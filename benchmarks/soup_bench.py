"""Soups against their members and the output ensemble, on data nobody chose anything on.

Two tasks from data a package ships (scikit-learn's digits, no download):
- `digits`: the 8x8 digits as an .npz file;
- `folder`: the same digits upscaled to 32x32 RGB PNG files in one folder per class,
  read by fuse's image-folder pipeline (`--rescale 1/255`).

Each task is split 60/20/20 (stratified, fixed seed) into train, validation and test.
For K = 2, 4, 8, two families of K members of one small CNN (with BatchNormalization):
- `fine-tuned`: one start trained on train, saved; each member loads it and trains on
  with its own seed and learning rate (the soup case);
- `independent` (the control): each member trained from its own random start.

Every choice is made on validation (best member; the output ensemble's weights, by
`fuse tune`'s 5-fold search; the greedy soup; BatchNormalization statistics are
re-estimated on train), and every score is on test. Predict time: the uniform soup
against the K-member output ensemble `fuse merge` writes, each `predict` on the test
inputs (repeated to 16,384 rows) after one untimed call, median of 5, in this one
process.

Usage: python benchmarks/soup_bench.py [--ks 2,4,8] [--quick] [--out benchmarks/soup_latest.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import soups  # noqa: E402


def split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    found = load_digits()
    x = (found.images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = found.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y,
                                                        random_state=0)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5,
                                                    stratify=y_rest, random_state=0)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def upscale(x: np.ndarray) -> np.ndarray:
    """8x8 grey in [0, 1] to 32x32 RGB uint8, as the PNG files hold them."""
    import tensorflow as tf

    big = tf.image.resize(x, (32, 32), method="bilinear").numpy()
    return np.round(np.repeat(big, 3, axis=-1) * 255).clip(0, 255).astype(np.uint8)


def write_folder(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    import tensorflow as tf

    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(tf.io.encode_png(image).numpy())


def members(folder: Path, family: str, k: int, shape: tuple[int, ...], train: Any,
            epochs: tuple[int, int]) -> list[Path]:
    """K members of one family, trained here (each a .keras file)."""
    import keras

    x, y = train
    soups.SHAPE = shape  # the CNN's input for this task
    paths = []
    if family == "fine-tuned":
        start = soups.cnn(0)
        soups._train(start, x, y, 0, epochs[0], 3e-3)
        start.save(folder / "start.keras")
    for i in range(1, k + 1):
        if family == "fine-tuned":
            model = keras.saving.load_model(folder / "start.keras", compile=False)
            soups._train(model, x, y, i, epochs[1], 1e-3 * (1 + i % 3))
        else:
            model = soups.cnn(100 + i)
            soups._train(model, x, y, 100 + i, sum(epochs), 3e-3)
        paths.append(folder / f"{family}_{i}.keras")
        model.save(paths[-1])
    return paths


def evaluate_family(paths: list[Path], data: dict[str, Any], images: Any) -> dict[str, Any]:
    """Scores on test of every candidate, choices on validation; predict times."""
    from fuse_cli import soup
    from fuse_cli.evaluation import model_outputs
    from fuse_cli.formats import load_model
    from fuse_cli.methods import method_for
    from fuse_cli.search import score
    from fuse_cli.selection import choose_weights
    from fuse_cli.soup_data import input_batches
    from fuse_cli.soup_tuning import greedy

    models = [load_model(p).model for p in paths]

    def outputs(model: Any, part: str) -> np.ndarray:
        return model_outputs(model, data[part], label="m", images=images)[0]

    val = [outputs(m, "val") for m in models]
    test = [outputs(m, "test") for m in models]
    y_val, y_test = data["y_val"], data["y_test"]
    work = soup.rebuild(models[0], "soup")
    floats = [soup.is_float(v) for v in soup.variables(work)]
    values = [soup.values(m) for m in models]
    cache: dict[tuple[tuple[int, ...], bool], tuple[np.ndarray, np.ndarray]] = {}

    def soup_outputs(ingredients: tuple[int, ...], bn: bool) -> tuple[np.ndarray, np.ndarray]:
        if (ingredients, bn) not in cache:
            weights = [1 / len(ingredients) if i in ingredients else 0 for i in range(len(models))]
            soup.assign(work, soup.soup_values(values, floats, weights))
            if bn:
                options = data["bn_options"]
                soup.recompute_batchnorm(work, input_batches(work, data["train"], "soup", options),
                                         lambda b: int(np.shape(b)[0]))
            cache[(ingredients, bn)] = (outputs(work, "val"), outputs(work, "test"))
        return cache[(ingredients, bn)]

    def loss(output: np.ndarray, y: np.ndarray) -> float:
        return float(score(output, y).log_loss)  # type: ignore[arg-type]

    rows: dict[str, Any] = {}
    best = min(range(len(models)), key=lambda i: loss(val[i], y_val))
    rows["best member"] = score(test[best], y_test)
    search = choose_weights(val, y_val, method=method_for("sum"), renormalize=False,
                            metric="log_loss", holdout=0.0, cv=5, say=lambda _m: None)
    weights = search.weights
    rows["output ensemble"] = score(sum(w * t for w, t in zip(weights, test, strict=True)),
                                    y_test)
    everyone = tuple(range(len(models)))
    for bn in (False, True):
        suffix = " + BN recompute" if bn else ""
        rows["uniform soup" + suffix] = score(soup_outputs(everyone, bn)[1], y_test)
        chosen = greedy(len(models), lambda i: loss(val[i], y_val),
                        lambda s, bn=bn: loss(soup_outputs(s, bn)[0], y_val))
        rows["greedy soup" + suffix] = score(
            test[chosen[0]] if len(chosen) == 1 else soup_outputs(chosen, bn)[1], y_test)
        rows[f"greedy kept{suffix}"] = len(chosen)
    rows["passes"] = int(sum(w > 0 for w in weights))
    return rows


def predict_times(paths: list[Path], x: np.ndarray, folder: Path) -> dict[str, float]:
    """Median wall and CPU seconds of `predict` on `x`: the uniform soup, the K-member
    ensemble (on 2 cores an ensemble's branches may run side by side: wall time can
    hide what CPU time shows)."""
    from fuse_cli.formats import load_model
    from fuse_cli.merge import MergeOptions, merge_files

    merge_files(paths, folder / "ensemble.keras", MergeOptions())
    merge_files(paths, folder / "soup.keras", MergeOptions(mode="soup"))  # type: ignore[arg-type]  # text is accepted
    times = {}
    for name in ("soup", "ensemble"):
        model = load_model(folder / f"{name}.keras").model
        model.predict(x, verbose=0, batch_size=256)
        wall, cpu = [], []
        for _ in range(5):
            began, began_cpu = time.perf_counter(), time.process_time()
            model.predict(x, verbose=0, batch_size=256)
            wall.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
        times[f"{name}_predict_s"] = statistics.median(wall)
        times[f"{name}_predict_cpu_s"] = statistics.median(cpu)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--quick", action="store_true", help="K=2 only, fewer epochs")
    parser.add_argument("--out", type=Path, default=HERE / "soup_latest.md")
    args = parser.parse_args()
    ks = [2] if args.quick else [int(k) for k in args.ks.split(",")]
    epochs = (2, 1) if args.quick else (6, 4)

    from fuse_cli.data import Dataset
    from fuse_cli.images import ImageOptions, read_image_folder
    from fuse_cli.planning import MergeOptions

    parts = split()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks: dict[str, dict[str, Any]] = {}
        npz = {}
        for part, (x, y) in parts.items():
            npz[part] = Dataset(root / f"{part}.npz", ["x"], [x], y)
        tasks["digits"] = {**npz, "y_val": parts["val"][1], "y_test": parts["test"][1],
                           "shape": (8, 8, 1), "train_arrays": parts["train"],
                           "images": None, "bn_options": MergeOptions(mode="soup")}  # type: ignore[arg-type]
        images = ImageOptions(rescale=1 / 255)
        folders = {}
        for part, (x, y) in parts.items():
            write_folder(root / "png" / part, upscale(x), y)
            folders[part] = read_image_folder(root / "png" / part)
        big_train = upscale(parts["train"][0]).astype(np.float32) / 255
        tasks["folder"] = {**folders, "y_val": folders["val"].labels,
                           "y_test": folders["test"].labels, "shape": (32, 32, 3),
                           "train_arrays": (big_train, parts["train"][1]),
                           "images": images,
                           "bn_options": MergeOptions(mode="soup", images=images)}  # type: ignore[arg-type]
        for task, data in tasks.items():
            for k in ks:
                for family in ("fine-tuned", "independent"):
                    folder = root / task / f"{family}{k}"
                    folder.mkdir(parents=True)
                    began = time.perf_counter()
                    paths = members(folder, family, k, data["shape"], data["train_arrays"],
                                    epochs)
                    rows = evaluate_family(paths, data, data["images"])
                    x_test = (parts["test"][0] if task == "digits" else
                              upscale(parts["test"][0]).astype(np.float32) / 255)
                    x_test = np.tile(x_test, (TIMED_ROWS // len(x_test) + 1, 1, 1, 1))
                    times = predict_times(paths, x_test, folder)
                    results.append({"task": task, "k": k, "family": family, **{
                        name: value.to_dict() if hasattr(value, "to_dict") else value
                        for name, value in rows.items()}, **times,
                        "seconds": time.perf_counter() - began})
                    print(json.dumps(results[-1]), flush=True)
    write(results, args.out)


TIMED_ROWS = 16384  # predict is timed on the test inputs repeated to this many rows
CANDIDATES = ("best member", "output ensemble", "uniform soup", "greedy soup",
              "uniform soup + BN recompute", "greedy soup + BN recompute")


def write(results: list[dict[str, Any]], out: Path) -> None:
    lines = ["| task | K | members | " + " | ".join(CANDIDATES)
             + " | soup / ensemble predict: CPU (wall) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in CANDIDATES) + " | --- |"]
    for r in results:
        cells = [f"{r[c]['accuracy']:.3f} / {r[c]['log_loss']:.3f}" for c in CANDIDATES]
        cpu = r["soup_predict_cpu_s"] / r["ensemble_predict_cpu_s"]
        wall = r["soup_predict_s"] / r["ensemble_predict_s"]
        lines.append(f"| {r['task']} | {r['k']} | {r['family']} | " + " | ".join(cells)
                     + f" | {cpu:.2f}x ({wall:.2f}x) |")
    text = ("Cells: test accuracy / test log-loss. Greedy soups kept "
            + ", ".join(f"{r['task']} K={r['k']} {r['family']}: {r['greedy kept']}"
                        f" ({r['greedy kept + BN recompute']} with BN)" for r in results)
            + ".\n\n" + "\n".join(lines) + "\n")
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
