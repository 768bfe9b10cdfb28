"""Small shared builders for tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import torch

from lcam.backbone import FrozenBackbone
from lcam.models import TinyResNet


def tiny_backbone(num_classes: int = 5, width: int = 8, input_size: int = 32) -> FrozenBackbone:
    """A randomly initialised TinyResNet with non-trivial BatchNorm statistics."""
    model = TinyResNet(num_classes=num_classes, width=width)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return FrozenBackbone(model, input_size=input_size)
