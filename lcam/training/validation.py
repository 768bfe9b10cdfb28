"""Faithfulness on a fixed validation subset, each epoch, so checkpoints can be chosen by it.

With ``faithfulness_subset: n`` the validation loop also scores the head with the L-CAM/TAME
Average Drop / Increase in Confidence protocol (:class:`~lcam.metrics.AverageDropIncrease`, kept
fractions 100 %, 50 %, 15 %) on the validation images of dataset index ``< n`` (the first ``n``
images seen, when batches carry no ``index``), exactly as a ``test`` run's method comparison
scores it: the **pre-sigmoid** logit map of the predicted class, min-max normalised, upsampled
(with ``faithfulness_maps: shown``, the map the head shows, as ``comparison: {learned_maps:
shown}`` scores it).
It logs ``val/ad_100``, ``val/ad_50``, ``val/ad_15``, ``val/ic_100``, ``val/ic_50``,
``val/ic_15`` (percentages), e.g. for ``ModelCheckpoint(monitor="val/ic_15", mode="max")``.

The sums are reduced over processes. Under DDP the validation sampler pads the set to a multiple
of the number of processes by repeating its first images; with a validation set of such a size
(or ``n`` below the repeated indices) the values equal the single-process ones. Cost per
validation image of the subset: one clean forward and one per fraction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.metrics import AverageDropIncrease

__all__ = ["ValidationFaithfulness", "logged_name"]


def logged_name(key: str) -> str:
    """``"ic@15"`` -> ``"ic_15"``: metric keys as logged names (``@`` is awkward in file names
    that ``ModelCheckpoint`` builds from monitored values)."""
    return key.replace("@", "_")


class ValidationFaithfulness(nn.Module):
    """AD/IC of a head's maps on a fixed subset of the validation set.

    Args:
        backbone: the frozen classifier (held by reference by the metric).
        subset: images scored per epoch (dataset indices ``< subset``); must be >= 1.
        fractions: kept fractions (the papers' 100 %, 50 %, 15 %).
        batch_size: images per forward pass inside the metric.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        subset: int,
        fractions: Sequence[float] = (1.0, 0.5, 0.15),
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if subset < 1:
            raise ValueError(f"faithfulness_subset must be >= 1 to be scored, got {subset}")
        self.subset = subset
        self.adic = AverageDropIncrease(backbone, fractions, batch_size)
        self.seen = 0  # images streamed this epoch, for batches without an ``index``

    def update(self, images: Tensor, logit_maps: Tensor, indices: Tensor | None) -> None:
        """Score the batch's images of the subset.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            logit_maps: ``(B, h, w)`` maps of each image's predicted class, as the test run scores
                them (pre-sigmoid, or the shown maps; see the module docstring).
            indices: ``(B,)`` dataset indices, or None (then the first ``subset`` images seen
                this epoch form the subset).
        """
        if indices is not None:
            keep = indices.to(images.device) < self.subset
        else:
            keep = torch.arange(len(images), device=images.device) < self.subset - self.seen
        self.seen += len(images)
        if bool(keep.any()):
            self.adic.update(images[keep], logit_maps[keep].float())

    def compute(self) -> dict[str, Tensor]:
        """``{"ad_100": AD, ..., "ic_15": IC}`` in percent, over every process; then reset."""
        values = {logged_name(key): value for key, value in self.adic.compute().items()}
        self.reset()
        return values

    def reset(self) -> None:
        """Forget the epoch's sums."""
        self.adic.reset()
        self.seen = 0
