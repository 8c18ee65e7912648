"""Property test: corrupting any bytes of a valid model never crashes fuse (exit 1), and
a corrupted file that fuse does load is the very model Keras loads from it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuse_cli.errors import ModelLoadError
from fuse_cli.formats import LoadedModel, load_model

# (offset fraction, new byte) pairs: where to flip and what to write
MUTATIONS = st.lists(
    st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(0, 255)),
    min_size=1,
    max_size=8,
)


def mutate(data: bytes, mutations: list[tuple[float, int]]) -> bytes:
    buffer = bytearray(data)
    for where, value in mutations:
        buffer[int(where * len(buffer))] = value
    return bytes(buffer)


X = np.random.default_rng(5).random((4, 5), dtype=np.float32)


def same_as_keras(loaded: LoadedModel, path: Path) -> None:
    """A mutated file that fuse loads is the model Keras itself loads from those bytes, in
    safe mode: same architecture, same predictions (NaN where Keras has NaN)."""
    expected = keras.saving.load_model(path, compile=False, safe_mode=True)
    assert loaded.path == path and loaded.format == ("h5" if path.suffix == ".h5" else "keras")
    data = path.read_bytes()
    assert (loaded.size, loaded.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert [type(layer).__name__ for layer in loaded.model.layers] == [
        type(layer).__name__ for layer in expected.layers
    ]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.model(X)), keras.ops.convert_to_numpy(expected(X))
    )


@pytest.mark.parametrize("name", ["a.keras", "c.h5"])
def test_mutated_bytes_load_or_fail_cleanly(
    name: str, zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    original = zoo[name].read_bytes()
    folder = tmp_path_factory.mktemp("fuzz")

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(mutations=MUTATIONS, truncate=st.booleans())
    def check(mutations: list[tuple[float, int]], truncate: bool) -> None:
        data = mutate(original, mutations)
        if truncate:
            data = data[: int(mutations[0][0] * len(data))]
        path = folder / name
        path.write_bytes(data)
        try:
            result = load_model(path)
        except ModelLoadError as exc:
            assert str(path) in str(exc)
            assert len(str(exc).splitlines()) <= 2
        else:
            same_as_keras(result, path)

    check()
