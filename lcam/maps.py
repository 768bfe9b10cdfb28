"""Leaf helpers on saliency maps: resizing, normalising, blurring and scoring against masks.

Every layer of lcam (heads, explainers, metrics, evaluation, training, inference) uses these;
this module imports nothing from lcam.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur as _torchvision_blur

__all__ = ["boxes_to_masks", "gaussian_blur", "in_mask_energy", "normalise_maps", "upsample_maps"]


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(B, h, w)`` maps to ``(B, *size)`` (unchanged if already that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise_maps(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Min-max normalise each of ``(B, H, W)`` maps to [0, 1] (a constant map becomes 0).

    ``(m - min m) / max(max m - min m, eps)`` per map.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1)
    return (maps - low) / (high - low).clamp_min(eps)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``(B, C, H, W)`` images: kernel radius ``ceil(3 sigma)``, reflected
    borders (torchvision's separable blur)."""
    radius = max(1, math.ceil(3 * sigma))
    size = min(2 * radius + 1, 2 * (min(images.shape[-2:]) - 1) + 1)
    return _torchvision_blur(images, [size, size], [sigma, sigma])


def in_mask_energy(maps: Tensor, masks: Tensor, eps: float = 1e-12) -> Tensor:
    """Share of each map's total mass inside its object mask.

    Args:
        maps: ``(B, H, W)`` non-negative maps.
        masks: ``(B, H, W)`` boolean or {0, 1} object masks.

    Returns:
        ``(B,)`` values in [0, 1]; compare with ``masks.float().mean((1, 2))``, the share a
        uniform map would get.
    """
    inside = (maps * masks.to(maps.dtype)).flatten(1).sum(1)
    return inside / maps.flatten(1).sum(1).clamp_min(eps)


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Rasterise ``(B, 4)`` boxes ``(x1, y1, x2, y2)`` into ``(B, H, W)`` boolean masks.

    Boxes are in continuous pixel coordinates: pixel ``(row i, column j)`` covers
    ``[j, j + 1) x [i, i + 1)`` and is inside the box when its centre ``(j + 0.5, i + 0.5)``
    satisfies ``x1 <= j + 0.5 <= x2`` and ``y1 <= i + 0.5 <= y2``. So ``(0, 0, W, H)`` covers the
    whole image and ``(1, 1, 3, 3)`` covers rows and columns 1 and 2.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) as x1, y1, x2, y2, got {boxes.shape}")
    height, width = size
    boxes = boxes.float()
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    columns = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    x1, y1, x2, y2 = (boxes[:, k, None] for k in range(4))
    inside_rows = (rows >= y1) & (rows <= y2)  # (B, H)
    inside_columns = (columns >= x1) & (columns <= x2)  # (B, W)
    return inside_rows[:, :, None] & inside_columns[:, None, :]
