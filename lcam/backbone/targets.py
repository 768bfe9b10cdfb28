"""Target names: a module, one call of a module, or a torch.fx node.

A target layer is named by

- a module name (``"layer4"``) when that module runs exactly once in the forward;
- a *call site* ``"<module>#<k>"`` (``"_swish#1"``: the second call of ``_swish``) for a module
  that the forward calls more than once (EfficientNet-Lite applies its ``_swish`` to the stem
  and to the head); ``k`` counts from 0 in the order the calls run;
- a torch.fx node name (``"add_7"``, as in ``backbone.body_graph``) for an output that no
  module produces (a functional op); only where torch.fx can trace the model.

The forward hooks that capture or replace a call site's output live here too: the automatic
layer detection and the hook fallback for untraceable models both use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["CallSite", "call_hooks", "parse_target", "replace_element", "run_hooked"]

CallSite = tuple[str, int | None]  # (module name, call index or None for "the only call")


def parse_target(target: str, modules: dict[str, nn.Module]) -> CallSite | None:
    """``(module name, call index)`` of a module or call-site target; ``None`` for another name
    (possibly an fx node name)."""
    name, sep, index = target.rpartition("#")
    if sep and name in modules and name and index.isdigit():
        return name, int(index)
    if target in modules and target:
        return target, None
    return None


def replace_element(outputs: Any, index: int, value: Tensor) -> Any:
    """A list or tuple layer output with element ``index`` replaced by ``value`` (the other
    elements kept): how features of one branch of a multi-branch stage (HRNet, CrossViT) or
    the map of a stage that returns ``(x, cls_tokens)`` (PiT) go back into the network."""
    items = list(outputs)
    items[index] = value
    if isinstance(outputs, list):
        return items
    return type(outputs)(*items) if hasattr(outputs, "_fields") else tuple(items)


def site_name(module: str, index: int, calls: int) -> str:
    """The target name of call ``index`` of a module called ``calls`` times."""
    return module if calls == 1 else f"{module}#{index}"


@contextmanager
def call_hooks(
    model: nn.Module,
    sites: Sequence[CallSite],
    on_output: Callable[[int, Tensor], Tensor | None],
) -> Iterator[None]:
    """Forward hooks calling ``on_output(i, output)`` at each of ``sites`` (``i`` its index);
    a returned tensor replaces the output. Hooks are removed on exit."""
    counts: dict[str, int] = {}
    by_module: dict[str, list[tuple[int, int | None]]] = {}
    for position, (name, index) in enumerate(sites):
        by_module.setdefault(name, []).append((position, index))

    def hook_for(name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            call = counts.get(name, 0)
            counts[name] = call + 1
            replaced = None
            for position, index in by_module[name]:
                if index is None or index == call:
                    result = on_output(position, output if replaced is None else replaced)
                    replaced = result if result is not None else replaced
            return replaced

        return hook

    handles = [
        model.get_submodule(name).register_forward_hook(hook_for(name)) for name in by_module
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_hooked(model: nn.Module, example: Tensor, handles: Sequence[RemovableHandle]) -> Any:
    """``model(example)`` without gradients, then remove ``handles`` (hooks registered for
    this one forward), also when the forward raises."""
    try:
        with torch.no_grad():
            return model(example)
    finally:
        for handle in handles:
            handle.remove()
