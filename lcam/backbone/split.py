"""Splitting a classifier's graph with torch.fx at its target layer(s) into a body and a tail.

``features = body(x)``, ``logits = tail(features, *skips)``: the tail resumes the forward from
(possibly modified) target-layer features without re-running any layer before them. The split
keeps the model's in-place ops; residual adds run in place where that is safe.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from lcam.backbone.targets import CallSite, parse_target, replace_element

__all__ = ["Split", "TraceError", "add_into_first", "split_graph"]


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps the target layers as opaque calls."""

    def __init__(self, leaf_names: Sequence[str]) -> None:
        super().__init__()
        self.leaf_names = set(leaf_names)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaf_names or super().is_leaf_module(module, qualified_name)

    def trace(self, root: nn.Module, *args: object, **kwargs: object) -> fx.Graph:  # type: ignore[override]
        """Trace ``root``, then drop the proxies its modules cached during the trace."""
        try:
            return super().trace(root, *args, **kwargs)
        finally:
            _drop_cached_proxies(root)


def _drop_cached_proxies(model: nn.Module) -> None:
    """Remove the fx proxies a module cached in a dict attribute while it was traced.

    A module may cache a tensor computed in its eval-mode forward (timm LeViT's
    ``attention_bias_cache``); traced, it caches a proxy of that trace's graph, and the next
    trace would read a node of the old graph. The entry goes, as if never computed.
    """
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, dict) and not isinstance(value, nn.Module):
                for key in [k for k, v in value.items() if isinstance(v, fx.Proxy)]:
                    del value[key]


# Modules whose backward does not read their output: adding into that output in place is safe.
_OUTPUT_NOT_SAVED = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


def add_into_first(first: Tensor, second: Tensor) -> Tensor:
    """``first + second``, written into ``first`` when the sum has its shape and dtype.

    What a traced ``out += identity`` (a residual add) becomes in the split graphs: torch.fx
    records ``+=`` as an out-of-place add, which would allocate a new tensor per block.
    """
    if torch.jit.is_tracing():  # an exported graph (ONNX) gains nothing from it
        return first + second
    if first.shape == torch.broadcast_shapes(first.shape, second.shape) and (
        torch.result_type(first, second) == first.dtype
    ):
        return first.add_(second)
    return first + second


def _writes_into_input(model: nn.Module, node: fx.Node) -> bool:
    """Whether ``node`` may write into its first argument (an in-place op)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(model.get_submodule(str(node.target)), "inplace", False) is True
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    return node.op == "call_function" and node.target is add_into_first


def _protect(model: nn.Module, graph: fx.Graph, protected: Sequence[fx.Node]) -> None:
    """Give in-place consumers of ``protected`` nodes a copy to write into.

    The features, skips and layer outputs of a split are returned to the caller and reused (the
    tail may be re-run on them); an in-place op reading one of them would corrupt it. Every other
    in-place op stays in place, as in the model itself (the model is not modified).
    """
    for node in protected:
        for user in list(node.users):
            if user.args and user.args[0] is node and _writes_into_input(model, user):
                with graph.inserting_before(user):
                    copy = graph.call_method("clone", (node,))
                user.replace_input_with(node, copy)


def _residual_adds_in_place(model: nn.Module, graph: fx.Graph, protected: set[fx.Node]) -> None:
    """Turn ``a + b`` into :func:`add_into_first` where ``a`` is the fresh output of a
    convolution, linear or batch-norm layer that nothing else reads (a residual add)."""
    for node in graph.nodes:
        if node.op != "call_function" or node.target is not operator.add or node.kwargs:
            continue
        first = node.args[0]
        if (
            isinstance(first, fx.Node)
            and isinstance(node.args[1], fx.Node)
            and first.op == "call_module"
            and isinstance(model.get_submodule(str(first.target)), _OUTPUT_NOT_SAVED)
            and len(first.users) == 1
            and first not in protected
        ):
            node.target = add_into_first


class TraceError(ValueError):
    """torch.fx cannot trace the model (data-dependent control flow, unsupported ops)."""


def _target_node(nodes: list[fx.Node], layer: str, site: CallSite | None) -> fx.Node:
    """The graph node of a module, call-site or node-name target (see :mod:`.targets`)."""
    if site is None:
        named = [n for n in nodes if n.name == layer and n.op not in ("placeholder", "output")]
        if not named:
            raise ValueError(
                f"target layer {layer!r} is not a module of the model (nor a call site "
                "'module#k' or a torch.fx node name)"
            )
        return named[0]
    name, index = site
    calls = [n for n in nodes if n.op == "call_module" and n.target == name]
    if index is None and len(calls) == 1:
        return calls[0]
    if index is not None and index < len(calls):
        return calls[index]
    if index is None and len(calls) > 1:
        raise ValueError(
            f"target layer {layer!r} is called {len(calls)} times in the forward; name one call "
            f"as '{layer}#0' .. '{layer}#{len(calls) - 1}' (in the order they run)"
        )
    raise ValueError(f"target layer {layer!r} runs {len(calls)} times in the traced forward")


@dataclass
class Split:
    body: fx.GraphModule  # x -> (F, *skips, *layers)
    tail: fx.GraphModule  # (F, *skips) -> logits
    split_layer: str
    num_skips: int


def _select_element(graph: fx.Graph, node: fx.Node, index: int) -> fx.Node:
    """Make element ``index`` of the list/tuple ``node`` returns a node of its own, and route
    every later use of ``node`` through :func:`replace_element` with that node, so that the
    element can be split at and replaced while the other elements pass unchanged."""
    users = list(node.users)
    with graph.inserting_after(node):
        element = graph.call_function(operator.getitem, (node, index))
    with graph.inserting_after(element):
        rebuilt = graph.call_function(replace_element, (node, index, element))
    for user in users:
        user.replace_input_with(node, rebuilt)
    return element


def split_graph(
    model: nn.Module,
    target_layers: Sequence[str],
    elements: Sequence[int | None] | None = None,
) -> Split:
    """Split ``model`` after the deepest of ``target_layers`` (module, call-site or fx node
    names, see :mod:`lcam.backbone.targets`).

    ``body: x -> (F, *skips, *layers)`` and ``tail: (F, *skips) -> logits``, where ``F`` is the
    output of the target layer that runs last and ``layers`` the outputs of all target layers.
    ``elements[i]`` (when not ``None``) picks one element of layer ``i``'s list/tuple output.
    """
    modules = dict(model.named_modules())
    sites = [parse_target(layer, modules) for layer in target_layers]
    leaves = [site[0] for site in sites if site is not None]
    for outer in leaves:
        inner = [leaf for leaf in leaves if leaf.startswith(outer + ".")]
        if inner:
            raise ValueError(
                f"target layer {outer!r} contains target layer {inner[0]!r}: choose layers that "
                f"do not contain each other (e.g. the last child of {outer!r})"
            )
    try:
        graph = _LeafTracer(leaves).trace(model)
    except Exception as error:  # fx raises many types; name the cause and the way out
        raise TraceError(
            f"cannot split {type(model).__name__} at {list(target_layers)}: torch.fx could not "
            f"trace it ({type(error).__name__}: {error})"
        ) from error
    nodes = list(graph.nodes)
    layer_nodes = [
        _target_node(nodes, layer, site) for layer, site in zip(target_layers, sites, strict=True)
    ]
    for i, element in enumerate(elements or ()):
        if element is not None:
            layer_nodes[i] = _select_element(graph, layer_nodes[i], element)
    nodes = list(graph.nodes)
    split_index = max(range(len(layer_nodes)), key=lambda i: nodes.index(layer_nodes[i]))
    split_node = layer_nodes[split_index]

    def split_at_target() -> tuple[list[fx.Node], list[fx.Node], list[fx.Node]]:
        """Nodes up to the split node, nodes after it, and the skips (before, used after)."""
        nodes = list(graph.nodes)
        split = nodes.index(split_node) + 1
        before, after = nodes[:split], nodes[split:]
        users_after = set(after)
        skips = [n for n in before[:-1] if any(user in users_after for user in n.users)]
        return before, after, skips

    protected = {*layer_nodes, *split_at_target()[2]}
    _residual_adds_in_place(model, graph, protected)
    _protect(model, graph, list(protected))
    before, after, skips = split_at_target()

    body = fx.Graph()
    body_env: dict[fx.Node, fx.Node] = {}
    for node in before:
        body_env[node] = body.node_copy(node, lambda n: body_env[n])
    body.output(tuple(body_env[n] for n in (split_node, *skips, *layer_nodes)))

    tail = fx.Graph()
    tail_env: dict[fx.Node, fx.Node] = {split_node: tail.placeholder("features")}
    for index, node in enumerate(skips):
        tail_env[node] = tail.placeholder(f"skip_{index}")
    for node in after:
        tail_env[node] = tail.node_copy(node, lambda n: tail_env[n])
    return Split(
        fx.GraphModule(model, body),
        fx.GraphModule(model, tail),
        target_layers[split_index],
        len(skips),
    )
