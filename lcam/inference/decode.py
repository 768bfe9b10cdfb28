"""Reading image files as RGB tensors, and the dataset a batch job's loader decodes with.

Every PIL-readable image becomes ``(3, H, W)`` uint8 RGB as a viewer shows it: EXIF rotation
applied; grayscale, palette, CMYK converted; transparency composited on black. Deep images are
scaled by their **format's** range, never by the image's own maximum (a dim picture stays dim):

- 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ...: 16-bit PNG and TIFF):
  ``round(v / 65535 * 255)``.
- ``I`` (32-bit signed integers, e.g. TIFF): read as 16-bit data, the common content of such
  files: values are clamped to [0, 65535] (negatives become black, never wrap) and scaled so.
- ``F`` (32-bit float): read as intensities in [0, 1], clamped, times 255.

Decompression bombs (over PIL's ``MAX_IMAGE_PIXELS``, also between it and twice it, where PIL
only warns) are refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from lcam.inference.files import ImageFile

__all__ = ["ImageFiles", "collate_images", "read_rgb", "to_eight_bit"]

SIXTEEN_BIT_MAX = 65535.0


def to_eight_bit(image: Image.Image) -> Image.Image:
    """A deep single-channel image (modes ``I;16*``, ``I``, ``F``) as mode ``L``, scaled by the
    format's range (see the module docstring); any other image unchanged."""
    if image.mode.startswith("I;16") or image.mode == "I":
        scale = SIXTEEN_BIT_MAX
    elif image.mode == "F":
        scale = 1.0
    else:
        return image
    values = np.asarray(image, dtype=np.float64)
    eight = np.round(np.clip(values, 0.0, scale) * (255.0 / scale)).astype(np.uint8)
    return Image.fromarray(eight, "L")


def read_rgb(path: Path) -> Tensor:
    """Read any PIL-readable image as ``(3, H, W)`` uint8 RGB, EXIF rotation applied.

    Raises:
        PIL.Image.DecompressionBombError: also where PIL would only warn.
        OSError, ValueError, ...: whatever PIL raises for an unreadable file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image = to_eight_bit(ImageOps.exif_transpose(image))
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            rgb = image.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


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
        except Exception as error:  # any unreadable input is reported, never fatal to the batch
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            return {"index": index, "error": reason}
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
