"""fuse's own screen (`fuse_cli.formats.screening`), tested on its own, without Keras.

Keras's safe mode refuses most hostile files too, so a test through `fuse merge` cannot
tell fuse's refusal from Keras's. These tests call the screen directly on configs,
archives and HDF5 files built here with the standard library and h5py, and check that
the screen needs no Keras at all: its refusals do not depend on the installed Keras.
"""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fuse_cli.errors import ModelLoadError
from fuse_cli.formats.screening import (
    MAX_CONFIG_BYTES,
    check_config,
    check_hdf5,
    check_hdf5_links,
    check_keras_archive,
)

PATH = Path("model.keras")


def refusal(check: Any, *args: Any) -> str:
    """The message of the `ModelLoadError` that `check(*args)` raises."""
    with pytest.raises(ModelLoadError) as info:
        check(*args)
    assert info.value.exit_code == 3
    return str(info.value)


# --- configs ------------------------------------------------------------------------


def dense(activation: Any = "softmax", **extra: Any) -> dict[str, Any]:
    return {
        "module": "keras.layers",
        "class_name": "Dense",
        "config": {"name": "dense", "units": 3, "activation": activation, **extra},
        "registered_name": None,
    }


def functional(*layers: dict[str, Any], module: str = "keras") -> dict[str, Any]:
    """A Keras 3 model config as `config.json` holds it (only the parts the screen reads)."""
    return {
        "module": module,
        "class_name": "Functional",
        "config": {"name": "model", "layers": list(layers)},
        "registered_name": "Functional",
    }


FUSE_LAYER = {
    "module": "fuse_cli.layers",
    "class_name": "WeightedSum",
    "config": {"coefficients": [0.5, 0.5], "provenance": {"module": "os", "note": "data"}},
    "registered_name": "fuse>WeightedSum",
}
KERAS2_NESTED = {  # a Keras 2 file's nested model, as tf-keras 2.x wrote it
    "module": "tf_keras.src.engine.functional",
    "class_name": "Functional",
    "config": {"name": "inner", "layers": [dense()]},
    "registered_name": "Functional",
}


@pytest.mark.parametrize(
    "config",
    [
        functional(dense()),
        functional(dense({"module": "keras.activations", "class_name": "function",
                          "config": "relu", "registered_name": None})),
        functional(KERAS2_NESTED, FUSE_LAYER),
        # In a Keras 2 Lambda, `module` sits beside `function`, not `class_name`: the
        # module the lambda was written in, recorded as data.
        functional({"class_name": "Lambda", "config": {
            "name": "l", "function": ["4wEAAAAA", None, None], "function_type": "lambda",
            "module": "__main__"}}),
        [functional(dense())],  # lists are walked too
    ],
    ids=["plain", "activation_object", "keras2_and_fuse", "module_without_class", "list"],
)
def test_config_of_keras_layers_passes(config: Any) -> None:
    check_config(config, PATH)


@pytest.mark.parametrize(
    ("module", "class_name"),
    [
        ("os", "system"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("kerasx.layers", "Dense"),  # looks like Keras, is not
        ("keras_evil", "Dense"),
        ("fuse_cli", "errors"),  # fuse's own package, but not its layers
        ("fuse_cli.layersx", "WeightedSum"),
        ("tensorflow", "py_function"),
    ],
)
def test_config_naming_a_module_outside_keras_is_refused(module: str, class_name: str) -> None:
    payload = {"module": module, "class_name": class_name, "config": "touch /tmp/x",
               "registered_name": class_name}
    # Deep inside: a nested model's layer's activation.
    config = functional(functional(dense(payload)), dense())
    message = refusal(check_config, config, PATH)
    assert message == f"{PATH}: config refers to {module}.{class_name}, outside Keras: refused"


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        # CVE-2025-8747: keras.utils.get_file writes files.
        ({"module": "keras.utils", "class_name": "get_file", "config": {}}, "get_file"),
        # CVE-2025-9906: a config that turns safe mode off.
        ({"module": "keras.config", "class_name": "function",
          "config": "enable_unsafe_deserialization"}, "enable_unsafe_deserialization"),
        ({"module": "keras.src.saving", "class_name": "function",
          "registered_name": "keras.saving.load_model"}, "keras.saving.load_model"),
        ({"class_name": "function", "config": "keras.models>save_model"},
         "keras.models>save_model"),
        ({"module": "keras.layers", "class_name": "load_weights"}, "load_weights"),
    ],
    ids=["get_file", "enable_unsafe", "registered_load_model", "registry_save_model",
         "load_weights"],
)
def test_config_calling_a_loading_gadget_is_refused(entry: dict[str, Any], named: str) -> None:
    message = refusal(check_config, functional(dense(entry)), PATH)
    assert message == f"{PATH}: config calls {named!r}, a loading gadget: refused"


def test_gadget_names_are_whole_names_not_substrings() -> None:
    """`get_files` or `my_load_model_head` are ordinary names, not gadgets."""
    for name in ("get_files", "load_model_head", "preload_weights"):
        check_config(functional(dense(name=name), dense(activation=name)), PATH)


# --- .keras archives ------------------------------------------------------------------


def archive(*members: str | zipfile.ZipInfo, data: bytes = b"payload") -> zipfile.ZipFile:
    """An in-memory zip holding a `.keras` archive's two files, then `members` (each
    holding `data`), named exactly as given: `writestr` keeps a name as an attacker's
    writer would."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b"{}")
        zf.writestr("model.weights.h5", b"")
        for member in members:
            zf.writestr(member, data)
    return zipfile.ZipFile(buffer)


def test_archive_keras_writes_passes() -> None:
    check_keras_archive(archive("metadata.json", "assets/vocab.txt", "assets/a..b/c"), PATH)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("config.json", b"{}")
        zf.writestr("model.weights.npz", b"")  # the other weights format Keras writes
    check_keras_archive(zipfile.ZipFile(buffer), PATH)


@pytest.mark.parametrize(
    "name",
    ["../PWNED", "assets/../../PWNED", "assets/../config.json", "assets/x/../../../PWNED",
     "assets\\..\\..\\PWNED", "assets/.."],
)
def test_archive_member_climbing_out_is_refused(name: str) -> None:
    message = refusal(check_keras_archive, archive(name), PATH)
    assert message == f"{PATH}: archive member {name!r} climbs out with '..'"


@pytest.mark.parametrize("name", ["/tmp/PWNED", "\\PWNED", "C:/PWNED", "c:PWNED"])
def test_archive_member_with_an_absolute_path_is_refused(name: str) -> None:
    message = refusal(check_keras_archive, archive(name), PATH)
    assert message == f"{PATH}: archive member {name!r} has an absolute path"


def test_archive_member_that_is_a_link_is_refused() -> None:
    link = zipfile.ZipInfo("assets/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    message = refusal(check_keras_archive, archive(link), PATH)
    assert message == f"{PATH}: archive member 'assets/link' is a link"


@pytest.mark.parametrize("name", ["payload.py", "config.json.bak", "ASSETS/x", "model.weights"])
def test_archive_member_keras_does_not_write_is_refused(name: str) -> None:
    message = refusal(check_keras_archive, archive(name), PATH)
    assert message == f"{PATH}: unexpected archive member {name!r}"


def test_archive_declaring_too_much_is_refused() -> None:
    zf = archive()
    zf.getinfo("config.json").file_size = MAX_CONFIG_BYTES + 1
    message = refusal(check_keras_archive, zf, PATH)
    assert message == (
        f"{PATH}: archive member 'config.json' declares {MAX_CONFIG_BYTES + 1} bytes "
        f"(limit {MAX_CONFIG_BYTES})"
    )


def test_archive_member_that_expands_a_thousandfold_is_refused() -> None:
    zf = archive("assets/zeros", data=bytes(4 * 1024**2))  # deflates about 1000:1
    info = zf.getinfo("assets/zeros")
    assert info.file_size > 1000 * info.compress_size + 4096
    message = refusal(check_keras_archive, zf, PATH)
    assert message.startswith(f"{PATH}: archive member 'assets/zeros' expands ")
    assert message.endswith(": refused as a zip bomb")


@pytest.mark.parametrize(
    ("members", "missing"),
    [(["model.weights.h5"], "has no config.json"),
     (["config.json", "metadata.json"], "has no weights (model.weights.h5)")],
)
def test_archive_without_config_or_weights_is_refused(members: list[str], missing: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for member in members:
            zf.writestr(member, b"{}")
    message = refusal(check_keras_archive, zipfile.ZipFile(buffer), PATH)
    assert message == f"{PATH}: .keras archive {missing}"


# --- HDF5 -------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, Path]:
    """Another HDF5 file and a raw file that a hostile model could read."""
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.arange(4, dtype=np.float32)
    raw = tmp_path / "secret.bin"
    raw.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    return secret, raw


def model_h5(path: Path) -> h5py.File:
    """An HDF5 file laid out as a Keras `.h5` model: config, weights in nested groups."""
    f = h5py.File(path, "w")
    f.attrs["model_config"] = json.dumps(functional(dense())).encode()
    layer = f.create_group("model_weights/dense/dense")
    layer["kernel:0"] = np.zeros((4, 3), np.float32)
    layer["bias:0"] = np.zeros(3, np.float32)
    return f


def test_hdf5_model_without_links_passes(tmp_path: Path) -> None:
    with model_h5(tmp_path / "m.h5") as f:
        check_hdf5(f, PATH)


def test_hdf5_without_model_config_is_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["layer/kernel:0"] = np.zeros(3)
        message = refusal(check_hdf5, f, PATH)
    assert message == f"{PATH}: HDF5 file holds no model_config: weights only, or not a model"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("external_link", "HDF5 external link at /model_weights/dense/dense/leak is refused"),
        ("soft_link", "HDF5 soft link at /model_weights/dense/dense/leak is refused"),
        ("external_storage", "HDF5 dataset /model_weights/dense/dense/leak uses external storage"),
        ("virtual_dataset", "HDF5 dataset /model_weights/dense/dense/leak is a virtual dataset"),
    ],
)
def test_hdf5_reaching_outside_is_refused(
    kind: str, message: str, tmp_path: Path, outside: tuple[Path, Path]
) -> None:
    secret, raw = outside
    with model_h5(tmp_path / "m.h5") as f:
        group = f["model_weights/dense/dense"]
        if kind == "external_link":
            group["leak"] = h5py.ExternalLink(str(secret), "/data")
        elif kind == "soft_link":
            group["leak"] = h5py.SoftLink("/model_weights/dense/dense/bias:0")
        elif kind == "external_storage":
            group.create_dataset("leak", shape=(4,), dtype="f4", external=[(str(raw), 0, 16)])
        else:
            layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(secret), "data", shape=(4,))
            group.create_virtual_dataset("leak", layout)
        assert refusal(check_hdf5, f, PATH) == f"{PATH}: {message}"
        # The same check names where it looked, for a weights file inside an archive.
        inner = refusal(check_hdf5_links, f, PATH, "model.weights.h5:")
        assert inner == f"{PATH}: {message.replace(' /', ' model.weights.h5:/', 1)}"


# --- no Keras --------------------------------------------------------------------------


def test_the_screen_refuses_without_keras(tmp_path: Path, outside: tuple[Path, Path]) -> None:
    """In a fresh interpreter where Keras and TensorFlow cannot be imported at all, the
    screen still refuses each kind of hostile content, and never tried to import them."""
    secret, _ = outside
    with model_h5(tmp_path / "linked.h5") as f:
        f["model_weights/leak"] = h5py.ExternalLink(str(secret), "/data")
    script = textwrap.dedent(
        f"""
        import io, sys, zipfile
        from pathlib import Path

        tried = []

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("keras", "tensorflow", "tf_keras"):
                    tried.append(name)
                    raise ImportError("no " + name + " here")

        sys.meta_path.insert(0, Refuse())
        import h5py
        from fuse_cli.errors import ModelLoadError
        from fuse_cli.formats import screening

        def refused(check, *args):
            try:
                check(*args)
            except ModelLoadError as exc:
                return str(exc)
            return "accepted"

        config = {{"class_name": "Functional", "config": {{"layers": [
            {{"module": "os", "class_name": "system", "config": "touch x"}}]}}}}
        gadget = {{"class_name": "Dense", "config": {{"activation": {{
            "module": "keras.utils", "class_name": "get_file"}}}}}}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name in ("config.json", "model.weights.h5", "assets/../../x"):
                zf.writestr(name, b"{{}}")
        with h5py.File({str(tmp_path / "linked.h5")!r}, "r") as h5:
            linked = refused(screening.check_hdf5, h5, Path("m.h5"))
        for message in (
            refused(screening.check_config, config, Path("m.keras")),
            refused(screening.check_config, gadget, Path("m.keras")),
            refused(screening.check_keras_archive, zipfile.ZipFile(buffer), Path("m.keras")),
            linked,
        ):
            print(message)
        print(tried)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "m.keras: config refers to os.system, outside Keras: refused",
        "m.keras: config calls 'get_file', a loading gadget: refused",
        "m.keras: archive member 'assets/../../x' climbs out with '..'",
        "m.h5: HDF5 external link at /model_weights/leak is refused",
        "[]",
    ]


def test_the_screen_module_names_no_keras() -> None:
    """Not even a lazy import inside a function: the screen is standard library and h5py."""
    import fuse_cli.formats.screening as screening

    source = Path(screening.__file__).read_text()
    imports = re.findall(r"^\s*(?:import|from)\s+([\w.]+)", source, flags=re.MULTILINE)
    assert imports, "the pattern found no imports at all"
    assert [m for m in imports if m.split(".")[0] in ("keras", "tensorflow", "tf_keras")] == []
