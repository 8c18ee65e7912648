"""Walking a legacy `model_config`: the helpers every legacy rule and refusal uses.

A config is decoded JSON (`Config`); these functions only read and edit that data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Config = dict[str, Any]
Rule = Callable[[Config], bool]

_MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})



def objects(node: Any) -> Iterator[Config]:
    """Yield every serialized object (a dict with `class_name` and `config`), depth first.

    This reaches layers inside Sequential and Functional models, inside wrappers such as
    Bidirectional and TimeDistributed, and also initializers and other nested objects,
    which the rules skip by class name.
    """
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and "config" in node:
            yield node
        for value in node.values():
            yield from objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects(value)


def layers_of(model_config: Any) -> list[Config] | None:
    """The `layers` list of a Sequential/Functional config body, or None."""
    if isinstance(model_config, dict) and isinstance(model_config.get("layers"), list):
        return model_config["layers"]
    return None


def drop_keys(config: Any, *keys: str) -> bool:
    """Remove `keys` from a layer config dict; whether any was there."""
    if not isinstance(config, dict):
        return False
    found = [key for key in keys if key in config]
    for key in found:
        del config[key]
    return bool(found)


def drop_if_equal(config: Any, key: str, value: Any) -> bool:
    """Remove `key` from a layer config dict when it holds exactly `value` (same type)."""
    if not isinstance(config, dict) or key not in config:
        return False
    stored = config[key]
    if type(stored) is not type(value) or stored != value:
        return False
    del config[key]
    return True


def layer_entries(config: Config) -> Iterator[Config]:
    """Every layer entry of every model (Sequential, Functional) in the config."""
    for obj in list(objects(config)):
        if obj["class_name"] in _MODEL_CLASSES:
            yield from (e for e in layers_of(obj["config"]) or [] if isinstance(e, dict))
