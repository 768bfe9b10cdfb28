"""What the Quantus-style metric tests share: a model whose evidence is known, maps built to be
good, bad or trivial for it, and the same network wrapped for Quantus."""

from __future__ import annotations

import torch
from helpers import tiny_backbone
from torch import nn

SIZE = 16
HALF = SIZE // 2


class RegionContrast(nn.Module):
    """Class-0 logit = ``gain * ReLU(mean grey(top-left) - mean grey(bottom-right))``; class 1 is
    its negative. Top-left pixels are evidence for class 0, bottom-right against, the rest
    neutral; restoring bottom-right pixels onto black changes nothing (the ReLU is at 0)."""

    def __init__(self, gain: float = 10.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1)
        top_left = grey[:, :HALF, :HALF].mean(dim=(1, 2))
        bottom_right = grey[:, HALF:, HALF:].mean(dim=(1, 2))
        score = self.gain * (top_left - bottom_right).relu()
        return torch.stack([score, -score], dim=1)


def region_images(count: int = 4) -> torch.Tensor:
    """``(count, 3, 16, 16)`` images, brighter top-left than bottom-right, with a black pixel
    (so Quantus's ``"black"``, the image minimum, is 0 as here)."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.5
    images[:, :, :HALF, :HALF] += 0.5
    images[:, :, 0, -1] = 0
    return images


def quadrant_map(count: int, high: str, low: str | None = None) -> torch.Tensor:
    """``(count, 16, 16)`` maps: 1 on quadrant ``high``, 0 on ``low`` (if given), else 0.5.
    Quadrants: ``tl``, ``tr``, ``bl``, ``br``."""
    maps = torch.full((count, SIZE, SIZE), 0.5 if low else 0.0)
    corners = {
        "tl": (slice(0, HALF), slice(0, HALF)),
        "tr": (slice(0, HALF), slice(HALF, SIZE)),
        "bl": (slice(HALF, SIZE), slice(0, HALF)),
        "br": (slice(HALF, SIZE), slice(HALF, SIZE)),
    }
    maps[(slice(None), *corners[high])] = 1.0
    if low:
        maps[(slice(None), *corners[low])] = 0.0
    return maps


def trivial_maps(count: int) -> dict[str, torch.Tensor]:
    """The answers a real map must beat: a constant map and a centre prior."""
    coords = torch.arange(SIZE) - (SIZE - 1) / 2
    centre = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * (SIZE / 4) ** 2))
    return {"constant": torch.ones(count, SIZE, SIZE), "centre": centre.expand(count, -1, -1)}


class Evaluated(nn.Module):
    """A network in eval mode as Quantus requires (``[0, 1]`` images -> logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def tiny_network() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A TinyResNet (5 classes) in eval mode, ``(3, 3, 16, 16)`` images with a black pixel and
    ``(3, 16, 16)`` random maps."""
    backbone = tiny_backbone(num_classes=5, input_size=SIZE)
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, SIZE, SIZE, generator=generator)
    images[:, :, 0, 0] = 0
    maps = torch.rand(3, SIZE, SIZE, generator=generator)
    return Evaluated(backbone).eval(), images, maps
