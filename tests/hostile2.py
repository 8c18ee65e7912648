"""Builders for the second round of hostile files (issue 13): cost, crash and confusion.

Round one (`hostile.py`) made files that run code or read other files. These make
files that are cheap to store and dear to open: HDF5 link graphs whose paths grow
as 2^depth, configs and archives that declare far more than they store, values of
the wrong type where fuse reads its own provenance. Each builder writes one file
into `folder` and returns its path; sizes are parameters so the tests can build
small, real instances and the benchmark the full-size ones.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
from conftest import dense_classifier
from hostile import archive_config, good_keras, rewrite_archive

MiB = 1024**2


def sprinkled(size: int, every: int = 1024, seed: int = 0) -> bytes:
    """`size` zero bytes with one random byte every `every`: deflates about 300 to 1.

    Below the 1000-to-1 ratio that marks a zip bomb, so only the totals can refuse it.
    """
    data = np.zeros(size, dtype=np.uint8)
    data[::every] = np.random.default_rng(seed).integers(0, 256, len(data[::every]))
    return data.tobytes()


# --- 1. time: paths that multiply ---------------------------------------------


def hardlink_ladder(group: h5py.Group, depth: int) -> None:
    """Under `group`, a chain of `depth` groups, each hard-linked twice from its parent.

    The file holds `depth` groups but 2^depth paths: a walk by path never ends.
    """
    parent = group.create_group("ladder")
    for _ in range(depth):
        child = parent.create_group("a")
        parent["b"] = child  # a second hard link to the same group
        parent = child


def hardlink_cycle(group: h5py.Group) -> None:
    """A group that holds a hard link to its own parent: a walk by path never ends."""
    child = group.create_group("loop").create_group("inner")
    child["up"] = group["loop"]


def ladder_h5(folder: Path, depth: int = 40, name: str = "ladder.h5") -> Path:
    """A legacy `.h5` model whose weights group holds a 2^depth-path link ladder."""
    path = folder / name
    path.unlink(missing_ok=True)  # Keras appends to an existing .h5
    dense_classifier(5, seed=31, name="ladder").save(path)
    with h5py.File(path, "a") as f:
        hardlink_ladder(f["model_weights"], depth)
    return path


def cycle_h5(folder: Path) -> Path:
    """A legacy `.h5` model whose weights group links back to itself."""
    path = folder / "cycle.h5"
    path.unlink(missing_ok=True)  # Keras appends to an existing .h5
    dense_classifier(5, seed=32, name="cycle").save(path)
    with h5py.File(path, "a") as f:
        hardlink_cycle(f["model_weights"])
    return path


def with_weights_h5(base: Path, target: Path, change: Any) -> Path:
    """Copy a `.keras` archive, letting `change(h5py.File)` edit its weights file."""
    with zipfile.ZipFile(base) as zf:
        buffer = io.BytesIO(zf.read("model.weights.h5"))
    with h5py.File(buffer, "a") as f:
        change(f)
    return rewrite_archive(
        base, target, extra={"model.weights.h5": buffer.getvalue()}, drop=("model.weights.h5",)
    )


def ladder_keras(folder: Path, depth: int = 40) -> Path:
    """A `.keras` archive whose weights file holds a 2^depth-path link ladder."""
    base = good_keras(folder, "base.keras")
    return with_weights_h5(base, folder / "ladder.keras", lambda f: hardlink_ladder(f, depth))


# --- 2. memory: declared far beyond what is stored ------------------------------


def wide_dense_keras(folder: Path, units: int = 2**25) -> Path:
    """A `.keras` whose config gives its hidden Dense `units` units; the weights stay tiny.

    Keras allocates the Dense kernel (5 x units float32: 640 MiB for 2^25, plus the
    initializer's temporaries) before it finds that the next layer cannot take it.
    """
    base = good_keras(folder, "base.keras")
    config = archive_config(base)
    config["config"]["layers"][1]["config"]["units"] = units
    return rewrite_archive(base, folder / "wide.keras", config=config)


def ghost_dataset_h5(folder: Path, megabytes: int = 128, repeats: int = 8) -> Path:
    """A legacy `.h5` whose first layer lists one never-written chunked dataset `repeats` times.

    The dataset declares `megabytes` MiB and stores nothing: reading it yields the fill
    value, allocated in full, once per listing.
    """
    path = folder / "ghost.h5"
    path.unlink(missing_ok=True)  # Keras appends to an existing .h5
    dense_classifier(5, seed=33, name="ghost").save(path)
    count = megabytes * MiB // 4
    with h5py.File(path, "a") as f:
        first = f["model_weights"].attrs["layer_names"][0]
        layer = f["model_weights"][first.decode() if isinstance(first, bytes) else first]
        layer.create_dataset("phantom", shape=(count,), dtype="f4", chunks=(min(count, 1 << 18),))
        layer.attrs["weight_names"] = np.array(["phantom"] * repeats, dtype=object)
    return path


def npz_bools_keras(folder: Path, count: int = 128 * MiB) -> Path:
    """A `.keras` carrying `model.weights.npz` (a format Keras reads) of `count` booleans.

    Deflated, the mostly-false array stores in about count/300 bytes; Keras turns each
    array it reads into a Python list (`tolist()`): 8 bytes or more per element.
    """
    base = good_keras(folder, "base.keras")
    buffer = io.BytesIO()
    bools = np.frombuffer(sprinkled(count), dtype=np.uint8).astype(bool)
    # saving_lib asks the store for each layer's path (`layers/dense`: named by class)
    np.savez(buffer, **{"layers/dense": bools})
    target = folder / "npz_bools.keras"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename != "model.weights.h5":
                dst.writestr(info, src.read(info.filename))
        dst.writestr("model.weights.npz", buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return target


def long_input_keras(folder: Path, length: int = 2**27, name: str = "long.keras") -> Path:
    """A valid model on inputs of shape (length, 1): a few parameters, a huge sample."""
    keras.utils.set_random_seed(34)
    model = keras.Sequential(
        [
            keras.Input((length, 1)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="long",
    )
    path = folder / name
    model.save(path)
    return path


def upsampling_keras(folder: Path, factor: int = 2**19) -> Path:
    """A valid model with no weights to speak of whose layers blow a 4 KB sample up by
    `factor` (2 GiB a sample at 2^19): the check batch's activations, not its inputs."""
    keras.utils.set_random_seed(36)
    model = keras.Sequential(
        [
            keras.Input((1024, 1)),
            keras.layers.UpSampling1D(factor),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="upsampling",
    )
    path = folder / "upsampling.keras"
    model.save(path)
    return path


def padded_config_keras(folder: Path, megabytes: int = 57) -> Path:
    """A `.keras` whose config.json is padded to `megabytes` MB of small ints, deflated.

    JSON of small ints costs Python ~60 bytes of objects per 2 bytes of text.
    """
    base = good_keras(folder, "base.keras")
    config = archive_config(base)
    digits = np.frombuffer(sprinkled(megabytes * 10**6 // 2, every=64), dtype=np.uint8) % 10
    config["padding"] = digits.tolist()
    target = folder / "padded.keras"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename != "config.json":
                dst.writestr(info, src.read(info.filename))
        dst.writestr(
            "config.json", json.dumps(config, separators=(",", ":")).encode(),
            compress_type=zipfile.ZIP_DEFLATED,
        )
    return target


def zero_assets_keras(folder: Path, count: int = 6, megabytes: int = 250) -> Path:
    """A `.keras` carrying `count` assets of `megabytes` MiB of mostly zeros, deflated.

    Keras extracts assets to a temporary folder before it builds the model.
    """
    base = good_keras(folder, "base.keras")
    target = folder / "assets.keras"
    block = sprinkled(MiB)
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        for i in range(count):
            with dst.open(
                zipfile.ZipInfo(f"assets/blob{i}.bin"), "w", force_zip64=True
            ) as out:
                for _ in range(megabytes):
                    out.write(block)
    # ZipInfo defaults to stored: rewrite deflated (ZipFile.open ignores compress_type)
    deflated = folder / "assets_deflated.keras"
    with zipfile.ZipFile(target) as src, zipfile.ZipFile(
        deflated, "w", compression=zipfile.ZIP_DEFLATED
    ) as dst:
        for info in src.infolist():
            with src.open(info) as inp, dst.open(info.filename, "w", force_zip64=True) as out:
                while chunk := inp.read(MiB):
                    out.write(chunk)
    target.unlink()
    return deflated.rename(target)


# --- 3. exit 1 where the file is at fault ---------------------------------------


def deep_config_keras(folder: Path, depth: int = 100_000) -> Path:
    """A `.keras` whose config.json is `depth` nested lists: json.loads recurses."""
    base = good_keras(folder, "base.keras")
    target = folder / "deep.keras"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename != "config.json":
                dst.writestr(info, src.read(info.filename))
        dst.writestr("config.json", b"[" * depth + b"]" * depth)
    return target


def deep_layer_config_keras(folder: Path, depth: int = 900) -> Path:
    """A valid-JSON model config with a `depth`-deep dict as one initializer's seed."""
    base = good_keras(folder, "base.keras")
    config = archive_config(base)
    config["config"]["layers"][1]["config"]["kernel_initializer"] = {
        "module": "keras.initializers", "class_name": "GlorotUniform",
        "config": {"seed": "NESTED"}, "registered_name": None,
    }
    text = json.dumps(config).replace('"NESTED"', '{"a": ' * depth + "{}" + "}" * depth)
    target = folder / "deep_layer.keras"
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = text.encode() if info.filename == "config.json" else src.read(info.filename)
            dst.writestr(info, data)
    return target


def huge_input_keras(folder: Path, length: int = 10**12) -> Path:
    """A model on inputs of shape (10^12, 1): the check batch alone is 4 TB."""
    return long_input_keras(folder, length, name="huge_input.keras")


def string_input_keras(folder: Path) -> Path:
    """A valid model that takes strings (StringLookup), which fuse cannot sample."""
    keras.utils.set_random_seed(35)
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["cat", "dog"], output_mode="one_hot")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(ids))
    path = folder / "strings.keras"
    keras.Model(inputs, outputs, name="strings").save(path)
    return path


def npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """An `.npy` version 1.0 header for an array it does not hold."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text += " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def lying_npz(folder: Path, rows: int = 10**12, name: str = "lying.npz") -> Path:
    """A data `.npz` whose `x.npy` header declares `rows` float64 values and holds 8."""
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", npy_header((rows, 5)) + bytes(8))
        y = io.BytesIO()
        np.save(y, np.zeros(4, dtype=np.int64))
        zf.writestr("y.npy", y.getvalue())
    return path


# --- 4. inspect/verify trust what the file says ---------------------------------


def edit_provenance(merged: Path, target: Path, **values: Any) -> Path:
    """Copy a merged `.keras`, setting keys of the provenance record kept beside it."""
    from helpers import with_provenance

    return with_provenance(merged, target, **values)


def markup_version_keras(
    folder: Path, version: str = "[/x]", name: str = "markup.keras"
) -> Path:
    """A `.keras` whose metadata.json records a keras_version that is Rich markup."""
    base = good_keras(folder, "base.keras")
    target = folder / name
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["keras_version"] = version
                data = json.dumps(meta).encode()
            dst.writestr(info, data)
    return target


def control_name_keras(folder: Path, name: str = "evil\x1b]0;owned\x07\x1b[2J") -> Path:
    """A `.keras` whose model name carries terminal control sequences."""
    base = good_keras(folder, "base.keras")
    config = archive_config(base)
    config["config"]["name"] = name
    return rewrite_archive(base, folder / "control.keras", config=config)
