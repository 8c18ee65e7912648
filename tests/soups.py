"""Soup members for the tests and the benchmark: real fine-tuning of one small CNN.

A starting point is trained on part of scikit-learn's bundled digits and saved; each
member loads it and trains on, with its own seed (shuffle order and dropout), as
fine-tuning runs do. As a control, `independent_members` trains each member from its own
random initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (8, 8, 1)
CLASSES = 10


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_held, y_held): digits scaled to [0, 1], split 70/30, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    found = load_digits()
    x = (found.images / 16.0).astype(np.float32).reshape(-1, *SHAPE)
    y = found.target.astype(np.int64)
    x_train, x_held, y_train, y_held = train_test_split(x, y, test_size=0.3, stratify=y,
                                                        random_state=0)
    return x_train, y_train, x_held, y_held


def cnn(seed: int, batchnorm: bool = True, width: int = 8) -> Any:
    """A small CNN: convolution, (BatchNormalization), ReLU, dropout, softmax."""
    import keras

    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input(SHAPE), keras.layers.Conv2D(width, 3, padding="same")]
    if batchnorm:
        # momentum 0.9: the moving statistics settle within a short run's few hundred steps
        layers.append(keras.layers.BatchNormalization(momentum=0.9))
    layers += [
        keras.layers.Activation("relu"),
        keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ]
    return keras.Sequential(layers, name="cnn")


def _train(model: Any, x: np.ndarray, y: np.ndarray, seed: int, epochs: int, rate: float) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(rate),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)


def fine_tuned_members(
    folder: Path, count: int, *, batchnorm: bool = True, start_epochs: int = 2,
    epochs: int = 2, rows: int | None = None,
) -> list[Path]:
    """`count` members fine-tuned from one saved start (seeds 1..count), as .keras files."""
    import keras

    x, y, _, _ = digits()
    x, y = (x[:rows], y[:rows]) if rows else (x, y)
    start = cnn(0, batchnorm)
    _train(start, x[: len(x) // 2], y[: len(y) // 2], 0, start_epochs, 3e-3)
    start_path = folder / "start.keras"
    start.save(start_path)
    paths = []
    for i in range(1, count + 1):
        member = keras.saving.load_model(start_path, compile=False)
        _train(member, x, y, i, epochs, 1e-3 * (1 + i % 3))
        path = folder / f"run{i}.keras"
        member.save(path)
        paths.append(path)
    return paths


def independent_members(
    folder: Path, count: int, *, batchnorm: bool = True, epochs: int = 4, rows: int | None = None
) -> list[Path]:
    """`count` members of the same architecture, each from its own random start."""
    x, y, _, _ = digits()
    x, y = (x[:rows], y[:rows]) if rows else (x, y)
    paths = []
    for i in range(1, count + 1):
        member = cnn(100 + i, batchnorm)
        _train(member, x, y, 100 + i, epochs, 3e-3)
        path = folder / f"indep{i}.keras"
        member.save(path)
        paths.append(path)
    return paths


def held_out(folder: Path) -> Path:
    """The held-out digits as an .npz data file (`x`, `y`)."""
    _, _, x, y = digits()
    path = folder / "held.npz"
    np.savez(path, x=x, y=y)
    return path
