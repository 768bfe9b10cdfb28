r"""Monotonicity (Arya et al., 2019; Quantus ``Monotonicity``): adding pixels in the order of
the map, from least to most important, should never lower the class score."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.maps import upsample_maps
from lcam.metrics.common import (
    Model,
    check_batch,
    checked_batch_size,
    pixel_ranks,
    predict_in_chunks,
    resolve_classes,
)

__all__ = ["Monotonicity"]


class Monotonicity(Metric):
    r"""How monotonically the class logit rises as pixels are restored in increasing map order.

    For each image ``x`` ``(3, H, W)`` and map ``S`` (resized to ``H x W``), the pixels are
    sorted by increasing ``S`` (ties by a stable sort) and restored ``ceil(HW / steps)`` at a
    time onto the baseline image (every channel ``b``, 0: black). With ``y_c^{(s)}`` the logit of
    the explained class after step ``s = 1..steps``:

    .. math:: \mathrm{mono}(x) = \frac{1}{steps - 1} \sum_{s=2}^{steps}
              \mathbb{1}\big[y_c^{(s)} \ge y_c^{(s-1)}\big], \qquad
              \mathrm{monotonic}(x) = \mathbb{1}\big[\mathrm{mono}(x) = 1\big]

    ``monotonic`` is Arya et al.'s (and Quantus's) per-image score; ``mono`` is the fraction
    of steps that keep it, which separates maps that are all non-monotonic on real networks.
    Both are means over images; higher is better. Quantus 0.6.0 writes the baseline value into
    the baseline image at every step (the original pixels never come back, so its curve is
    flat and every map scores 1); this metric restores the image's pixels, as the paper does.
    States: two sums and the image count (exact under DDP).

    Args:
        model: images ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, K)``.
        steps: points of the curve (at least 2).
        baseline: value of the pixels not restored yet.
        batch_size: most images per forward.

    ``update(images, maps, targets=None)``: maps ``(B, h, w)``; targets ``(B,)`` (default: the
    predicted class). ``compute()`` returns ``{"monotonicity": mean mono, "monotonic": mean
    monotonic}``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    step_sum: Tensor
    monotonic_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        steps: int = 20,
        baseline: float = 0.0,
        batch_size: int = 64,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        self.__dict__["model"] = model  # a reference only: not part of the state_dict
        self.steps, self.baseline = steps, baseline
        self.batch_size = checked_batch_size(batch_size)
        self.add_state("step_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("monotonic_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def curves(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> Tensor:
        """``(B, steps)`` logits of the explained classes along the restoring curve."""
        check_batch(images, maps, targets)
        batch, _, height, width = images.shape
        device = images.device
        maps = upsample_maps(maps.to(device).float(), (height, width))
        # rank 0 = least important pixel (ascending order, ties by flat index)
        ranks = pixel_ranks(maps, descending=False).view(batch, height, width)
        per_step = math.ceil(height * width / self.steps)
        classes = resolve_classes(self.model, images, targets, self.batch_size)

        def restored(index: Tensor) -> Tensor:
            step, image = index // batch, index % batch
            kept = ranks[image] < ((step + 1) * per_step)[:, None, None]
            return torch.where(kept[:, None], images[image], self.baseline)

        def pick(logits: Tensor, index: Tensor) -> Tensor:
            return logits.double().gather(1, classes[index % batch, None])[:, 0]

        # chunks of the batch's own size, at most batch_size (see FaithfulnessCorrelation)
        total, chunk = self.steps * batch, min(self.batch_size, batch)
        scores = predict_in_chunks(self.model, restored, total, chunk, pick, device)
        return scores.view(self.steps, batch).T

    def update(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate the batch's monotonicity (shapes in the class docstring)."""
        rising = self.curves(images, maps, targets).diff(dim=1) >= 0  # (B, steps - 1)
        self.step_sum += rising.double().mean(dim=1).sum()
        self.monotonic_sum += rising.all(dim=1).sum()
        self.count += len(images)

    def compute(self) -> dict[str, Tensor]:
        """``{"monotonicity": ..., "monotonic": ...}`` means over the images seen."""
        count = self.count.clamp_min(1)
        return {
            "monotonicity": (self.step_sum / count).float(),
            "monotonic": self.monotonic_sum / count,
        }
