r"""Sparseness (Chalasani et al., ICML 2020; Quantus ``Sparseness``): the Gini index of a map."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["Sparseness"]


class Sparseness(Metric):
    r"""Mean over maps of the Gini index of the map's absolute values. Higher is sparser
    (in [0, 1); a map concentrated on few pixels is easier to read).

    For each map ``S`` ``(h, w)``, with ``a = |S| / max |S| + 10^{-7}`` sorted increasingly
    (``n = hw`` values):

    .. math:: G = \frac{\sum_{i=1}^{n} (2i - n - 1)\, a_{(i)}}{n \sum_i a_i}

    Quantus's definition (its ``abs`` and ``normalise`` on). The index is computed at the map's
    own resolution (resizing changes it). States: the sum of indices and the map count.

    ``update(images, maps, targets=None)``: only ``maps`` ``(B, h, w)`` are used (the signature
    is that of the other map metrics). ``compute()`` returns the mean Gini index.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    gini_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("gini_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    @staticmethod
    def gini(maps: Tensor) -> Tensor:
        """``(B,)`` float64 Gini index of each ``(B, h, w)`` map (see the class docstring)."""
        values = maps.flatten(1).double().abs()
        values = values / values.amax(dim=1, keepdim=True).clamp_min(1e-300) + 1e-7
        values = values.sort(dim=1).values
        count = values.shape[1]
        rank = torch.arange(1, count + 1, dtype=values.dtype, device=values.device)
        return ((2 * rank - count - 1) * values).sum(dim=1) / (count * values.sum(dim=1))

    def update(self, images: Tensor | None, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate the Gini indices of ``maps`` ``(B, h, w)``."""
        if maps.dim() != 3:
            raise ValueError(f"maps must be (B, h, w), got {tuple(maps.shape)}")
        self.gini_sum += self.gini(maps).sum().to(self.gini_sum.device)
        self.count += len(maps)

    def compute(self) -> Tensor:
        """Mean Gini index over the maps seen."""
        return (self.gini_sum / self.count.clamp_min(1)).float()
