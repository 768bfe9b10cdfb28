"""A classifier whose evidence is known: a green square planted at a random place on grey clutter.

:class:`SpotNet` (32 px) is a three-stage convolutional net with fixed weights: channel 0 of
every stage carries the saturated greenness ``ReLU(G - (R + B) / 2 - 0.4)`` (box-averaged,
stride 2 per stage), the other channels are fixed random texture filters of everything
(distractors). The class-0 logit is ``gain * mean(stage-3 channel 0) - 2`` and class 1's is 0:
only green pixels move the prediction, wherever they are. :func:`spot_images` draws grey block
clutter, a red square (a salient distractor that does not count: it has no green) and the green
square, each placed uniformly at random, so the faithful map is the green square and it moves
from image to image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE = 32  # image side
SPOT = 8  # side of the planted squares
GREEN_THRESHOLD = 0.4  # greenness below it counts nothing: a blurred square is no evidence
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SpotNet(nn.Module):
    """Fixed-weight net: ``(B, 3, 32, 32)`` ImageNet-normalised images (as FrozenBackbone feeds
    them) -> ``(B, 2)`` logits. Stages ``layer1`` (16 x 16), ``layer2`` (8 x 8), ``layer3``
    (4 x 4), each ``width`` channels after a ReLU."""

    def __init__(self, num_classes: int = 2, width: int = 8, gain: float = 300.0) -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError("SpotNet has two classes: green square, and none")
        generator = torch.Generator().manual_seed(0)
        stages = []
        for stage, inputs in enumerate((3, width, width)):
            conv = nn.Conv2d(inputs, width, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / 3)
                conv.bias.zero_()
                conv.weight[0].zero_()
                if stage == 0:  # saturated greenness at the window's centre pixel
                    conv.weight[0, :, 1, 1] = torch.tensor([-0.5, 1.0, -0.5])
                    conv.bias[0] = -GREEN_THRESHOLD
                else:  # box average of the previous stage's greenness
                    conv.weight[0, 0] = 1 / 9
                conv.weight[1:, 0].zero_()  # distractor channels do not read the greenness
            stages.append(nn.Sequential(conv, nn.ReLU()))
        self.layer1, self.layer2, self.layer3 = stages
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.gain = gain
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.std + self.mean  # back to [0, 1]: grey pixels have no greenness
        green = self.layer3(self.layer2(self.layer1(x)))[:, 0].mean(dim=(1, 2))[:, None]
        return torch.cat([self.gain * green - 2.0, torch.zeros_like(green)], dim=1)


def _square(corner: Tensor) -> Tensor:
    """``(N, SIZE, SIZE)`` masks of ``SPOT``-sided squares at ``(N, 2)`` (row, column) corners."""
    pixels = torch.arange(SIZE)
    rows = (pixels[None] >= corner[:, :1]) & (pixels[None] < corner[:, :1] + SPOT)
    cols = (pixels[None] >= corner[:, 1:]) & (pixels[None] < corner[:, 1:] + SPOT)
    return rows[:, :, None] & cols[:, None, :]


def spot_images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(count, 3, SIZE, SIZE)`` images in [0, 1] and ``(count, SIZE, SIZE)`` green-square masks.

    Grey 4 x 4-pixel blocks of random level, then a red square and a green one at uniformly drawn
    corners (the green one painted last, so it is always whole).
    """
    generator = torch.Generator().manual_seed(seed)
    grey = 0.2 + 0.6 * torch.rand(count, 1, SIZE // 4, SIZE // 4, generator=generator)
    images = F.interpolate(grey.expand(-1, 3, -1, -1), scale_factor=4, mode="nearest")
    spots = []
    for colour in ((0.9, 0.1, 0.1), (0.1, 0.9, 0.1)):
        corner = torch.randint(0, SIZE - SPOT + 1, (count, 2), generator=generator)
        spot = _square(corner)
        paint = torch.tensor(colour).view(1, 3, 1, 1).expand_as(images)
        images = torch.where(spot[:, None], paint, images)
        spots.append(spot)
    return images.contiguous(), spots[-1]
