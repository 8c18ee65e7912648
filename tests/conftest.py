"""Shared fixtures: tiny real Keras models saved to real files in tmp_path.

Every model is built with a fixed seed so the files are the same on every run; they
are written once per session (`tmp_path_factory`), never to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import fuse_cli.layers  # noqa: E402, F401  (registers the combining layers)


def dense_classifier(
    width: int,
    classes: int = 10,
    *,
    name: str = "sequential",
    seed: int = 0,
    activation: str = "softmax",
) -> keras.Model:
    """A one-hidden-layer classifier on flat inputs."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(classes, activation=activation),
        ],
        name=name,
    )


def tiny_cnn(shape: tuple[int | None, ...], *, name: str, seed: int) -> keras.Model:
    """A small CNN; `None` spatial dims are allowed thanks to global pooling."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def two_headed(seed: int, name: str) -> keras.Model:
    """A model with two outputs: class probabilities and a sigmoid score."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    probs = keras.layers.Dense(4, activation="softmax", name="probs")(hidden)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    return keras.Model(inputs, [probs, score], name=name)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files by role; read-only for tests (copy before changing one)."""
    folder = tmp_path_factory.mktemp("zoo")
    models = {
        # Two different models that are both called "sequential".
        "a.keras": dense_classifier(5, seed=1),
        "b.keras": dense_classifier(5, seed=2),
        "c.h5": dense_classifier(5, seed=3, name="c"),
        "wide7.keras": dense_classifier(7, seed=4, name="wide7"),
        "classes5.keras": dense_classifier(5, classes=5, seed=5, name="classes5"),
        "linear.keras": dense_classifier(5, seed=6, name="linear", activation="linear"),
        "cnn_any.keras": tiny_cnn((None, None, 3), name="cnn_any", seed=7),
        "cnn_16.keras": tiny_cnn((16, 16, 3), name="cnn_16", seed=8),
        "heads_a.keras": two_headed(9, "heads_a"),
        "heads_b.keras": two_headed(10, "heads_b"),
    }
    paths = {}
    for file_name, model in models.items():
        path = folder / file_name
        model.save(path)
        paths[file_name] = path
    return paths


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def predict(model: keras.Model, x: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """A model's outputs as a list of numpy arrays."""
    result = model.predict(x, verbose=0)
    return list(result) if isinstance(result, list | tuple) else [result]


def load(path: Path) -> keras.Model:
    """Load a model file as a user would, in safe mode."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)
