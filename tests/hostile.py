"""Builders for the hostile and broken model files of the security tests.

Each builder writes one file into a folder and returns its path. Files that carry a
payload aim it at `marker`: if any code from the file ran, `marker` would exist.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
from helpers import dense_classifier

Builder = Callable[[Path, Path], Path]


def lambda_model(marker: Path) -> keras.Model:
    """A Sequential whose Lambda touches `marker` whenever its function runs.

    The marker path is baked into the function's bytecode as a constant, as an
    attacker's payload would be (CVE-2024-3660: marshal'ed bytecode in the config).
    """
    payload = eval(f"lambda x: __import__('pathlib').Path({str(marker)!r}).touch() or x")
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(10, activation="softmax"),
            keras.layers.Lambda(payload, name="payload"),
        ],
        name="trojan",
    )


def save_without_running(model: keras.Model, path: Path, marker: Path) -> Path:
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the payload once, here
    return path


def lambda_keras(folder: Path, marker: Path) -> Path:
    """CVE-2024-3660: Lambda bytecode in a `.keras` archive."""
    return save_without_running(lambda_model(marker), folder / "lambda.keras", marker)


def lambda_h5(folder: Path, marker: Path) -> Path:
    """CVE-2025-9905: Lambda in a legacy `.h5`, where safe mode was once not applied."""
    return save_without_running(lambda_model(marker), folder / "lambda.h5", marker)


def good_keras(folder: Path, name: str = "good.keras") -> Path:
    path = folder / name
    dense_classifier(5, seed=21, name="good").save(path)
    return path


def rewrite_archive(
    source: Path,
    target: Path,
    *,
    config: dict | None = None,
    extra: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Copy a `.keras` archive, replacing config.json, adding or dropping members."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info.filename)
            if info.filename == "config.json" and config is not None:
                data = json.dumps(config).encode()
            dst.writestr(info, data)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return target


def archive_config(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("config.json"))


def os_module_keras(folder: Path, marker: Path) -> Path:
    """CVE-2025-1550: a config entry that names a function of a non-Keras module.

    Keras before 3.9 imported whatever `module` a config named and resolved
    `class_name` in it; this entry resolves to `os.system` with a command that
    creates `marker`.
    """
    config = archive_config(good_keras(folder, "base.keras"))
    config["config"]["layers"][1]["config"]["activation"] = os_system_payload(marker)
    return rewrite_archive(folder / "base.keras", folder / "os_module.keras", config=config)


def os_system_payload(marker: Path) -> dict:
    return {
        "module": "os",
        "class_name": "system",
        "config": f"touch {marker}",
        "registered_name": "system",
    }


def get_file_keras(folder: Path, marker: Path) -> Path:
    """CVE-2025-8747: `keras.utils.get_file` as a loading gadget that writes files."""
    config = archive_config(good_keras(folder, "base.keras"))
    config["config"]["layers"][1]["config"]["activation"] = get_file_payload(marker)
    return rewrite_archive(folder / "base.keras", folder / "get_file.keras", config=config)


def get_file_payload(marker: Path) -> dict:
    return {
        "module": "keras.utils",
        "class_name": "get_file",
        "config": {
            "fname": marker.name,
            "origin": (marker.parent / "source.txt").as_uri(),
            "cache_dir": str(marker.parent),
            "cache_subdir": ".",
        },
        "registered_name": "get_file",
    }


def unsafe_toggle_keras(folder: Path, marker: Path) -> Path:
    """CVE-2025-9906: a config that turns safe mode off, then carries a Lambda."""
    lambda_keras(folder, marker)
    config = archive_config(folder / "lambda.keras")
    toggle = {
        "module": "keras.config",
        "class_name": "function",
        "config": "enable_unsafe_deserialization",
        "registered_name": "enable_unsafe_deserialization",
    }
    config["config"]["layers"][0]["config"]["activation"] = toggle
    return rewrite_archive(folder / "lambda.keras", folder / "toggle.keras", config=config)


def weights_with_link(kind: str) -> Builder:
    """CVE-2026-1669: HDF5 that reads another file: external link, storage, or VDS."""

    def build(folder: Path, marker: Path) -> Path:
        secret = folder / "secret.h5"
        with h5py.File(secret, "w") as f:
            f["data"] = np.arange(4, dtype=np.float32)
        raw = folder / "secret.bin"
        raw.write_bytes(np.arange(4, dtype=np.float32).tobytes())
        path = folder / f"{kind}.h5"
        dense_classifier(5, seed=22, name=kind).save(path)
        with h5py.File(path, "a") as f:
            add_outside_reference(f, kind, secret, raw)
        return path

    build.__name__ = f"hdf5_{kind}"
    return build


def add_outside_reference(group: h5py.Group, kind: str, secret: Path, raw: Path) -> None:
    if kind == "external_link":
        group["model_weights/leak"] = h5py.ExternalLink(str(secret), "/data")
    elif kind == "external_storage":
        group.create_dataset(
            "model_weights/leak", shape=(4,), dtype="f4", external=[(str(raw), 0, 16)]
        )
    else:
        layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(secret), "data", shape=(4,))
        group.create_virtual_dataset("model_weights/leak", layout)


def keras_inner_external_link(folder: Path, marker: Path) -> Path:
    """CVE-2026-1669 inside a `.keras`: the archive's weights file links outside."""
    base = good_keras(folder, "base.keras")
    secret = folder / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.arange(4, dtype=np.float32)
    with zipfile.ZipFile(base) as zf:
        (folder / "inner.h5").write_bytes(zf.read("model.weights.h5"))
    with h5py.File(folder / "inner.h5", "a") as f:
        f["leak"] = h5py.ExternalLink(str(secret), "/data")
    return rewrite_archive(
        base,
        folder / "inner_link.keras",
        extra={"model.weights.h5": (folder / "inner.h5").read_bytes()},
        drop=("model.weights.h5",),
    )


def zip_slip(name: str) -> Builder:
    """CVE-2026-12479: an archive member whose name climbs out of the extraction folder."""

    def build(folder: Path, marker: Path) -> Path:
        base = good_keras(folder, "base.keras")
        member = name.replace("MARKER", marker.name)
        return rewrite_archive(base, folder / "slip.keras", extra={member: b"payload"})

    build.__name__ = f"zip_slip_{name.split('/')[0] or 'absolute'}"
    return build


def zip_symlink(folder: Path, marker: Path) -> Path:
    """An archive member that is a symbolic link (to the marker's path)."""
    base = good_keras(folder, "base.keras")
    target = folder / "link.keras"
    rewrite_archive(base, target)
    with zipfile.ZipFile(target, "a") as zf:
        info = zipfile.ZipInfo("assets/link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, str(marker))
    return target


def huge_declared_size(folder: Path, marker: Path) -> Path:
    """CVE-2026-0897: config.json declares 4 GB in the central directory."""
    base = good_keras(folder, "base.keras")
    data = bytearray(base.read_bytes())
    entry = data.find(b"PK\x01\x02")
    while entry != -1:
        name_len = struct.unpack_from("<H", data, entry + 28)[0]
        name = bytes(data[entry + 46 : entry + 46 + name_len])
        if name == b"config.json":
            struct.pack_into("<I", data, entry + 24, 0xFFFFFFF0)  # uncompressed size
            break
        entry = data.find(b"PK\x01\x02", entry + 4)
    path = folder / "huge.keras"
    path.write_bytes(bytes(data))
    return path


HOSTILE: list[Builder] = [
    lambda_keras,
    lambda_h5,
    os_module_keras,
    get_file_keras,
    unsafe_toggle_keras,
    weights_with_link("external_link"),
    weights_with_link("external_storage"),
    weights_with_link("virtual_dataset"),
    keras_inner_external_link,
    zip_slip("../MARKER"),
    zip_slip("assets/../../MARKER"),
    zip_slip("/tmp/MARKER"),
    zip_symlink,
    huge_declared_size,
]


# --- broken, not hostile ---------------------------------------------------------


def empty(folder: Path) -> Path:
    path = folder / "empty.keras"
    path.write_bytes(b"")
    return path


def random_bytes(folder: Path) -> Path:
    path = folder / "random.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def truncated_keras(folder: Path) -> Path:
    data = good_keras(folder, "base.keras").read_bytes()
    path = folder / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_h5(folder: Path) -> Path:
    path = folder / "base.h5"
    dense_classifier(5, seed=23, name="base").save(path)
    data = path.read_bytes()
    target = folder / "truncated.h5"
    target.write_bytes(data[: len(data) // 2])
    return target


def missing_weights(folder: Path) -> Path:
    base = good_keras(folder, "base.keras")
    return rewrite_archive(base, folder / "no_weights.keras", drop=("model.weights.h5",))


def missing_config(folder: Path) -> Path:
    base = good_keras(folder, "base.keras")
    return rewrite_archive(base, folder / "no_config.keras", drop=("config.json",))


def weights_only_h5(folder: Path) -> Path:
    path = folder / "only.weights.h5"
    dense_classifier(5, seed=24, name="w").save_weights(path)
    return path


def numpy_archive(folder: Path) -> Path:
    path = folder / "data.keras"
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros(3))
    return path


def layer_not_model(folder: Path) -> Path:
    base = good_keras(folder, "base.keras")
    layer = archive_config(base)["config"]["layers"][1]
    return rewrite_archive(base, folder / "layer.keras", config=layer)


def text_named_h5(folder: Path) -> Path:
    path = folder / "notes.h5"
    path.write_text("just some notes\n")
    return path


def copy_to(source: Path, folder: Path, name: str) -> Path:
    target = folder / name
    shutil.copy(source, target)
    return target


BROKEN: list[Callable[[Path], Path]] = [
    empty,
    random_bytes,
    truncated_keras,
    truncated_h5,
    missing_weights,
    missing_config,
    weights_only_h5,
    numpy_archive,
    layer_not_model,
    text_named_h5,
]
