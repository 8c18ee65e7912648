"""The merge methods, by `--mode` name: the one registry (mergekit's habit).

Adding a method is one module with a `MergeMethod` subclass and one line here (and its
combining layer in `fuse_cli.layers`, and its name in `fuse_cli.choices.Mode`).
"""

from __future__ import annotations

from fuse_cli.choices import Mode
from fuse_cli.methods.base import MergeMethod, Transforms
from fuse_cli.methods.product import WeightedProductMethod
from fuse_cli.methods.soup import SoupMethod
from fuse_cli.methods.sum import WeightedSumMethod

METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (WeightedSumMethod(), WeightedProductMethod(), SoupMethod())
}

__all__ = ["METHODS", "MergeMethod", "Transforms", "method_for"]


def method_for(mode: Mode | str) -> MergeMethod:
    """The method for a `--mode` value (a `Mode` or its name)."""
    return METHODS[Mode(mode).value]
