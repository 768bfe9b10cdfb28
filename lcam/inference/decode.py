"""The dataset a batch job's loader decodes with: image files as RGB tensors resized for the
model, unreadable files as error items (decoding itself: :mod:`lcam.images`, shared with the
training and evaluation data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lcam.images import UnreadableImageError, read_rgb, to_eight_bit
from lcam.inference.files import ImageFile

__all__ = ["ImageFiles", "collate_images", "read_rgb", "to_eight_bit"]


class ImageFiles(Dataset):
    """Loads images for a batch job; a failure becomes an item with an ``error`` reason.

    Items: ``{"index", "image": (3, S, S) float in [0, 1], "original": (3, H, W) uint8}`` (the
    whole image resized to ``S x S``, no crop) or ``{"index", "error": str}``.
    """

    def __init__(self, files: Sequence[ImageFile], image_size: int) -> None:
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            original = read_rgb(self.files[index].path)
        except UnreadableImageError as error:  # reported, never fatal to the batch
            return {"index": index, "error": error.reason}
        image = F.interpolate(
            original[None].float() / 255,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].clamp(0, 1)
        return {"index": index, "image": image, "original": original}


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate :class:`ImageFiles` items: ``{"index": [...], "image": (B, 3, S, S) or None,
    "original": [(3, H, W) uint8, ...], "errors": [(index, reason), ...]}``."""
    good = [item for item in items if "error" not in item]
    return {
        "index": [item["index"] for item in good],
        "image": torch.stack([item["image"] for item in good]) if good else None,
        "original": [item["original"] for item in good],
        "errors": [(item["index"], item["error"]) for item in items if "error" in item],
    }
