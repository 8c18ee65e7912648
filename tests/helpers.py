"""Builders and helpers the tests share: tiny real Keras models, prediction, loading.

Imported by the tests (`from helpers import ...`) and by conftest's fixtures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jsonschema  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import fuse_cli.layers  # noqa: E402, F401  (registers the combining layers)
from fuse_cli.schemas import load_schema  # noqa: E402

JSON_VALIDATOR = jsonschema.Draft202012Validator(load_schema())


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


def predict(model: keras.Model, x: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """A model's outputs as a list of numpy arrays."""
    result = model.predict(x, verbose=0)
    return list(result) if isinstance(result, list | tuple) else [result]


def load(path: Path) -> keras.Model:
    """Load a model file as a user would, in safe mode."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def validated(text: str) -> dict[str, Any]:
    """Parse one `--json` object and check it against the shipped schema (`fuse/1`)."""
    data = json.loads(text)
    JSON_VALIDATOR.validate(data)
    assert data["schema"] == "fuse/1"
    return data  # type: ignore[no-any-return]


def mobilenet_like(
    seed: int = 0, shape: tuple[int, int, int] = (16, 16, 3), *, trainable: bool = False
) -> keras.Model:
    """A small MobileNet-like backbone as a nested functional model (frozen by default).

    Conv, batch norm, depthwise conv and a residual add, like MobileNetV2's blocks;
    the same seed gives bit-identical weights (and other layer names) every call.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.Add()([x, y])
    model = keras.Model(inputs, x, name="mobilenet_like")
    model.trainable = trainable
    return model


def set_head_weights(layers: list[keras.layers.Layer], seed: int) -> None:
    """Give Dense head layers weights of their own, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        weights = layer.get_weights()
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in weights])


def tm_member(
    head_seed: int,
    *,
    backbone: keras.Model | None = None,
    classes: int = 3,
    name: str = "sequential",
) -> keras.Model:
    """A member shaped like a Teachable Machine export: a frozen nested backbone with
    pooling, then a Dense head of its own (Sequential of two nested Sequentials)."""
    backbone = backbone if backbone is not None else mobilenet_like(0)
    shape = tuple(backbone.inputs[0].shape[1:])
    features = keras.Sequential(
        [keras.Input(shape), backbone, keras.layers.GlobalAveragePooling2D()], name="features"
    )
    width = int(features.outputs[0].shape[-1])
    head = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(classes, activation="softmax", use_bias=False),
        ],
        name="head",
    )
    set_head_weights(head.layers, head_seed)
    return keras.Sequential([keras.Input(shape), features, head], name=name)


# --- what a merged file records and computes with (read without fuse's readers) -----------


def provenance_of(path: Path) -> dict[str, Any]:
    """The provenance record fuse keeps beside a merged model: the archive member
    `fuse.json`, or the HDF5 root attribute `fuse_provenance`."""
    import zipfile

    import h5py

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("fuse.json"))
    with h5py.File(path, "r") as f:
        value = f.attrs["fuse_provenance"]
    return json.loads(value.decode() if isinstance(value, bytes) else value)


def with_provenance(merged: Path, target: Path, **values: Any) -> Path:
    """Copy a merged `.keras`, setting keys of the provenance record beside it."""
    import zipfile

    record = {**provenance_of(merged), **values}
    with zipfile.ZipFile(merged) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "fuse.json":
                data = json.dumps(record).encode()
            dst.writestr(info, data)
    return target


def head_weights(model: keras.Model, name: str = "combine") -> list[float]:
    """The weights a merged model's head computes with: the `Rescaling` scales before a
    plain-Keras sum's `Add`, or a fuse layer's coefficients."""
    layer = model.get_layer(name)
    if hasattr(layer, "coefficients"):
        return list(layer.coefficients)
    weights, i = [], 0
    while any(inner.name == f"{name}_weight_{i}" for inner in model.layers):
        weights.append(float(model.get_layer(f"{name}_weight_{i}").scale))
        i += 1
    return weights
