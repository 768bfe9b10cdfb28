"""A tiny ResNet-style classifier for the synthetic shapes data (fast enough for CPU tests).

Layout and attribute names follow torchvision's ResNet (``stem``/``layer1..4``/``avgpool``/``fc``,
each ``layerN`` an ``nn.Sequential`` of one basic block), so code written for torchvision models
(e.g. hooking ``model.layer4`` or ``model.layer4[-1]``) works unchanged. The forward pass is
``torch.fx`` symbolically traceable.

Inputs must already be normalised with the ImageNet mean/std
``(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)``; the model does no normalisation itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["SHAPES_WEIGHTS", "BasicBlock", "TinyResNet"]

SHAPES_WEIGHTS: Path = Path(__file__).resolve().parent / "weights" / "tiny_resnet_shapes.pt"
"""State dict of ``TinyResNet(num_classes=6, width=32)`` trained on ``SyntheticShapes``
(64x64, 6 classes) by ``benchmarks/experiments/train_tiny_backbone.py``.

Floating-point tensors are stored as float16 to keep the file small; ``load_state_dict`` casts
them to the model's dtype. Load with
``model.load_state_dict(torch.load(SHAPES_WEIGHTS, weights_only=True))``.
"""


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (torchvision-style basic block).

    Maps ``(B, in_channels, H, W)`` to ``(B, out_channels, H / stride, W / stride)``. A 1x1
    conv + BN projection (``downsample``) is used on the shortcut when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class TinyResNet(nn.Module):
    """Small ResNet classifier: ``(B, 3, H, W)`` normalised images -> ``(B, num_classes)`` logits.

    Stages (for a 64x64 input, ``width=32``):
        ``stem``   conv3x3 3->w, BN, ReLU       -> (B, 32, 64, 64)
        ``layer1`` basic block w->w, stride 2    -> (B, 32, 32, 32)
        ``layer2`` basic block w->2w, stride 2   -> (B, 64, 16, 16)
        ``layer3`` basic block 2w->4w, stride 2  -> (B, 128, 8, 8)
        ``layer4`` basic block 4w->4w, stride 1  -> (B, 128, 8, 8)

    The first block downsamples so that a 64x64 forward costs about 0.14 GFLOP while the
    target-layer maps stay 8x8.
        ``avgpool`` (global), flatten, ``fc`` Linear 4w->num_classes.
    """

    def __init__(self, num_classes: int = 6, width: int = 32) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.num_classes = num_classes
        self.width = width
        self.stem = nn.Sequential(_conv3x3(3, width), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(width, width, stride=2))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, stride=2))
        self.layer4 = nn.Sequential(BasicBlock(4 * width, 4 * width, stride=1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Start each residual branch at zero so every block is initially the shortcut.
        for block in (self.layer1[0], self.layer2[0], self.layer3[0], self.layer4[0]):
            nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` normalised images; returns ``(B, num_classes)`` logits."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)
