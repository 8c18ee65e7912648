"""Train the two sample CNNs and write the held-out split they are evaluated on.

Run from the repository root:

    python sample_models/make_samples.py [--out DIR]

Uses scikit-learn's bundled 8x8 digits (no download). Writes ``cnn_a.keras``,
``cnn_b.h5`` (legacy HDF5) and ``digits_heldout.npz`` next to this script, or to
``--out``. Seeded and run with deterministic ops, so two runs give the same weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split

if TYPE_CHECKING:
    import keras

SEED = 0
NUM_CLASSES = 10
INPUT_SHAPE = (8, 8, 1)
BATCH_SIZE = 32


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load sklearn's digits, scale them to [0, 1] and split them 70/30, stratified.

    Returns:
        ``(x_train, x_heldout, y_train, y_heldout)``; images are float32 of shape
        ``(N, 8, 8, 1)``, labels int64 class indices of shape ``(N,)``.
    """
    digits = load_digits()
    # Pixels are integers 0..16 in this dataset.
    x = (digits.images / 16.0).astype(np.float32).reshape(-1, *INPUT_SHAPE)
    y = digits.target.astype(np.int64)
    x_train, x_heldout, y_train, y_heldout = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=SEED
    )
    return x_train, x_heldout, y_train, y_heldout


def build_cnn_a() -> keras.Sequential:
    """Build model A: two convolutions, flatten, softmax.

    Returns:
        An uncompiled ``keras.Sequential`` named ``cnn_a``.
    """
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="cnn_a",
    )


def build_cnn_b() -> keras.Sequential:
    """Build model B: convolution, max-pool, convolution, global average pool, softmax.

    Returns:
        An uncompiled ``keras.Sequential`` named ``cnn_b``.
    """
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="cnn_b",
    )


def train(model: keras.Sequential, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """Compile and fit ``model`` in place on integer labels.

    Args:
        model: The model to train.
        x: Training images, ``(N, 8, 8, 1)`` float32.
        y: Training labels, ``(N,)`` int64.
        epochs: Passes over the training set.
    """
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=0)


def save_and_check(model: keras.Sequential, path: Path, x: np.ndarray) -> np.ndarray:
    """Save ``model`` to ``path``, reload it safely and check it predicts the same.

    Args:
        model: The trained model.
        path: Target file; ``.keras`` for the native format, ``.h5`` for legacy HDF5.
        x: A batch to compare predictions on.

    Returns:
        The predictions of the model before saving.

    Raises:
        AssertionError: If the reloaded model's predictions differ.
    """
    import keras

    before = model.predict(x, verbose=0)
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), before, rtol=1e-6, atol=1e-7)
    return before


def main(argv: list[str] | None = None) -> None:
    """Train both sample models, save them and the held-out split, print a report.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write the models and data to (default: this script's folder)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()

    x_train, x_heldout, y_train, y_heldout = load_split()
    np.savez_compressed(out / "digits_heldout.npz", x=x_heldout, y=y_heldout)
    print(f"digits: {len(x_train)} train, {len(x_heldout)} held out -> {out}")

    # B converges more slowly (global average pooling), hence more epochs.
    for build, epochs, filename in (
        (build_cnn_a, 30, "cnn_a.keras"),
        (build_cnn_b, 40, "cnn_b.h5"),
    ):
        # Re-seed per model so each one is reproducible on its own.
        keras.utils.set_random_seed(SEED)
        model = build()
        train(model, x_train, y_train, epochs)
        probs = save_and_check(model, out / filename, x_heldout)
        accuracy = accuracy_score(y_heldout, probs.argmax(axis=-1))
        loss = log_loss(y_heldout, probs, labels=list(range(NUM_CLASSES)))
        print(
            f"{filename}: {model.count_params()} params, "
            f"held-out accuracy {accuracy:.4f}, log-loss {loss:.4f}"
        )


if __name__ == "__main__":
    main()
