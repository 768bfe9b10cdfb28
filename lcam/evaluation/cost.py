"""What one method spends per image: classifier passes and wall time, as sum states."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MethodCost"]


class MethodCost(Metric):
    """Images, explanation time and classifier passes of one method, as sum states.

    ``update(images, seconds, forward_passes, backward_passes, located, untrained)``: the number
    of images of the batch, the wall time of explaining it, the passes *per image* the method
    reported, how many of the images had an object mask and how many were explained for a class
    the (learned) method never trained on (``Explanation.untrained``). ``compute()`` returns
    per-image means and the two counts.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    images: Tensor
    seconds: Tensor
    forward_passes: Tensor
    backward_passes: Tensor
    located: Tensor
    untrained: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in (
            "images",
            "seconds",
            "forward_passes",
            "backward_passes",
            "located",
            "untrained",
        ):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        images: int,
        seconds: float,
        forward_passes: float,
        backward_passes: float,
        located: int,
        untrained: int = 0,
    ) -> None:
        """Accumulate one batch (passes are per image; they are weighted by ``images``)."""
        self.images += images
        self.seconds += seconds
        self.forward_passes += forward_passes * images
        self.backward_passes += backward_passes * images
        self.located += located
        self.untrained += untrained

    def compute(self) -> dict[str, Tensor]:
        """``images``, ``located``, ``untrained``, per-image ``forward_passes``/
        ``backward_passes`` and ``ms_per_image``."""
        count = self.images.clamp_min(1)
        return {
            "images": self.images,
            "located": self.located,
            "untrained": self.untrained,
            "forward_passes": self.forward_passes / count,
            "backward_passes": self.backward_passes / count,
            "ms_per_image": 1000.0 * self.seconds / count,
        }
