r"""TAME at one forward's cost: bottleneck branches and, for many classes, a low-rank fuse.

:class:`~lcam.heads.tame.TAMEHead`'s branches ``ReLU(BN(W_i F_i) + F_i)`` cost ``C_i^2`` MACs
per position: on ResNet-50 (``C_i`` = 512, 1024, 2048 at 28, 14, 7 px) 0.6 GMAC per 224 px
image, 15 % of its 4.1 GMAC forward, and all ``K`` maps add ``K sum_i C_i h_i w_i`` (0.7 GMAC
at ``K = 1000``). :class:`LiteTAMEHead` keeps TAME's structure and training, and changes two
factors:

- each branch is a bottleneck ``ReLU(BN(U_i V_i F_i) + F_i)`` with ``V_i`` ``(r_i, C_i)``,
  ``U_i`` ``(C_i, r_i)``, ``r_i = min(C_i, max(min_branch_rank, C_i // branch_reduction))``:
  ``2 r_i C_i`` MACs per position (ResNet-50: 32/64/128, 0.08 GMAC);
- when ``K > fuse_rank``, the fuse is low rank, ``W = U V`` with ``V`` ``(r, sum C_i)`` and
  ``U`` ``(K, r)``: all ``K`` maps are ``b + U (sum_i up(V_i G_i))``, mixed down to ``r``
  channels at each branch's resolution, upsampled at ``r`` channels and widened to ``K`` once at
  the finest (ResNet-50, ``r = 64``: 0.09 GMAC). With ``K <= fuse_rank`` a low rank would
  restrict nothing, and the fuse is TAME's full ``(K, sum C_i)`` convolution.

One class's map (``explain()``) uses that class's row ``U_k V`` ``(sum C_i,)`` as TAME does. In
eval mode BN folds into ``U_i`` (:mod:`lcam.heads.fold`). A new head name (``tame_lite``), so
TAME checkpoints keep loading as TAME.

Status (2026-12-07): not the recommended head. Its cost is in
``benchmarks/results/head-cost-idle-2026-12-07.md`` (ResNet-50 ``explain()`` 1.04x a forward,
TAME 1.11x). Its quality on the quickstart recipe, 3 seeds, is level with or better than TAME's
on every column but ROAD MoRF and IC@50, both inside TAME's seed spread
(``benchmarks/results/tame-lite-quickstart-2026-12-07.md``); with the low-rank fuse (``K > 64``)
one seed on EfficientNet-Lite0 composites (1000 classes) was ahead of TAME on every AD and
deletion/insertion/ROAD column (docs/results.md). Branches much narrower than their input
(ResNet-50's 2048 channels at rank 128) have no quality measurement yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lcam.heads.fold import FoldCache, can_fold, norm_affine
from lcam.heads.norm import GlobalBatchNorm2d
from lcam.heads.tame import TAMEHead

__all__ = ["LiteTAMEHead", "branch_rank"]


def branch_rank(channels: int, reduction: int, minimum: int) -> int:
    """The bottleneck width ``r`` of a branch of ``channels`` (never wider than the branch)."""
    return min(channels, max(minimum, channels // reduction))


class _BottleneckBranch(nn.Module):
    """``ReLU(BN(up(down(F))) + F)``: ``(B, C, h, w)`` -> ``(B, C, h, w)`` through ``r``
    channels.

    No bias before BN (it would cancel, as in TAME's branch). In eval mode BN's affine map is
    folded into ``up``: ``ReLU((diag(s) U) (V F) + t + F)``.
    """

    def __init__(self, channels: int, rank: int) -> None:
        super().__init__()
        self.channels = channels
        self.down = nn.Conv2d(channels, rank, kernel_size=1, bias=False)
        self.up = nn.Conv2d(rank, channels, kernel_size=1, bias=False)
        self.norm = GlobalBatchNorm2d(channels)
        self._folded: FoldCache[tuple[Tensor, Tensor]] = FoldCache()

    def forward(self, features: Tensor) -> Tensor:
        if not can_fold(self.norm):
            return F.relu(self.norm(self.up(self.down(features))) + features)
        weight, bias = self._folded.get(
            [self.up.weight, *self.norm.parameters(), *self.norm.buffers()], self.folded
        )
        narrow = F.conv2d(features, self.down.weight.to(features.dtype))
        wide = F.conv2d(narrow, weight.to(features.dtype), bias.to(features.dtype))
        return wide.add_(features).relu_()

    def folded(self) -> tuple[Tensor, Tensor]:
        """``up`` with eval-mode BN folded in: weight ``(C, r, 1, 1)``, bias ``(C,)``."""
        scale, shift = norm_affine(self.norm)
        return self.up.weight * scale[:, None, None, None], shift


class LiteTAMEHead(TAMEHead):
    """TAME with bottleneck branches and a low-rank fuse for ``K > fuse_rank``: layer features
    ``[(B, C_i, h_i, w_i)]`` -> ``(B, K, h, w)``.

    Args:
        layer_channels: ``C_i`` of each branch.
        num_classes: ``K``.
        initial_bias: starting value of the fuse bias, as in :class:`TAMEHead`.
        branch_reduction, min_branch_rank: a branch's bottleneck width (:func:`branch_rank`).
        fuse_rank: rank ``r`` of the fuse weight when ``K > r``; ``None``: always full rank.
    """

    def __init__(
        self,
        layer_channels: Sequence[int],
        num_classes: int,
        initial_bias: float | None = 1.0,
        branch_reduction: int = 16,
        min_branch_rank: int = 32,
        fuse_rank: int | None = 64,
    ) -> None:
        nn.Module.__init__(self)
        self.branches = nn.ModuleList(
            _BottleneckBranch(c, branch_rank(c, branch_reduction, min_branch_rank))
            for c in layer_channels
        )
        low_rank = fuse_rank is not None and fuse_rank < num_classes
        # basis: V (r, sum C_i); fuse: U (K, r) and the bias, or TAME's full fuse.
        self.basis = nn.Conv2d(sum(layer_channels), fuse_rank, 1, bias=False) if low_rank else None
        fuse_in = fuse_rank if self.basis is not None else sum(layer_channels)
        self.fuse = nn.Conv2d(fuse_in, num_classes, kernel_size=1)
        if initial_bias is not None:
            nn.init.constant_(self.fuse.bias, initial_bias)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        """Class logit maps ``(B, K, h, w)`` at the finest branch's resolution: with a low-rank
        fuse, ``b + U z`` where ``z = sum_i up(V_i G_i)`` ``(B, r, h, w)``."""
        if self.basis is None:
            return super().forward(layers)
        basis = self.basis.weight.flatten(1)
        mixed = self._fuse(
            layers,
            basis,
            basis.new_zeros(()),
            lambda features, rows: F.conv2d(features, rows[:, :, None, None]),
        )
        return F.conv2d(mixed, self.fuse.weight.to(mixed.dtype), self.fuse.bias.to(mixed.dtype))

    def fuse_rows(self, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rows ``(N, sum C_i)`` of the (low-rank) fuse weight and biases ``(N,)`` of
        ``classes`` ``(N,)``, all ``K`` when ``None``: ``U[classes] V``."""
        weight, bias = super().fuse_rows(classes)
        if self.basis is None:
            return weight, bias
        return weight @ self.basis.weight.flatten(1), bias
