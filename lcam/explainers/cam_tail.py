"""Does the network end in global average pooling and one linear layer? (CAM's condition.)

CAM weights the target-layer channels by the final linear layer's row of the class, which is
only Grad-CAM up to a constant when the layers after the target layer are exactly global average
pooling, optional flattening and one ``nn.Linear``. :func:`linear_after_global_pool` reads that
structure from the backbone's traced tail graph.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lcam.backbone import FrozenBackbone

__all__ = ["linear_after_global_pool"]

_FLATTENS = {torch.flatten, torch.squeeze, torch.reshape, "flatten", "view", "reshape", "squeeze"}
_GLOBAL_MEAN_DIMS = ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Short name of a tail operation for error messages (``AdaptiveAvgPool2d((7, 7))``)."""
    if node.op != "call_module":
        return getattr(node.target, "__name__", str(node.target))
    module = modules[str(node.target)]
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return f"{type(module).__name__}({module.output_size})"
    return type(module).__name__


def _step_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Kind of a tail operation: ``pool``, ``flatten``, ``linear``, ``identity`` or ``other``."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
            return "pool" if size in (1, (1, 1)) else "other"
        if isinstance(module, nn.Flatten):
            return "flatten"
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, (nn.Identity, nn.Dropout)):  # identities in eval mode
            return "identity"
        return "other"
    if node.op in ("call_function", "call_method"):
        if node.target in _FLATTENS:
            return "flatten"
        if node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            return "pool" if size in (1, (1, 1)) else "other"
        if node.target in (torch.mean, "mean"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if isinstance(dims, (tuple, list)) and set(dims) in _GLOBAL_MEAN_DIMS:
                return "pool"
    return "other"


def linear_after_global_pool(backbone: FrozenBackbone) -> str:
    """Name of the linear layer that directly follows global average pooling of the features.

    The tail (the layers after the target layer, as traced by ``torch.fx``) must consist of one
    global average pool (``AdaptiveAvgPool2d(1)``, ``adaptive_avg_pool2d(x, 1)`` or a mean over
    the spatial dimensions), optional flattening, and one ``nn.Linear`` giving the logits;
    eval-mode identities (``Dropout``, ``Identity``) are allowed anywhere.

    Raises:
        ValueError: naming the model and its tail when it has another structure, or when the
            model runs through the hook fallback (no traced tail to read).
    """
    graph = backbone.tail_graph
    if graph is None:
        raise ValueError(
            f"CAM reads the layers after the target layer from the torch.fx graph, and "
            f"torch.fx cannot trace {type(backbone.model).__name__} (hook fallback): its tail "
            "cannot be checked to be global average pooling and one linear layer. Use Grad-CAM "
            "instead."
        )
    modules = dict(backbone.model.named_modules())
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    chain: list[fx.Node] = []
    node = placeholders[0]
    problem = ""
    while not problem:
        users = list(node.users)
        if len(users) != 1:
            problem = f"an operation whose output is used {len(users)} times"
            break
        node = users[0]
        if node.op == "output":
            break
        chain.append(node)
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    kinds = [kind for kind in (_step_kind(n, modules) for n in chain) if kind != "identity"]
    if not problem and (len(calls) != len(chain) or any(p.users for p in placeholders[1:])):
        problem = "operations that do not act on the target-layer features alone"
    if not problem and (
        not kinds
        or kinds[0] != "pool"
        or kinds[-1] != "linear"
        or any(kind != "flatten" for kind in kinds[1:-1])
        or node.args[0] is not chain[-1]
    ):
        problem = " -> ".join(_describe(n, modules) for n in chain) or "no operation"
    if problem:
        raise ValueError(
            "CAM needs global average pooling followed by one linear layer after the target "
            f"layer; {type(backbone.model).__name__} has {problem} after "
            f"{backbone.target_layer!r}. Use Grad-CAM instead."
        )
    linear = next(n for n in reversed(chain) if _step_kind(n, modules) == "linear")
    return str(linear.target)
