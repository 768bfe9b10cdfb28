"""Localisation metrics against object masks or boxes: pointing game, energy PG, mask IoU.

:func:`boxes_to_masks` lives in :mod:`lcam.maps` (the data layer uses it too); it stays
importable from here.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.maps import boxes_to_masks, in_mask_energy, normalise_maps, upsample_maps

__all__ = ["EnergyPointingGame", "MaskIoU", "PointingGame", "boxes_to_masks"]


def _object_masks(
    maps: Tensor, masks: Tensor | None, boxes: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Maps ``(B, H, W)`` at the masks' resolution and boolean masks ``(B, H, W)``.

    Exactly one of ``masks`` (``(B, H, W)``) or ``boxes`` (``(B, 4)`` xyxy at the maps'
    resolution) must be given. Maps are bilinearly resized to the masks' size when it differs.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}")
    if (masks is None) == (boxes is None):
        raise ValueError("give exactly one of masks (B, H, W) or boxes (B, 4)")
    if boxes is not None:
        masks = boxes_to_masks(boxes.to(maps.device), tuple(maps.shape[-2:]))
    assert masks is not None
    if masks.dim() != 3 or masks.shape[0] != maps.shape[0]:
        raise ValueError(
            f"masks must have shape (B, H, W) with B={maps.shape[0]}, got {tuple(masks.shape)}"
        )
    masks = masks.to(maps.device).bool()
    maps = upsample_maps(maps.detach().float(), tuple(masks.shape[-2:]))
    return maps, masks


class PointingGame(Metric):
    r"""Pointing game accuracy: does the map's maximum fall on (or near) the object?

    For each image the point ``q = argmax`` of the map (the first one in row-major order if the
    maximum is attained several times) is a hit when some object pixel ``m`` lies within
    Euclidean distance ``tolerance`` of it:

    .. math:: hit = \mathbb{1}[\exists m \in mask: \|q - m\|_2 \le t], \qquad
              accuracy = \frac{hits}{hits + misses}

    which is the same as testing ``q`` against the mask dilated by a disk of radius ``t``
    (computed directly as the distance from ``q`` to every mask pixel, no pooling). ``t = 0``
    means the point must lie inside the mask. Images whose mask is empty are not counted
    (there is nothing to point at).

    Args:
        tolerance: radius ``t`` in pixels of the masks' resolution (15 in Zhang et al.).

    ``update(maps, masks=None, boxes=None)``: maps ``(B, h, w)``, resized bilinearly to the
    masks' ``(B, H, W)`` resolution if needed; or boxes ``(B, 4)`` xyxy at the maps' resolution.
    ``compute()`` returns the accuracy in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits: Tensor
    count: Tensor

    def __init__(self, tolerance: float = 15, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.add_state("hits", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def hit(self, maps: Tensor, masks: Tensor) -> Tensor:
        """``(B,)`` boolean hits of ``(B, H, W)`` maps on ``(B, H, W)`` boolean masks."""
        batch, height, width = maps.shape
        peak = maps.flatten(1).argmax(dim=1)
        peak_row, peak_column = peak // width, peak % width
        rows = torch.arange(height, device=maps.device)
        columns = torch.arange(width, device=maps.device)
        distance_sq = (rows[None, :, None] - peak_row[:, None, None]) ** 2 + (
            columns[None, None, :] - peak_column[:, None, None]
        ) ** 2  # (B, H, W), exact integers
        near = distance_sq <= self.tolerance**2
        return (near & masks).flatten(1).any(dim=1)

    def update(
        self, maps: Tensor, masks: Tensor | None = None, boxes: Tensor | None = None
    ) -> None:
        """Accumulate hits and the number of images with a non-empty mask."""
        maps, masks = _object_masks(maps, masks, boxes)
        valid = masks.flatten(1).any(dim=1)
        hits = self.hit(maps, masks) & valid
        self.hits += hits.sum().to(self.hits)
        self.count += valid.sum().to(self.count)

    def compute(self) -> Tensor:
        """Share of hits among the counted images."""
        return self.hits / self.count.clamp_min(1)


class EnergyPointingGame(Metric):
    r"""Energy-based pointing game: mean share of the map's mass inside the object.

    .. math:: EPG = \frac{1}{N} \sum_i \frac{\sum_{p \in mask_i} S_i(p)}{\sum_p S_i(p)}

    computed with :func:`lcam.maps.in_mask_energy`. With ``normalise=True`` (default)
    each map is first min-max normalised to [0, 1] (raw maps may be negative); a constant map
    then has no mass and scores 0.

    Args:
        normalise: min-max normalise every map before measuring its energy.

    ``update(maps, masks=None, boxes=None)``: maps ``(B, h, w)`` (resized bilinearly to the
    masks' resolution if needed), masks ``(B, H, W)`` or boxes ``(B, 4)`` xyxy at the maps'
    resolution (see :func:`boxes_to_masks`). ``compute()`` returns the mean share in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    energy_sum: Tensor
    count: Tensor

    def __init__(self, normalise: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.normalise = normalise
        self.add_state("energy_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(
        self, maps: Tensor, masks: Tensor | None = None, boxes: Tensor | None = None
    ) -> None:
        """Accumulate the in-mask energy shares of a batch."""
        maps, masks = _object_masks(maps, masks, boxes)
        if self.normalise:
            maps = normalise_maps(maps)
        elif bool((maps < 0).any()):
            raise ValueError("maps must be non-negative when normalise=False")
        self.energy_sum += in_mask_energy(maps, masks).sum().to(self.energy_sum)
        self.count += maps.shape[0]

    def compute(self) -> Tensor:
        """Mean in-mask energy share."""
        return self.energy_sum / self.count.clamp_min(1)


class MaskIoU(Metric):
    r"""Intersection over union of the thresholded normalised map with the object mask.

    .. math:: IoU_i = \frac{|\{S_i \ge \tau\} \cap mask_i|}{|\{S_i \ge \tau\} \cup mask_i|}

    with ``S_i`` min-max normalised to [0, 1]; the mean over images is returned. An image where
    both sets are empty has IoU 1 (perfect agreement).

    Args:
        threshold: ``tau`` in [0, 1].

    ``update(maps, masks=None, boxes=None)``: as :class:`EnergyPointingGame`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou_sum: Tensor
    count: Tensor

    def __init__(self, threshold: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.add_state("iou_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(
        self, maps: Tensor, masks: Tensor | None = None, boxes: Tensor | None = None
    ) -> None:
        """Accumulate the IoUs of a batch."""
        maps, masks = _object_masks(maps, masks, boxes)
        predicted = normalise_maps(maps) >= self.threshold
        intersection = (predicted & masks).flatten(1).sum(1)
        union = (predicted | masks).flatten(1).sum(1)
        iou = torch.where(union > 0, intersection / union.clamp_min(1), 1.0)
        self.iou_sum += iou.sum().to(self.iou_sum)
        self.count += maps.shape[0]

    def compute(self) -> Tensor:
        """Mean IoU over images."""
        return self.iou_sum / self.count.clamp_min(1)
