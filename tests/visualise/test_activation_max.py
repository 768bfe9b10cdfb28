from __future__ import annotations

import pytest
import torch
from torch import nn

from lcam.backbone import FrozenBackbone
from lcam.visualise.activation_max import activation_maximisation


class RedCorner(nn.Module):
    """Class 0 = mean red in the top-left quadrant; class 1 = mean green everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        half = features.shape[-1] // 2
        corner = features[:, 0, :half, :half].mean(dim=(1, 2))
        green = features[:, 1].mean(dim=(1, 2))
        return torch.stack([corner, green], dim=1)


def _backbone() -> FrozenBackbone:
    return FrozenBackbone(RedCorner(), input_size=16, target_layer="conv")


def test_class_maximisation_paints_the_planted_region() -> None:
    backbone = _backbone()
    images = activation_maximisation(backbone, [0, 1], steps=60, jitter=0, tv_weight=0.0)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    red_corner = images[0, 0, :8, :8].mean()
    assert red_corner > 0.9 and red_corner > images[0, 0, 8:, 8:].mean() + 0.3
    assert images[1, 1].mean() > 0.9  # class 1 wants green everywhere
    logits = backbone(images)
    assert logits[0, 0] > logits[1, 0] and logits[1, 1] > logits[0, 1]


def test_channel_maximisation_and_seeds() -> None:
    backbone = _backbone()
    channel = activation_maximisation(backbone, [1], layer="conv", steps=30, jitter=0)
    assert channel[0, 1].mean() > 0.8
    first = activation_maximisation(backbone, [0], steps=5, seed=3)
    torch.testing.assert_close(first, activation_maximisation(backbone, [0], steps=5, seed=3))
    assert not torch.equal(first, activation_maximisation(backbone, [0], steps=5, seed=4))
    assert not any(p.requires_grad for p in backbone.parameters())


def test_out_of_range_targets_are_refused() -> None:
    with pytest.raises(ValueError, match=r"out of range: 2 classes"):
        activation_maximisation(_backbone(), [2], steps=1)
    with pytest.raises(ValueError, match="not a module"):
        activation_maximisation(_backbone(), [0], layer="nope", steps=1)
