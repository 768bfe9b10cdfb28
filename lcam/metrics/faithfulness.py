"""Average Drop / Increase in Confidence (AD / IC), as the L-CAM and TAME papers compute them.

The pieces the perturbation metrics share (map preparation, pixel ranking, keep counts, the
AD/IC soft masks, chunked forward) live in :mod:`lcam.metrics.common`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.metrics.common import (
    Model,
    check_batch,
    checked_batch_size,
    checked_fractions,
    fraction_key,
    predict_in_chunks,
    prepare_maps,
    soft_keep_masks,
)

__all__ = ["AverageDropIncrease", "soft_keep_masks"]


class AverageDropIncrease(Metric):
    r"""Average Drop (AD) and Increase in Confidence (IC) at several kept fractions.

    The L-CAM/TAME protocol, for each image ``x`` (``(3, H, W)`` in [0, 1]) and map ``S``:

    1. ``c`` = class predicted on the clean image (or the given target), ``Y = softmax(f(x))_c``.
    2. ``S`` is min-max normalised per image and bilinearly upsampled to ``H x W``.
    3. For each fraction ``p`` the ``k = ceil(p * H * W)`` highest pixels are kept with their
       *soft* values, all others are zeroed: ``M_p = S * 1[rank(S) < k]``; ties are broken by a
       stable sort (lower flat index first) so exactly ``k`` pixels are kept.
    4. ``x' = x * M_p`` (masked pixels become black), ``O = softmax(f(x'))_c``.

    .. math::
        AD_p = \frac{100}{N} \sum_i \frac{\max(0, Y_i - O_i)}{Y_i} \quad (\text{lower is better})
        \qquad IC_p = \frac{100}{N} \sum_i \mathbb{1}[O_i > Y_i] \quad (\text{strict; higher})

    States are per-fraction sums and an image count (``dist_reduce_fx="sum"``), so the result
    under DDP equals the single-process one.

    Args:
        model: callable ``(B, 3, H, W)`` images in [0, 1] -> ``(B, K)`` logits, e.g. a
            :class:`~lcam.backbone.FrozenBackbone`. It is held by reference (not registered as a
            submodule) and must already be on the images' device.
        fractions: kept fractions ``p`` (default the papers' 100 %, 50 %, 15 %).
        batch_size: maximum number of images per forward pass (clean and masked alike).

    ``update(images, maps, targets=None)``:
        images ``(B, 3, H, W)`` in [0, 1]; maps ``(B, h, w)`` raw maps (e.g. the L-CAM
        pre-sigmoid logit map of the explained class, or a baseline's map); targets ``(B,)``
        optional classes to score. The protocol uses the predicted class, which is the default;
        when targets are given they replace it (``Y`` and ``O`` are then their probabilities).

    ``compute()`` returns ``{"ad@100": AD, "ic@100": IC, "ad@50": ..., ...}`` (percentages).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    ad_sum: Tensor
    ic_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: Model,
        fractions: Sequence[float] = (1.0, 0.5, 0.15),
        batch_size: int = 64,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.fractions = checked_fractions(fractions)
        self.batch_size = checked_batch_size(batch_size)
        self.__dict__["model"] = model  # a reference only: not part of the metric's state_dict
        size = len(self.fractions)
        self.add_state("ad_sum", torch.zeros(size), dist_reduce_fx="sum")
        self.add_state("ic_sum", torch.zeros(size), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate AD/IC sums of a batch (shapes in the class docstring)."""
        check_batch(images, maps, targets)
        batch, _, height, width = images.shape
        device = images.device
        clean = predict_in_chunks(
            self.model, lambda i: images[i], batch, self.batch_size, lambda z, _: z, device
        )  # (B, K)
        classes = clean.argmax(dim=1) if targets is None else targets.to(device).long()
        prob_clean = clean.softmax(dim=1).gather(1, classes[:, None])[:, 0]  # Y, (B,)

        masks = soft_keep_masks(prepare_maps(maps.to(device), (height, width)), self.fractions)
        flat_masks = masks.flatten(0, 1)  # (P * B, H, W), fraction-major

        def masked(index: Tensor) -> Tensor:
            return images[index % batch] * flat_masks[index, None].to(images.dtype)

        def class_probability(logits: Tensor, index: Tensor) -> Tensor:
            return logits.softmax(dim=1).gather(1, classes[index % batch, None])[:, 0]

        prob_masked = predict_in_chunks(
            self.model, masked, masks.shape[0] * batch, self.batch_size, class_probability, device
        ).view(len(self.fractions), batch)  # O, (P, B)

        drop = (prob_clean - prob_masked).clamp_min(0) / prob_clean.clamp_min(1e-12)
        increase = (prob_masked > prob_clean).to(drop.dtype)
        self.ad_sum += drop.sum(dim=1).to(self.ad_sum)
        self.ic_sum += increase.sum(dim=1).to(self.ic_sum)
        self.count += batch

    def compute(self) -> dict[str, Tensor]:
        """``{"ad@<p%>": AD_p, "ic@<p%>": IC_p}`` for every fraction, in percent."""
        count = self.count.clamp_min(1)
        result: dict[str, Tensor] = {}
        for index, fraction in enumerate(self.fractions):
            key = fraction_key(fraction)
            result[f"ad@{key}"] = 100 * self.ad_sum[index] / count
            result[f"ic@{key}"] = 100 * self.ic_sum[index] / count
        return result
