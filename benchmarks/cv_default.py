"""How should `fuse tune` pick weights on small data? The measurement behind `--cv`'s default.

On the sample digits (540 held-out rows the sample CNNs never trained on), many times
over: split the rows at random (stratified) into a tuning part and a test part, let
each method choose weights from the tuning part only, and score those weights on the
test part. The method whose weights score best on rows it never saw is the default.

Methods:
- `split 0.3`: the single split (fit on 70% of the tuning part), fuse's old default.
- `all rows`: fit on every tuning row (`--holdout 0`, and what any K-fold search
  that averages held-out scores at fixed weights picks: the same rows, the same sums).
- `cv K (mean)`: fit on each K-1 folds, average the K weight vectors.

Usage: python benchmarks/cv_default.py [--repeats 200] [--tune-rows 270]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def member_predictions() -> tuple[list[np.ndarray], np.ndarray]:
    import keras

    with np.load(ROOT / "sample_models" / "digits_heldout.npz") as d:
        x, y = d["x"], d["y"]
    outputs = []
    for name in ("cnn_a.keras", "cnn_b.h5"):
        model = keras.saving.load_model(ROOT / "sample_models" / name, compile=False)
        outputs.append(np.asarray(model.predict(x, verbose=0), dtype=np.float32))
    return outputs, y.astype(np.int64)


def main() -> None:
    from fuse_cli.choices import Mode
    from fuse_cli.data import split_rows, stratified_folds
    from fuse_cli.search import Ensembler, grid_search

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--tune-rows", type=int, default=270)
    args = parser.parse_args()
    outputs, y = member_predictions()

    def fit(rows: np.ndarray) -> float:
        e = Ensembler([o[rows] for o in outputs], y[rows], Mode.SUM)
        return grid_search(e, "log_loss").weights[0]

    def cv_mean(rows: np.ndarray, k: int) -> float:
        folds = stratified_folds(y[rows], k)
        return float(np.mean([fit(np.delete(rows, f)) for f in folds]))

    def test_loss(w: float, rows: np.ndarray) -> float:
        p = w * outputs[0][rows].astype(np.float64) + (1 - w) * outputs[1][rows]
        q = p[np.arange(len(rows)), y[rows]] / p.sum(axis=1)
        return float(np.mean(-np.log(np.clip(q, 1e-7, 1 - 1e-7))))

    everything = np.arange(len(y))
    fit_part, held = split_rows(y, 0.3)
    print(f"all {len(y)} rows: single split (fit {len(fit_part)}) picks {fit(fit_part):.2f}; "
          f"held-out optimum {fit(held):.2f}; all rows {fit(everything):.2f}; "
          + "; ".join(f"cv {k} mean {cv_mean(everything, k):.2f}" for k in (3, 5, 10)))

    methods = {
        "split 0.3": lambda rows: fit(rows[split_rows(y[rows], 0.3)[0]]),
        "all rows": fit,
        **{f"cv {k} (mean)": (lambda rows, k=k: cv_mean(rows, k)) for k in (3, 5, 10)},
    }
    losses: dict[str, list[float]] = {name: [] for name in [*methods, "test optimum"]}
    weights: dict[str, list[float]] = {name: [] for name in losses}
    for r in range(args.repeats):
        tune, test = split_rows(y, 1 - args.tune_rows / len(y), seed=1000 + r)
        for name, method in methods.items():
            w = method(tune)
            weights[name].append(w)
            losses[name].append(test_loss(w, test))
        w = fit(test)
        weights["test optimum"].append(w)
        losses["test optimum"].append(test_loss(w, test))
    base = np.array(losses["split 0.3"])
    print(f"\n{args.repeats} random splits: {args.tune_rows} rows to tune on, "
          f"{len(y) - args.tune_rows} to test (log-loss of the chosen weights on the test rows)")
    print(f"{'method':<16} {'mean w':>7} {'sd w':>6} {'test log-loss':>14} {'vs split':>9} "
          f"{'wins':>5}")
    for name in losses:
        loss = np.array(losses[name])
        print(f"{name:<16} {np.mean(weights[name]):7.3f} {np.std(weights[name]):6.3f} "
              f"{loss.mean():14.4f} {np.mean(loss - base):+9.4f} "
              f"{np.mean(loss < base - 1e-12):5.0%}")
    for k in (3, 5, 10):
        diff = np.array(losses[f"cv {k} (mean)"]) - np.array(losses["all rows"])
        error = diff.std() / np.sqrt(len(diff))
        print(f"cv {k} (mean) - all rows: {diff.mean():+.5f} +- {error:.5f}"
              " (paired, mean +- standard error)")


if __name__ == "__main__":
    main()
