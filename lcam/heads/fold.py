"""Eval-time folding of a head branch's batch normalisation into the convolution before it.

In eval mode a ``BatchNorm2d`` with running statistics is a fixed per-channel affine map
``x * scale + shift``, so ``BN(conv(F))`` is one convolution with rescaled weights and a bias:
the same function, without BN's separate memory-bound pass over the features. A head branch folds
at inference (``explain()``, ``class_maps()``) and keeps the unfolded layers for training, so
checkpoints and training are unchanged.

The folded weights are a function of the parameters and buffers only: :class:`FoldCache`
computes them once and again only when one of those tensors changed (an optimiser step, a
``load_state_dict``, a move to another device), since recomputing them per call (``C x C``
elementwise work, 4M numbers on ResNet-50's ``layer4``) would cost about 1 % of a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["FoldCache", "can_fold", "norm_affine"]

T = TypeVar("T")


def can_fold(norm: nn.BatchNorm2d) -> bool:
    """Whether ``norm`` is a fixed affine map now: eval mode with running statistics."""
    return not norm.training and norm.running_mean is not None and norm.running_var is not None


def norm_affine(norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode ``norm`` as ``(scale, shift)``, each ``(C,)``: ``norm(x) = x * scale + shift``
    per channel."""
    assert norm.running_mean is not None and norm.running_var is not None
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.affine:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.affine:
        shift = shift + norm.bias
    return scale, shift


class FoldCache(Generic[T]):
    """A value computed from some tensors, recomputed only when one of them changed.

    A tensor counts as unchanged while it is the same object with the same version counter
    (every in-place write, e.g. an optimiser step or ``copy_`` in ``load_state_dict``, bumps it).
    With gradients enabled the value is always recomputed: a cached one would carry no graph.
    """

    def __init__(self) -> None:
        self._tensors: tuple[Tensor, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._value: T | None = None

    def get(self, tensors: Sequence[Tensor], compute: Callable[[], T]) -> T:
        """``compute()``, or its cached value when none of ``tensors`` changed since."""
        if torch.is_grad_enabled():
            return compute()
        versions = tuple(t._version for t in tensors)
        same = len(tensors) == len(self._tensors) and all(
            a is b for a, b in zip(tensors, self._tensors, strict=True)
        )
        if self._value is None or not same or versions != self._versions:
            self._value = compute()
            self._tensors, self._versions = tuple(tensors), versions
        return self._value
