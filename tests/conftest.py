"""Shared fixtures: tiny real Keras models saved to real files in tmp_path.

Every model is built with a fixed seed so the files are the same on every run; they
are written once per session (`tmp_path_factory`), never to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
from helpers import dense_classifier, tiny_cnn, two_headed  # noqa: E402
from typer.testing import CliRunner  # noqa: E402


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
