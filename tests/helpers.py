"""Small shared builders for tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import torch
from pytorch_lightning import Trainer

from lcam.backbone import FrozenBackbone
from lcam.models import TinyResNet
from lcam.models.tiny import SHAPES_WEIGHTS
from lcam.module import LCAMModule


def tiny_backbone(num_classes: int = 5, width: int = 8, input_size: int = 32) -> FrozenBackbone:
    """A randomly initialised TinyResNet with non-trivial BatchNorm statistics."""
    model = TinyResNet(num_classes=num_classes, width=width)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return FrozenBackbone(model, input_size=input_size)


def shapes_module(head: str = "lcam_fm", lr: float = 1e-2, **options: object) -> LCAMModule:
    """An LCAMModule on the shipped TinyResNet (64 px), Adam at a constant ``lr``."""
    return LCAMModule(
        backbone="lcam.models.TinyResNet",
        weights=str(SHAPES_WEIGHTS),
        num_classes=6,
        input_size=64,
        head=head,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        lr_scheduler=None,
        **options,
    )


def quiet_trainer(**options: object) -> Trainer:
    """A CPU trainer with no logger, checkpoints, progress bar or summary."""
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of two ``(B, ...)`` tensors -> ``(B,)``."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)
