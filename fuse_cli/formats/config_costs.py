"""Costs a model config can declare without storing them, refused before Keras builds.

A file costs what it stores (DESIGN §4). Two costs hide in a config's structure rather
than in its weights:

- **Values Keras builds while deserializing.** A call argument serialized as
  `{"class_name": "__numpy__", "config": {"value": ..., "dtype": ...}}` is rebuilt with
  `np.array(value, dtype)`; a dtype with a subarray shape (`"(30000,15000)f8"`) makes
  that one scalar 3.6 GB. Only plain numeric dtypes are accepted.
- **Time Keras spends ordering a graph.** Keras's functional loader walks the listed
  layers again and again until every call can be made; a config listed out of order
  (10^4 layers in reverse) costs a pass per layer, quadratic time. The passes are
  simulated here on the names alone and refused past `MAX_NODE_ATTEMPTS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuse_cli.errors import ModelLoadError

# Plain numeric dtypes, by name or by numpy's code (`<f4`): no subarrays, records or objects.
_PLAIN_DTYPE = re.compile(
    r"^(bool|u?int(8|16|32|64)|float(16|32|64)|bfloat16|complex(64|128)|"
    r"[<>|=]?[biuf][1248]|[<>|=]?c(8|16)|[<>|=]?b1)$"
)
_BUILT_VALUES = frozenset({"__numpy__", "__tensor__"})
# Node calls Keras's functional loader may attempt (~3 us each): real configs listed in
# order take one pass (attempts = nodes); 2M attempts are a few seconds.
MAX_NODE_ATTEMPTS = 2_000_000
_FUNCTIONAL = frozenset({"Functional", "Model"})


def check_config_costs(config: Any, path: Path) -> None:
    """Refuse built values of non-plain dtypes and functional graphs listed so far out of
    order that Keras would take quadratic time to load them.

    Raises:
        ModelLoadError: Naming what and why.
    """
    for node in _dicts(config):
        if node.get("class_name") in _BUILT_VALUES:
            inner = node.get("config")
            dtype = inner.get("dtype") if isinstance(inner, dict) else None
            if dtype is not None and not (isinstance(dtype, str) and _PLAIN_DTYPE.match(dtype)):
                raise ModelLoadError(
                    f"{path}: config builds a {node['class_name']} value of dtype "
                    f"{str(dtype)[:80]!r}: only plain numeric dtypes are read: refused"
                )
        if node.get("class_name") in _FUNCTIONAL and isinstance(node.get("config"), dict):
            layers = node["config"].get("layers")
            if isinstance(layers, list):
                _check_order(layers, path)


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_order(layers: list[Any], path: Path) -> None:
    """Simulate Keras's passes over a functional config's layers (`functional_from_config`):
    each pass tries, in list order, every node whose layer is not done; a node can be made
    once the nodes it takes are."""
    pending: list[tuple[str, list[list[tuple[str, int]]]]] = []
    made: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            return
        name = layer.get("name") if isinstance(layer.get("name"), str) else None
        name = name or (layer.get("config") or {}).get("name")
        nodes = layer.get("inbound_nodes")
        if not isinstance(name, str) or not isinstance(nodes, list):
            return  # not a form this simulation reads; Keras decides
        if not nodes:
            made[name] = 1  # an input layer makes its own node
            continue
        pending.append((name, [sorted(set(_references(node))) for node in nodes]))
    attempts = 0
    while pending:
        progressed = False
        waiting = []
        for name, nodes in pending:
            done = 0
            for needs in nodes:
                attempts += 1
                if any(made.get(source, 0) <= index for source, index in needs):
                    break
                done += 1
                made[name] = made.get(name, 0) + 1
            if attempts > MAX_NODE_ATTEMPTS:
                raise ModelLoadError(
                    f"{path}: its config lists {len(layers):,} layers so far out of order "
                    f"that Keras would try more than {MAX_NODE_ATTEMPTS:,} layer calls to "
                    "rebuild the graph (quadratic time): refused; save the model again "
                    "with Keras, which lists layers in order"
                )
            progressed = progressed or done > 0
            if done < len(nodes):
                waiting.append((name, nodes[done:]))
        if not progressed:
            return  # a loop or a dangling reference: Keras refuses it itself
        pending = waiting


def _references(node: Any) -> Iterator[tuple[str, int]]:
    """The `(layer, node index)` pairs a node takes, in Keras 3's form
    (`{"keras_history": [layer, node, tensor]}`) or Keras 2's (`[layer, node, tensor, {}]`)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            history = item.get("keras_history")
            if isinstance(history, list) and len(history) >= 2 and isinstance(history[0], str):
                yield history[0], int(history[1]) if isinstance(history[1], int) else 0
                continue
            stack.extend(item.values())
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int) \
                    and isinstance(item[2], int):
                yield item[0], item[1]
                continue
            stack.extend(item)
