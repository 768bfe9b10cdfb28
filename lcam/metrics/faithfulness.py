"""Average Drop / Increase in Confidence (AD / IC), as the L-CAM and TAME papers compute them.

Also holds the small pieces the other perturbation metrics share: map preparation, a stable
pixel ranking, exact keep counts and a chunked forward through the classifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.explainers.base import normalise_maps, upsample_maps

__all__ = [
    "AverageDropIncrease",
    "Model",
    "check_batch",
    "fraction_key",
    "keep_count",
    "pixel_ranks",
    "predict_in_chunks",
    "prepare_maps",
    "soft_keep_masks",
]

Model = Callable[[Tensor], Tensor]
"""Any callable ``(B, 3, H, W)`` images in [0, 1] -> ``(B, K)`` logits (e.g. a FrozenBackbone)."""


def prepare_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Min-max normalise raw ``(B, h, w)`` maps per image, then upsample bilinearly to ``size``.

    The order is the protocol's (normalise, then upsample); bilinear weights are convex, so the
    result ``(B, *size)`` stays in [0, 1].
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, h, w), got {tuple(maps.shape)}")
    return upsample_maps(normalise_maps(maps.detach().float()), size)


def pixel_ranks(maps: Tensor, descending: bool = True) -> Tensor:
    """Rank of every pixel of ``(B, H, W)`` maps, shape ``(B, H * W)`` int64.

    Rank 0 is the most relevant pixel (``descending=True``) or the least relevant one. Ties are
    broken deterministically by a stable sort: among equal values the pixel with the smaller
    flat (row-major) index ranks first. Keeping the pixels with ``rank < k`` therefore keeps
    exactly ``k`` pixels whatever the ties.
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def keep_count(fraction: float, num_pixels: int) -> int:
    """``ceil(fraction * num_pixels)``, robust to float error (``0.7 * 10`` gives 7, not 8)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fractions must be in [0, 1], got {fraction}")
    return min(num_pixels, math.ceil(round(fraction * num_pixels, 6)))


def fraction_key(fraction: float) -> str:
    """Percent label of a fraction for result keys: ``0.15 -> "15"``, ``1.0 -> "100"``."""
    return f"{fraction * 100:g}"


def soft_keep_masks(maps: Tensor, fractions: Sequence[float]) -> Tensor:
    """AD/IC masks: the top ``ceil(p * H * W)`` pixels keep their soft map values, others 0.

    Args:
        maps: ``(B, H, W)`` normalised maps in [0, 1].
        fractions: ``P`` kept fractions ``p`` in [0, 1].

    Returns:
        ``(P, B, H, W)`` masks ``M_p = maps * 1[rank < ceil(p * H * W)]`` (ranks from
        :func:`pixel_ranks`, so exactly that many pixels are selected even with ties).
    """
    batch, height, width = maps.shape
    ranks = pixel_ranks(maps).view(1, batch, height, width)
    counts = torch.tensor(
        [keep_count(p, height * width) for p in fractions], device=maps.device
    ).view(-1, 1, 1, 1)
    return maps.unsqueeze(0) * (ranks < counts).to(maps.dtype)


@torch.no_grad()
def predict_in_chunks(
    model: Model,
    make_inputs: Callable[[Tensor], Tensor],
    total: int,
    batch_size: int,
    reduce: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
) -> Tensor:
    """Run ``total`` perturbed inputs through ``model``, at most ``batch_size`` at a time.

    Inputs are built lazily per chunk so memory stays bounded by ``batch_size`` images.

    Args:
        model: images ``(n, 3, H, W)`` -> logits ``(n, K)``.
        make_inputs: flat indices ``(n,)`` int64 -> the images ``(n, 3, H, W)`` they stand for.
        total: number of inputs.
        batch_size: chunk size.
        reduce: ``(logits (n, K), indices (n,)) -> (n, ...)`` per-input result (e.g. the
            probability of each input's class).
        device: where the flat indices live (the images' device).

    Returns:
        ``(total, ...)`` results of ``reduce`` concatenated along the first dimension.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results = []
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(start + batch_size, total), device=device)
        results.append(reduce(model(make_inputs(index)).float(), index))
    return torch.cat(results) if results else torch.zeros(0, device=device)


def resolve_classes(
    model: Model, images: Tensor, targets: Tensor | None, batch_size: int
) -> Tensor:
    """``targets`` as ``(B,)`` int64 on the images' device, or the model's top-1 classes."""
    if targets is None:
        return predict_in_chunks(
            model,
            lambda i: images[i],
            len(images),
            batch_size,
            lambda logits, _: logits.argmax(dim=1),
            images.device,
        )
    return targets.to(images.device).long()


def check_batch(images: Tensor, maps: Tensor, targets: Tensor | None) -> None:
    """Validate ``images (B, 3, H, W)``, ``maps (B, h, w)`` and optional ``targets (B,)``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must have shape (B, h, w) with B={images.shape[0]}, got {tuple(maps.shape)}"
        )
    if targets is not None and tuple(targets.shape) != (images.shape[0],):
        raise ValueError(
            f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}"
        )


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
        if not fractions:
            raise ValueError("fractions must not be empty")
        for fraction in fractions:
            keep_count(fraction, 1)  # validates the range
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.__dict__["model"] = model  # a reference only: not part of the metric's state_dict
        self.fractions = tuple(float(p) for p in fractions)
        self.batch_size = batch_size
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
