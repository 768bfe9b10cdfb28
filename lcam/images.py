"""Image files as RGB the way a viewer shows them: one decoder for training, evaluation and
``infer.py``, so a head is trained, scored and used on the same pictures.

Every PIL-readable image is read with its EXIF rotation applied; grayscale, palette and CMYK are
converted to RGB; transparency is composited on black. Deep images are scaled by their
**format's** range, never by the image's own maximum (a dim picture stays dim):

- 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ...: 16-bit PNG and TIFF):
  ``round(v / 65535 * 255)``. (PIL's own ``convert("RGB")`` clips them at 255: a 16-bit scan
  would become an almost white picture.)
- ``I`` (32-bit signed integers, e.g. TIFF): read as 16-bit data, the common content of such
  files: values are clamped to [0, 65535] (negatives become black, never wrap) and scaled so.
- ``F`` (32-bit float): read as intensities in [0, 1], clamped, times 255.

Decompression bombs (over PIL's ``MAX_IMAGE_PIXELS``, also between it and twice it, where PIL
only warns) are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = ["UnreadableImageError", "open_rgb", "read_rgb", "to_eight_bit"]

SIXTEEN_BIT_MAX = 65535.0


class UnreadableImageError(ValueError):
    """A file that is not a readable image; ``path`` names it, ``reason`` says why (one line)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{str(path)!r} is not a readable image: {reason}")
        self.path, self.reason = str(path), reason


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


def open_rgb(path: str | Path) -> Image.Image:
    """Read any PIL-readable image as an RGB ``PIL.Image`` (decoded, file closed).

    Raises:
        UnreadableImageError: for whatever makes PIL fail on the file (not an image, truncated,
            a decompression bomb, ...), with the file and PIL's reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = to_eight_bit(ImageOps.exif_transpose(image))
                if "A" in image.getbands() or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    image = Image.alpha_composite(black, rgba)
                return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - PIL raises many types; each is re-raised, named
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise UnreadableImageError(path, reason) from error


def read_rgb(path: str | Path) -> Tensor:
    """Read any PIL-readable image as ``(3, H, W)`` uint8 RGB (see :func:`open_rgb`).

    Raises:
        UnreadableImageError: the file is not a readable image.
    """
    return torch.from_numpy(np.asarray(open_rgb(path)).copy()).permute(2, 0, 1)
