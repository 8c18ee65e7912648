"""Property test: corrupting any bytes of a valid model never crashes fuse (exit 1)."""

from __future__ import annotations

from pathlib import Path

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
            assert isinstance(result, LoadedModel)

    check()
