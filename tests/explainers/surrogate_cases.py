"""What the LIME/KernelSHAP tests share: the image side and a backbone on a hand-built model."""

from __future__ import annotations

from torch import nn

from lcam.backbone import FrozenBackbone

SIZE = 32


def raw_backbone(model: nn.Module) -> FrozenBackbone:
    return FrozenBackbone(
        model, input_size=SIZE, target_layer="conv", mean=(0, 0, 0), std=(1, 1, 1)
    )
