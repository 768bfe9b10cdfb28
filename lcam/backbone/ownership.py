"""A frozen copy of a user's module that shares its weights: the user's module is not changed.

``FrozenBackbone(model)`` must put the network in eval mode and turn its parameters' gradients
off. Done in place, a peer library (or the user's own fine-tuning) that runs on the same module
afterwards would find no gradients and a module stuck in eval mode. :func:`frozen_copy` instead
copies the module *structure* and gives the copy new ``Parameter`` objects over the **same
storage** (``p.detach()``): no weight is copied, an in-place change of the user's weights
(``load_state_dict``, an optimizer step) is seen by the copy, and ``requires_grad``, ``training``
and hooks added later stay the user's own. Buffers are the user's tensors.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

__all__ = ["frozen_copy"]


def _cached_results(model: nn.Module) -> list[Tensor]:
    """Tensors computed in a forward that modules keep outside their parameters and buffers,
    directly or in a dict (timm LeViT's ``attention_bias_cache`` after a forward with
    gradients on)."""
    found: list[Tensor] = []
    for module in model.modules():
        for value in vars(module).values():
            items = value.values() if isinstance(value, dict) else (value,)
            found += [v for v in items if isinstance(v, Tensor) and v.grad_fn is not None]
    return found


def frozen_copy(model: nn.Module) -> nn.Module:
    """``model``'s structure over its own parameter storage, in eval mode, gradients off.

    Raises:
        TypeError: the module cannot be copied (``copy.deepcopy`` fails on something it holds,
            e.g. an open file); wrap a module that can be, or pass a model name.
    """
    memo: dict[int, object] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    for cached in _cached_results(model):
        memo[id(cached)] = cached.detach()  # deepcopy refuses tensors with a history
    try:
        copied = copy.deepcopy(model, memo)
    except Exception as error:  # deepcopy raises whatever the held object's __deepcopy__ does
        raise TypeError(
            f"FrozenBackbone copies the module structure of {type(model).__name__} (sharing its "
            f"weights) so that your module stays as it is, but it cannot be copied "
            f"({type(error).__name__}: {error})"
        ) from error
    return copied.eval().requires_grad_(False)
