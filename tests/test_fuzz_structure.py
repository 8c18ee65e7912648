"""Property test: structured mutations of real small models never crash fuse.

Raw byte flips (test_fuzz.py) mostly break checksums and zip headers. These mutate
what a file means: a config value replaced by a value of another type, size, shape or
nesting; an HDF5 weights file given hard-link ladders and loops, datasets of other
dtypes, shapes and chunking (written or not), and repeated weight names. Whatever
comes out, `fuse inspect`'s library call either describes the model or refuses it
with exit 3 (never another exception: exit 1), and the process's peak memory stays
within a bound (a mutated 15 KB file may not make fuse allocate gigabytes).
"""

from __future__ import annotations

import io
import json
import resource
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hostile2 import hardlink_cycle, hardlink_ladder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuse_cli.errors import FuseError, ModelLoadError
from fuse_cli.inspection import inspect_files

# Peak memory a whole run of mutated files may add to the process (the margin is 256 MiB
# of declared weights; TensorFlow's own first-use allocations come on top).
MAX_GROWTH_BYTES = 768 * 1024**2

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HUGE = st.sampled_from([2**25, 2**31, 2**40, 10**12, 2**63 - 1, -(2**31), -1, 0])
LEAVES = st.one_of(
    st.none(), st.booleans(), HUGE, st.integers(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12,
)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def config_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON value."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths.extend(config_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            paths.extend(config_paths(child, (*prefix, i)))
    return paths


def replace_at(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = replace_at(value[path[0]], path[1:], new)
    return value


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def write_archive(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, replace.get(info.filename, src.read(info.filename)))


def inspect_or_refuse(path: Path) -> str:
    """`"loaded"` or `"refused"` (exit 3); anything else fails the test."""
    try:
        report = inspect_files([path])
    except ModelLoadError as exc:
        assert str(path) in str(exc)
        assert len(str(exc).splitlines()) <= 2
        return "refused"
    except FuseError as exc:  # only exit 3 is the file's fault at inspect time
        pytest.fail(f"exit {exc.exit_code}: {exc}")
    assert len(report.models) == 1
    return "loaded"


def test_mutated_configs_load_or_fail_cleanly(
    zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    source = zoo["cnn_16.keras"]
    original = json.loads(zipfile.ZipFile(source).read("config.json"))
    paths = config_paths(original)
    folder = tmp_path_factory.mktemp("fuzz_config")
    start = peak_rss_bytes()

    @SETTINGS
    @given(
        where=st.integers(0, len(paths) - 1),
        value=VALUES,
        depth=st.sampled_from([0, 0, 0, 2, 200, 5000]),
    )
    def check(where: int, value: Any, depth: int) -> None:
        config = replace_at(json.loads(json.dumps(original)), paths[where], nested(value, depth))
        text = json.dumps(config) if depth < 500 else (
            json.dumps(replace_at(json.loads(json.dumps(original)), paths[where], "DEEP"))
            .replace('"DEEP"', "[" * depth + "]" * depth)
        )
        path = folder / "mutated.keras"
        write_archive(source, path, {"config.json": text.encode()})
        outcomes.append(inspect_or_refuse(path))

    outcomes: list[str] = []
    check()
    assert peak_rss_bytes() - start < MAX_GROWTH_BYTES
    assert {"loaded", "refused"} <= set(outcomes)  # the mutations reach both ends


LAYOUT = st.sampled_from(
    ["ladder", "cycle", "dtype", "shape", "unwritten", "chunked", "duplicate", "string"]
)


def mutate_weights(f: h5py.File, kind: str, depth: int, which: int) -> None:
    """One structural change to a weights file (a `.keras`'s or a legacy `.h5`'s)."""
    datasets: list[str] = []
    f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset)
                 else None)
    target = datasets[which % len(datasets)]
    shape, parent = f[target].shape, f[target].parent
    leaf = target.rsplit("/", 1)[-1]
    if kind == "ladder":
        hardlink_ladder(parent, depth)
    elif kind == "cycle":
        hardlink_cycle(parent)
    elif kind == "duplicate":
        group = next((g for g in (parent, parent.parent, parent.parent.parent)
                      if "weight_names" in g.attrs), f)
        names = list(group.attrs.get("weight_names", [leaf]))
        group.attrs["weight_names"] = np.array([*names, *names], dtype=object)
        return
    else:
        del parent[leaf]
        if kind == "dtype":
            parent.create_dataset(leaf, data=np.ones(shape, dtype=np.int8))
        elif kind == "shape":
            parent.create_dataset(leaf, data=np.ones((depth, *shape), dtype=np.float32))
        elif kind == "string":
            parent.create_dataset(leaf, data=np.array(["x"] * max(1, depth), dtype=object),
                                  dtype=h5py.string_dtype())
        elif kind == "unwritten":
            parent.create_dataset(leaf, shape=(2**24 * max(1, depth),), dtype="f4",
                                  chunks=(2**16,))
        else:  # chunked and compressed, the right values
            parent.create_dataset(leaf, data=np.zeros(shape, dtype=np.float32),
                                  chunks=True, compression="gzip")


@pytest.mark.parametrize("name", ["a.keras", "c.h5"])
def test_mutated_hdf5_layouts_load_or_fail_cleanly(
    name: str, zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    source = zoo[name]
    folder = tmp_path_factory.mktemp("fuzz_hdf5")
    start = peak_rss_bytes()

    @settings(SETTINGS, max_examples=25)
    @given(kind=LAYOUT, depth=st.integers(1, 40), which=st.integers(0, 50))
    def check(kind: str, depth: int, which: int) -> None:
        path = folder / name
        if name.endswith(".keras"):
            with zipfile.ZipFile(source) as zf:
                buffer = io.BytesIO(zf.read("model.weights.h5"))
            with h5py.File(buffer, "a") as f:
                mutate_weights(f, kind, depth, which)
            write_archive(source, path, {"model.weights.h5": buffer.getvalue()})
        else:
            path.write_bytes(source.read_bytes())
            with h5py.File(path, "a") as f:
                mutate_weights(f["model_weights"], kind, depth, which)  # type: ignore[arg-type]
        outcomes.append(inspect_or_refuse(path))

    outcomes: list[str] = []
    check()
    assert peak_rss_bytes() - start < MAX_GROWTH_BYTES
    assert {"loaded", "refused"} <= set(outcomes)  # the mutations reach both ends
