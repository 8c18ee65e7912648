"""Builders of the round-3 hostile inputs (issue: hostile inputs, round 3), one per class.

Each writes one file or folder into `folder` and returns its path. They are the
project's own rebuilds of what an attacker tried; no third-party file is used.
`benchmarks/hostile_bounds.py` runs them one process each for peak memory and time.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
from hostile import good_keras, rewrite_archive, weights_with_link
from hostile2 import sprinkled


def vds_h5(folder: Path) -> Path:
    """A legacy `.h5` whose weights include a virtual dataset (refused, then exit cleanly)."""
    return weights_with_link("virtual_dataset")(folder, folder / "PWNED")


def vds_keras(folder: Path) -> Path:
    """A `.keras` whose `model.weights.h5` holds a virtual dataset reading another file."""
    base = good_keras(folder, "base.keras")
    secret = folder / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.arange(4, dtype=np.float32)
    with zipfile.ZipFile(base) as zf:
        (folder / "inner.h5").write_bytes(zf.read("model.weights.h5"))
    with h5py.File(folder / "inner.h5", "a") as f:
        layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(secret), "data", shape=(4,))
        f.create_virtual_dataset("leak", layout)
    return rewrite_archive(
        base, folder / "vds.keras",
        extra={"model.weights.h5": (folder / "inner.h5").read_bytes()},
        drop=("model.weights.h5",),
    )


def npy_bytes(shape: tuple[int, ...], dtype: str = "<f8", data: bytes = b"") -> bytes:
    """An `.npy` header declaring `shape`, followed by `data` (usually far less)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return out.getvalue() + data


def npz_without_suffix(folder: Path, rows: int = 10**12, name: str = "nosuffix.npz") -> Path:
    """An `.npz` whose array members are named `x` and `y`, not `x.npy`: numpy reads them
    as arrays all the same; `x` declares `rows` float64 rows and stores 16 bytes."""
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x", npy_bytes((rows, 5), data=b"\0" * 16))
        zf.writestr("y", npy_bytes((4,), "<i8", data=np.arange(4, dtype="<i8").tobytes()))
    return path


def npz_many_small_arrays(folder: Path, count: int = 18, name: str = "many.npz") -> Path:
    """Arrays that each hold what they declare (16 MiB, deflated about 300 to 1, below the
    zip-bomb ratio) and together declare more than the file's allowance: only the
    archive's total limit refuses them."""
    path = folder / name
    member = npy_bytes((1 << 21,), "<f8", data=sprinkled(16 * 1024**2))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("y.npy", npy_bytes((4,), "<i8", np.arange(4, dtype="<i8").tobytes()))
        for i in range(count):
            zf.writestr(f"x{i}.npy", member)
    return path


def h5_many_ghost_datasets(folder: Path, count: int = 6000) -> Path:
    """A legacy `.h5` model with many chunked datasets that store nothing: each within the
    per-dataset slack, together past the file's total declared-bytes budget."""
    path = good_keras(folder, "base.keras")
    import keras

    model = keras.saving.load_model(path)
    h5 = folder / "ghosts.h5"
    model.save(h5)
    with h5py.File(h5, "a") as f:
        group = f.create_group("model_weights/ghosts")
        for i in range(count):
            # 64 KiB each, stored nowhere: within the per-dataset slack
            group.create_dataset(f"g{i}", shape=(1 << 14,), dtype="f4", chunks=(1 << 12,))
    return h5


def png_bomb(folder: Path, name: str = "bomb.png", side: int = 10_000) -> Path:
    """A real PNG of a few hundred KB that decodes to `side` x `side` RGB pixels (300 MB,
    4.5 GB once resized in float32, at 10,000)."""
    row = b"\0" + b"\0" * (3 * side)
    compressor = zlib.compressobj(1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path = folder / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def webp_bomb_named_png(folder: Path, name: str = "photo.png", side: int = 16383) -> Path:
    """A lossless WebP header declaring `side` x `side` pixels, named `.png`."""
    bits = (side - 1) | ((side - 1) << 14)  # VP8L: 14-bit width-1, 14-bit height-1
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\0" * 16
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    path = folder / name
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def special_files_folder(folder: Path) -> Path:
    """An image folder whose class folders hold a FIFO, links to `/dev/zero` and outside the
    folder, and a class folder that is a link to `/usr`."""
    root = folder / "images"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    os.mkfifo(root / "cat" / "fifo.png")
    os.symlink("/dev/zero", root / "dog" / "zero.png")
    os.symlink("/usr", root / "system")
    return root


def functional_keras(folder: Path, name: str = "functional.keras") -> Path:
    """A small functional classifier (its config lists inbound nodes)."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(hidden)
    path = folder / name
    keras.Model(inputs, outputs, name="functional").save(path)
    return path


def numpy_argument_keras(folder: Path, dtype: str = "(30000,15000)f8") -> Path:
    """A `.keras` whose config passes a call argument serialized as a numpy value whose
    dtype declares a 3.6 GB subarray (`np.array(0, dtype)` allocates it while Keras
    deserializes the node, before any layer is called)."""
    base = functional_keras(folder)
    with zipfile.ZipFile(base) as zf:
        config = json.loads(zf.read("config.json"))
    value = {"class_name": "__numpy__", "config": {"value": 0, "dtype": dtype}}
    for layer in config["config"]["layers"]:
        for node in layer.get("inbound_nodes") or []:
            if isinstance(node, dict):
                node.setdefault("kwargs", {})["training"] = value
    return rewrite_archive(base, folder / "numpy_argument.keras", config=config)


def reversed_chain_keras(folder: Path, length: int = 2500) -> Path:
    """A functional config of `length` Activation layers in a chain, listed in reverse:
    Keras's loader would retry every pending layer on every pass (quadratic time)."""
    base = functional_keras(folder)
    with zipfile.ZipFile(base) as zf:
        config = json.loads(zf.read("config.json"))
    layers = config["config"]["layers"]
    template = next(layer for layer in layers if layer["name"] == "hidden")
    chain = []
    previous = "hidden"
    for i in range(length):
        node = json.loads(json.dumps(template["inbound_nodes"][0]))
        node["args"][0]["config"]["keras_history"] = [previous, 0, 0]
        chain.append({"module": "keras.layers", "class_name": "Activation",
                      "config": {"name": f"act_{i}", "activation": "relu", "trainable": True,
                                 "dtype": template["config"]["dtype"]},
                      "registered_name": None, "name": f"act_{i}", "inbound_nodes": [node]})
        previous = f"act_{i}"
    out = next(layer for layer in layers if layer["name"] == "out")
    out["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = [previous, 0, 0]
    position = layers.index(out)
    config["config"]["layers"] = layers[:position] + chain[::-1] + layers[position:]
    return rewrite_archive(base, folder / "reversed.keras", config=config)


def attention_keras(folder: Path, length: int = 4096) -> Path:
    """Self-attention over a `length`-long sequence: 8 x length^2 float32 scores a sample,
    held inside the layer (1 GB at 4096), never a layer output."""
    import keras

    inputs = keras.Input((length, 8))
    attended = keras.layers.MultiHeadAttention(num_heads=8, key_dim=4)(inputs, inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    outputs = keras.layers.Dense(3, activation="softmax")(pooled)
    path = folder / "attention.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def repeated_layer_keras(folder: Path, calls: int = 800, width: int = 1 << 19) -> Path:
    """One weightless layer called `calls` times on a 2 MB-a-sample tensor: 1.6 GB of
    outputs a sample, each kept by the eager check batch."""
    import keras

    inputs = keras.Input((width,))
    relu = keras.layers.ReLU()
    x = inputs
    for _ in range(calls):
        x = relu(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = folder / "repeated.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def upsampling_classifier_keras(folder: Path, factor: int = 256) -> Path:
    """An 8x8 image classifier whose first layer upsamples to 2048x2048 (16 MB a sample):
    a prediction pass of 256 rows would hold 4 GB."""
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.UpSampling2D(factor)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = folder / "upsampling.keras"
    keras.Model(inputs, outputs).save(path)
    return path
