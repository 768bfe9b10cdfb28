"""Unit alignment of the target layer's channels with object classes (network-dissection style).

For each channel ``c`` of the target layer, its activation ``a_c`` (bilinearly upsampled to the
masks' resolution) is binarised into the *unit mask* ``U_c = a_c > T_c``, and compared with the
object mask ``L_k`` of every class ``k`` (empty in images without an object of class ``k``):

.. math:: IoU_{c,k} = \\frac{\\sum_x |U_c(x) \\cap L_k(x)|}{\\sum_x |U_c(x) \\cup L_k(x)|}

summed over the whole dataset (Bau et al., "Network Dissection", CVPR 2017). Each channel is
reported with its best class and that IoU.

Two thresholds are offered:

- ``"dataset"`` (network dissection): ``T_c`` is the ``quantile`` (0.995) of channel ``c``'s
  activations over the dataset at feature resolution, so each unit is "on" at its top 0.5 % of
  locations across the dataset. Estimated by :func:`channel_quantiles` from a per-channel
  histogram (two extra passes over the data; the error is at most one bin width).
- ``"image"`` (simpler, one pass): per image and channel, the unit mask is the top
  ``top_fraction`` of the upsampled pixels (ties at the cut included), and never pixels at the
  image's minimum activation, so a silent channel fires nowhere. Every active unit then covers
  about the same share of every image.

Intersections and unions are accumulated as ``(C, K)`` sum states of :class:`UnitAlignment`
(a ``torchmetrics.Metric``; exact under DDP). All computations are batched tensor operations
over channels and classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lcam.backbone import FrozenBackbone

__all__ = ["UnitAlignment", "alignment_rows", "channel_quantiles", "unit_alignment"]

_ELEMENT_BUDGET = 1 << 25  # upsampled activations held at once (32 M values)


class UnitAlignment(Metric):
    """IoU of every channel's unit mask with every class's object masks, over a dataset.

    Args:
        num_channels: ``C`` of the features.
        num_classes: ``K``.
        thresholds: ``(C,)`` per-channel activation thresholds ``T_c`` (e.g. from
            :func:`channel_quantiles`); the unit mask is ``a_c > T_c``. ``None``: per-image
            top-fraction thresholds (see the module docstring).
        top_fraction: share of each image's pixels a unit keeps without ``thresholds``.
        resolution: ``(H, W)`` at which units and masks are compared (masks resized nearest);
            default the masks' own resolution.

    ``update(features, masks, labels=None)``: features ``(B, C, h, w)``; either masks
    ``(B, H, W)`` (bool, the object of class ``labels[b]``) with labels ``(B,)``, or per-class
    masks ``(B, K, H, W)`` (then labels are not needed).

    ``compute()`` returns ``{"iou": (C, K), "best_class": (C,), "best_iou": (C,)}``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersection: Tensor
    union: Tensor
    images: Tensor
    thresholds: Tensor

    def __init__(
        self,
        num_channels: int,
        num_classes: int,
        *,
        thresholds: Tensor | None = None,
        top_fraction: float = 0.005,
        resolution: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_channels < 1 or num_classes < 1:
            raise ValueError("num_channels and num_classes must be >= 1")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        if thresholds is not None:
            thresholds = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
            if thresholds.numel() != num_channels:
                raise ValueError(f"thresholds must have {num_channels} values")
        self.num_channels, self.num_classes = num_channels, num_classes
        self.top_fraction = float(top_fraction)
        self.resolution = tuple(resolution) if resolution is not None else None
        self.register_buffer(
            "thresholds", thresholds if thresholds is not None else torch.zeros(0), persistent=False
        )
        shape = (num_channels, num_classes)
        self.add_state("intersection", torch.zeros(shape, dtype=torch.float64), "sum")
        self.add_state("union", torch.zeros(shape, dtype=torch.float64), "sum")
        self.add_state("images", torch.zeros((), dtype=torch.float64), "sum")

    def unit_masks(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """Boolean unit masks ``(B, C, H * W)`` of features ``(B, C, h, w)`` at ``size``."""
        up = F.interpolate(features.float(), size=size, mode="bilinear", align_corners=False)
        flat = up.flatten(2)
        if self.thresholds.numel():
            return flat > self.thresholds.to(flat).view(1, -1, 1)
        keep = min(flat.shape[-1], max(1, math.ceil(round(self.top_fraction * flat.shape[-1], 6))))
        cut = flat.topk(keep, dim=-1).values[..., -1:]  # (B, C, 1) k-th largest value
        return (flat >= cut) & (flat > flat.amin(dim=-1, keepdim=True))

    def update(self, features: Tensor, masks: Tensor, labels: Tensor | None = None) -> None:
        """Accumulate intersections and unions of a batch (shapes in the class docstring)."""
        if features.dim() != 4 or features.shape[1] != self.num_channels:
            raise ValueError(
                f"features must have shape (B, {self.num_channels}, h, w), got "
                f"{tuple(features.shape)}"
            )
        batch = features.shape[0]
        per_class = masks.dim() == 4
        if per_class and masks.shape[:2] != (batch, self.num_classes):
            raise ValueError(f"per-class masks must be (B, {self.num_classes}, H, W)")
        if not per_class:
            if masks.dim() != 3 or masks.shape[0] != batch:
                raise ValueError(f"masks must be (B, H, W) or (B, K, H, W), got {masks.shape}")
            if labels is None:
                raise ValueError("labels (B,) are needed with (B, H, W) masks")
        size = self.resolution or tuple(masks.shape[-2:])
        masks = masks.to(features.device)
        if tuple(masks.shape[-2:]) != size:
            flat_masks = masks.float().flatten(0, -3)[:, None]
            masks = F.interpolate(flat_masks, size=size, mode="nearest")[:, 0]
            masks = masks.view(batch, *((self.num_classes,) if per_class else ()), *size)
        masks = masks.bool()
        pixels = size[0] * size[1]
        chunk = max(1, _ELEMENT_BUDGET // (self.num_channels * pixels))
        for start in range(0, batch, chunk):  # bounds memory; each chunk is fully batched
            part = slice(start, start + chunk)
            units = self.unit_masks(features[part], size).to(torch.float64)  # (n, C, P)
            area = units.sum(dim=-1).sum(dim=0)  # (C,)
            if per_class:
                objects = masks[part].flatten(2).to(torch.float64)  # (n, K, P)
                inter = torch.bmm(units, objects.transpose(1, 2)).sum(dim=0)  # (C, K)
                object_area = objects.sum(dim=(0, 2))  # (K,)
                union = area[:, None] + object_area[None, :] - inter
            else:
                objects = masks[part].flatten(1).to(torch.float64)  # (n, P)
                assert labels is not None
                onehot = F.one_hot(labels[part].to(features.device).long(), self.num_classes)
                onehot = onehot.to(torch.float64)  # (n, K)
                inter_nc = (units * objects[:, None]).sum(dim=-1)  # (n, C)
                inter = inter_nc.T @ onehot  # (C, K)
                extra = (objects.sum(dim=1)[:, None] - inter_nc).T @ onehot  # |M| - |U n M|
                union = area[:, None] + extra
            self.intersection += inter
            self.union += union
        self.images += batch

    def compute(self) -> dict[str, Tensor]:
        """IoU per (channel, class), and each channel's best class and IoU."""
        union = self.union
        iou = torch.where(union > 0, self.intersection / union.clamp_min(1), 0.0).float()
        best_iou, best_class = iou.max(dim=1)
        return {"iou": iou, "best_class": best_class, "best_iou": best_iou}


def _features(backbone: FrozenBackbone, images: Tensor) -> Tensor:
    with torch.no_grad():
        features, _ = backbone.body(images.to(backbone.mean.device))
    return features.float()


def _batches(data: Iterable[Any], max_batches: int | None) -> Iterable[dict[str, Tensor]]:
    for index, batch in enumerate(data):
        if max_batches is not None and index >= max_batches:
            return
        yield batch


def channel_quantiles(
    backbone: FrozenBackbone,
    data: Iterable[dict[str, Tensor]],
    quantile: float = 0.995,
    *,
    bins: int = 2048,
    max_batches: int | None = None,
) -> Tensor:
    """Per-channel ``quantile`` of the target-layer activations over a dataset, ``(C,)``.

    Two passes over ``data`` (re-iterable: a DataLoader or a list of ``{"image": ...}``
    batches): the per-channel range, then a ``bins``-bin histogram of every activation (at
    feature resolution) per channel; the quantile is linearly interpolated inside its bin, so
    the error is at most ``range / bins``.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    if iter(data) is data:
        raise ValueError("data must be re-iterable (a DataLoader or a list), not an iterator")
    low = high = None
    for batch in _batches(data, max_batches):
        values = _features(backbone, batch["image"]).transpose(0, 1).flatten(1)  # (C, N)
        batch_low, batch_high = values.amin(dim=1), values.amax(dim=1)
        low = batch_low if low is None else torch.minimum(low, batch_low)
        high = batch_high if high is None else torch.maximum(high, batch_high)
    if low is None or high is None:
        raise ValueError("data yielded no batches")
    width = (high - low).clamp_min(1e-12) / bins
    channels = low.numel()
    histogram = torch.zeros(channels * bins, dtype=torch.float64, device=low.device)
    offsets = torch.arange(channels, device=low.device)[:, None] * bins
    for batch in _batches(data, max_batches):
        values = _features(backbone, batch["image"]).transpose(0, 1).flatten(1)
        index = ((values - low[:, None]) / width[:, None]).long().clamp_(0, bins - 1)
        ones = torch.ones(index.numel(), dtype=torch.float64, device=low.device)
        histogram.scatter_add_(0, (index + offsets).flatten(), ones)
    histogram = histogram.view(channels, bins)
    cumulative = histogram.cumsum(dim=1)
    target = quantile * cumulative[:, -1:]  # (C, 1)
    position = (cumulative < target).sum(dim=1, keepdim=True).clamp_(max=bins - 1)  # bin index
    before = torch.where(
        position > 0, cumulative.gather(1, (position - 1).clamp_min(0)), torch.zeros_like(target)
    )
    inside = histogram.gather(1, position).clamp_min(1e-12)
    share = ((target - before) / inside).clamp(0, 1)
    return (low[:, None] + (position + share) * width[:, None])[:, 0].float()


def unit_alignment(
    backbone: FrozenBackbone,
    data: Iterable[dict[str, Tensor]],
    *,
    threshold: str = "dataset",
    quantile: float = 0.995,
    top_fraction: float | None = None,
    resolution: tuple[int, int] | None = None,
    bins: int = 2048,
    max_batches: int | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Best-aligned class of every target-layer channel over a dataset with object masks.

    Args:
        backbone: the frozen classifier (its target layer is dissected).
        data: batches ``{"image" (B, 3, H, W), "mask" (B, H, W), "label" (B,)}``, e.g. a
            DataLoader of :class:`~lcam.data.SyntheticShapes`; re-iterable for ``"dataset"``.
        threshold: ``"dataset"`` (per-channel ``quantile`` over the dataset, network dissection)
            or ``"image"`` (per-image ``top_fraction``, default ``1 - quantile``).
        resolution: comparison resolution (default: the masks').
        bins: histogram bins of the dataset quantile.
        max_batches: use only the first batches.
        class_names: default the backbone's.

    Returns:
        One row per channel: ``channel``, ``class``, ``class_name``, ``iou``, ``threshold``
        (``None`` in ``"image"`` mode).
    """
    if threshold not in ("dataset", "image"):
        raise ValueError(f"threshold must be 'dataset' or 'image', got {threshold!r}")
    thresholds = (
        channel_quantiles(backbone, data, quantile, bins=bins, max_batches=max_batches)
        if threshold == "dataset"
        else None
    )
    metric = UnitAlignment(
        backbone.feature_channels,
        backbone.num_classes,
        thresholds=thresholds,
        top_fraction=top_fraction if top_fraction is not None else 1.0 - quantile,
        resolution=resolution,
    ).to(backbone.mean.device)
    for batch in _batches(data, max_batches):
        metric.update(_features(backbone, batch["image"]), batch["mask"], batch["label"])
    return alignment_rows(metric.compute(), thresholds, class_names or backbone.class_names)


def alignment_rows(
    result: dict[str, Tensor],
    thresholds: Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{channel, class, class_name, iou, threshold}`` of :meth:`UnitAlignment.compute`."""
    best_class, best_iou = result["best_class"].tolist(), result["best_iou"].tolist()
    values = thresholds.tolist() if thresholds is not None and thresholds.numel() else None
    rows = []
    for channel, (klass, iou) in enumerate(zip(best_class, best_iou, strict=True)):
        name = class_names[klass] if class_names and klass < len(class_names) else str(klass)
        rows.append(
            {
                "channel": channel,
                "class": klass,
                "class_name": name,
                "iou": float(iou),
                "threshold": None if values is None else float(values[channel]),
            }
        )
    return rows
