"""Computing a shared backbone once: finding it in the members and rewiring the graph.

Transfer learning gives members that start with the same computation — a frozen
nested backbone, or the same first layers of a `Sequential` — under different heads.
When members are fed the same input, that computation is built once: a `shared_<j>`
sub-model feeds each member's remaining layers (`member_<i>_<name>`).

Members share a layer only when it is the same function, proven without running it:
the same class, the same config with layer names left aside (inner connections are
compared by position), the same call arguments, no asset files, and every variable
bit-identical — dtype, shape, trainable flag and bytes. Similar is not enough: one
weight one ulp apart, a different trainable flag or a different layer before it
keeps members apart. Only a chain from the input is shared: layers that each take
the previous layer's single output, which nothing else in the member uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.errors import VerificationError, first_line
from fuse_cli.formats._keras_private import (
    all_layers,
    inbound_nodes,
    keras_history,
    keras_mask,
)
from fuse_cli.provenance import check_sharing, sharing_record

if TYPE_CHECKING:
    import keras

SEGMENT_PREFIX = "shared_"


@dataclass(frozen=True)
class Stage:
    """One layer of a member's chain from its input, with what it computes on."""

    layer: Any
    node: Any
    input: Any  # the KerasTensor it takes
    output: Any  # the KerasTensor it gives
    fingerprint: str | None  # None: never shared


@dataclass
class Segment:
    """Stages `[start, end)` that `members` compute alike, built once as `name`."""

    name: str
    members: list[int]
    parent: int | None  # the segment it follows, or None when it starts at the input
    start: int
    end: int
    layers: list[str] = field(default_factory=list)
    layer_count: int = 0
    params: int = 0
    weight_bytes: int = 0


@dataclass
class SharingPlan:
    """What the members share, and each member's chain of stages."""

    chains: list[list[Stage]]
    segments: list[Segment]

    def path(self, member: int) -> list[int]:
        """The segments member `member` runs through, from the input on."""
        return [j for j, s in enumerate(self.segments) if member in s.members]

    def record(self) -> dict[str, Any]:
        """What the provenance and the report say about the sharing (JSON-ready)."""
        return sharing_record(self.segments, enabled=True)


# --- finding what is shared ----------------------------------------------------------


def find_sharing(models: Sequence[keras.Model]) -> SharingPlan:
    """Find the computation that members fed one input have in common.

    Args:
        models: The members, all to be fed the same input tensor.

    Returns:
        The plan; its `segments` is empty when nothing is shared.
    """
    chains = [_chain(m) for m in models]
    segments: list[Segment] = []
    _split(chains, list(range(len(models))), 0, None, segments)
    for segment in segments:
        _describe(segment, chains[segment.members[0]][segment.start : segment.end])
    return SharingPlan(chains=chains, segments=segments)


def _split(
    chains: list[list[Stage]],
    group: list[int],
    depth: int,
    parent: int | None,
    segments: list[Segment],
) -> None:
    """Members of `group` agree on stages `[0, depth)`; split them on the next ones."""
    buckets: dict[str, list[int]] = {}
    for i in group:
        if depth < len(chains[i]) and chains[i][depth].fingerprint is not None:
            buckets.setdefault(str(chains[i][depth].fingerprint), []).append(i)
    for members in buckets.values():
        first = members[0]
        members = [i for i in members if _same_stage(chains[first][depth], chains[i][depth])]
        if len(members) < 2:
            continue
        end = depth + 1
        while all(
            end < len(chains[i])
            and chains[i][end].fingerprint is not None
            and chains[i][end].fingerprint == chains[first][end].fingerprint
            and _same_stage(chains[first][end], chains[i][end])
            for i in members
        ):
            end += 1
        index = len(segments)
        segments.append(
            Segment(f"{SEGMENT_PREFIX}{index}", members, parent, depth, end)
        )
        _split(chains, members, end, index, segments)


def _describe(segment: Segment, stages: Sequence[Stage]) -> None:
    segment.layers = [f"{s.layer.name} ({type(s.layer).__name__})" for s in stages]
    segment.layer_count = sum(_count_layers(s.layer) for s in stages)
    segment.params = sum(int(np.prod(v.shape)) for s in stages for v in s.layer.weights)
    segment.weight_bytes = sum(_nbytes(v) for s in stages for v in s.layer.weights)


def _count_layers(layer: Any) -> int:
    """The computing layers in `layer`: nested models and input layers aside."""
    import keras

    return sum(
        not isinstance(inner, keras.Model | keras.layers.InputLayer)
        for inner in all_layers(layer)
    )


def _nbytes(variable: Any) -> int:
    return int(np.prod(variable.shape)) * np.dtype(str(variable.dtype)).itemsize


def _chain(model: keras.Model) -> list[Stage]:
    """The layers that form a chain from the model's single input.

    Each takes exactly the previous output (nothing else in the model uses it) and
    gives one tensor. The stage whose output is a model output is left out, so every
    member keeps at least one layer of its own.
    """
    if len(model.inputs) != 1:
        return []
    consumers = _consumers(model)
    if consumers is None:
        return []
    outputs = {id(t) for t in model.outputs}
    tensor = model.inputs[0]
    stages: list[Stage] = []
    while tensor is not None and id(tensor) not in outputs:
        users = consumers.get(id(tensor), [])
        if len(users) != 1:
            break
        node = users[0]
        args, kwargs = node.arguments.args, node.arguments.kwargs
        if (
            len(args) != 1
            or args[0] is not tensor
            or len(node.input_tensors) != 1
            or len(node.outputs) != 1
            or not _is_layer(node.operation)
        ):
            break
        out = node.outputs[0]
        # A mask travels beside the tensor, outside what a cut between sub-models passes.
        if id(out) in outputs or keras_mask(out) is not None:
            break
        stages.append(Stage(node.operation, node, tensor, out, _fingerprint(node, kwargs)))
        tensor = out
    return stages


def _consumers(model: keras.Model) -> dict[int, list[Any]] | None:
    """For each tensor of the model's graph (by id), the nodes that take it."""
    inputs = {id(t) for t in model.inputs}
    consumers: dict[int, list[Any]] = {}
    seen_nodes: set[int] = set()
    seen_tensors: set[int] = set()
    stack = list(model.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen_tensors or id(tensor) in inputs:
            continue
        seen_tensors.add(id(tensor))
        history = keras_history(tensor)
        if history is None:
            return None
        operation, node_index, _ = history
        nodes = inbound_nodes(operation)
        if node_index >= len(nodes):
            return None
        node = nodes[node_index]
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        for parent in node.input_tensors:
            consumers.setdefault(id(parent), []).append(node)
            stack.append(parent)
    return consumers


def _is_layer(operation: Any) -> bool:
    import keras

    return isinstance(operation, keras.layers.Layer) and not isinstance(
        operation, keras.layers.InputLayer
    )


def _fingerprint(node: Any, kwargs: dict[str, Any]) -> str | None:
    """A digest of everything the stage computes with, or None if it cannot be shared."""
    import keras

    layer = node.operation
    if any(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(kwargs)):
        return None
    # Lookup and vectorization layers keep their vocabulary in asset files, outside
    # the config and the weights compared here.
    if any(hasattr(inner, "save_assets") for inner in all_layers(layer)):
        return None
    try:
        config = layer.get_config()
        described = json.dumps(
            {
                "class": f"{type(layer).__module__}.{type(layer).__qualname__}",
                "config": canonical_config(config),
                "call": kwargs,
            },
            sort_keys=True,
            default=repr,
        )
    except (NotImplementedError, TypeError, ValueError):
        return None
    digest = hashlib.sha256(described.encode())
    for variable in layer.weights:
        digest.update(_variable_header(variable).encode())
        digest.update(_variable_bytes(variable))
    return digest.hexdigest()


def _variable_header(variable: Any) -> str:
    return json.dumps([str(variable.dtype), list(variable.shape), bool(variable.trainable)])


def _variable_bytes(variable: Any) -> bytes:
    import keras

    return np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)).tobytes()


def _same_stage(a: Stage, b: Stage) -> bool:
    """Compare two stages' variables directly, bit for bit (the digest said they match)."""
    if a.layer is b.layer:
        return True
    mine, theirs = a.layer.weights, b.layer.weights
    return len(mine) == len(theirs) and all(
        _variable_header(x) == _variable_header(y) and _variable_bytes(x) == _variable_bytes(y)
        for x, y in zip(mine, theirs, strict=True)
    )


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """A layer's config with layer names left out and inner references made positional.

    A nested model refers to its layers by name (`inbound_nodes`, `input_layers`,
    `output_layers`); these become `#<index>` in its own layer list, so two copies of
    one backbone built apart (`conv2d` vs `conv2d_7`) compare equal. Other values
    called `name` (a dtype policy's, say) are kept.
    """
    config = dict(config)
    config.pop("name", None)
    layers = config.get("layers")
    if isinstance(layers, list):
        scope = {}
        for i, entry in enumerate(layers):
            name = _entry_name(entry)
            if name is not None:
                scope[name] = f"#{i}"
        config["layers"] = [_canonical_entry(entry, scope) for entry in layers]
        for key in ("input_layers", "output_layers"):
            if key in config:
                config[key] = _map_references(config[key], scope)
    return config


def _entry_name(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    name = entry.get("name")
    if name is None and isinstance(entry.get("config"), dict):
        name = entry["config"].get("name")
    return name if isinstance(name, str) else None


def _canonical_entry(entry: Any, scope: dict[str, str]) -> Any:
    if not isinstance(entry, dict):
        return entry
    entry = dict(entry)
    entry.pop("name", None)
    if isinstance(entry.get("config"), dict):
        entry["config"] = canonical_config(entry["config"])
    if "inbound_nodes" in entry:
        entry["inbound_nodes"] = _map_history(entry["inbound_nodes"], scope)
    return entry


def _map_history(value: Any, scope: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _map_references(v, scope) if k == "keras_history" else _map_history(v, scope)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_map_history(v, scope) for v in value]
    return value


def _map_references(value: Any, scope: dict[str, str]) -> Any:
    """`[name, node, tensor]` (or a list of them) with the name made positional."""
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], str):
            return [scope.get(value[0], f"?{value[0]}"), *value[1:]]
        return [_map_references(v, scope) for v in value]
    return value


# --- building the shared graph -------------------------------------------------------


def call_members(
    models: Sequence[keras.Model], names: Sequence[str], inputs: Any, plan: SharingPlan
) -> list[Any]:
    """Call every member on the one shared input, computing shared segments once.

    Args:
        models: The members.
        names: The name each member's own part gets (`member_<i>_<name>`).
        inputs: The merged model's input tensor (or list of tensors).
        plan: From `find_sharing` on the same models.

    Returns:
        Each member's result on `inputs`, as its own call would return it.
    """
    import keras

    results: dict[int, Any] = {}
    for j, segment in enumerate(plan.segments):
        stages = plan.chains[segment.members[0]]
        start = stages[segment.start].input
        part = keras.Model(start, stages[segment.end - 1].output, name=segment.name)
        source = inputs if segment.parent is None else results[segment.parent]
        results[j] = part(source)
    outputs = []
    for i, model in enumerate(models):
        path = plan.path(i)
        if not path:
            outputs.append(model(inputs))
            continue
        cut = plan.chains[i][plan.segments[path[-1]].end - 1].output
        ends = model.outputs if len(model.outputs) > 1 else model.outputs[0]
        own = keras.Model(cut, ends, name=names[i])
        outputs.append(own(results[path[-1]]))
    return outputs


# --- reading it back from a merged model --------------------------------------------


def member_paths(model: keras.Model, members: Sequence[keras.Model]) -> list[list[Any]]:
    """For each embedded member, the sub-models its input flows through, in order.

    Read from the merged graph itself: from each member's call back to the input,
    collecting `shared_<j>` sub-models. An unshared member's path is just itself.
    """
    paths = []
    for member in members:
        path = [member]
        current = member
        while True:
            source = _single_source(model, current)
            if source is None or not source.name.startswith(SEGMENT_PREFIX):
                break
            path.insert(0, source)
            current = source
        paths.append(path)
    return paths


def _single_source(model: keras.Model, layer: Any) -> Any | None:
    """The sub-model whose output `layer` takes, when it is called once on one tensor.

    A model loaded from a file calls each of its sub-models exactly once.
    """
    import keras

    nodes = inbound_nodes(layer)
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    history = keras_history(nodes[0].input_tensors[0])
    if history is None or not isinstance(history[0], keras.Model):
        return None
    if not any(history[0] is inner for inner in model.layers):
        return None
    return history[0]


def member_functions(
    model: keras.Model, members: Sequence[keras.Model], what: str = "merged model"
) -> list[keras.Model]:
    """Each member as the merged graph computes it: its shared segments, then its own part.

    An unshared member is returned as it is embedded. A shared one becomes a model
    from the merged input through its `shared_<j>` segments and its own part.

    Raises:
        VerificationError: A member cannot be rebuilt from the parts the graph feeds
            it through (a file whose sub-models do not fit together).
    """
    import keras

    functions = []
    for i, (member, path) in enumerate(zip(members, member_paths(model, members), strict=True)):
        if len(path) == 1:
            functions.append(member)
            continue
        spec = model.inputs[0]
        try:
            start = keras.Input(shape=tuple(spec.shape)[1:], dtype=spec.dtype)
            tensor = start
            for part in path:
                tensor = part(tensor)
            functions.append(keras.Model(start, tensor, name=f"{member.name}_with_shared"))
        # Keras raises these for parts whose shapes or dtypes do not fit together.
        except (ValueError, TypeError) as exc:
            parts = " -> ".join(p.name for p in path)
            raise VerificationError(
                f"{what}: member {i} cannot be rebuilt from {parts}: {first_line(exc)}"
            ) from None
    return functions


def check_record(
    what: str, model: keras.Model, members: Sequence[keras.Model], raw: dict[str, Any]
) -> list[dict[str, Any]]:
    """Compare the sharing the provenance `raw` records with the graph's own structure.

    Returns:
        Each shared segment found in the graph: its name and the members it feeds.

    Raises:
        VerificationError: A member runs through other segments than the record says.
    """
    found: dict[str, list[int]] = {}
    for i, path in enumerate(member_paths(model, members)):
        for part in path[:-1]:
            found.setdefault(part.name, []).append(i)
    check_sharing(what, raw, found)
    return [{"name": name, "members": m} for name, m in sorted(found.items())]
