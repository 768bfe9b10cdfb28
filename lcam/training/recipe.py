"""Optimizer and learning-rate schedule of a head: the papers' recipe and the parameter groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

__all__ = ["configure_head_optimizer", "paper_optimizer", "paper_scheduler"]


def paper_optimizer(params: Any) -> torch.optim.Optimizer:
    """The L-CAM VGG-16 recipe: SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 1e-2."""
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=5e-4)


def paper_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The L-CAM VGG-16 recipe: learning rate x0.75 per epoch."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.75)


def _build_scheduler(
    factory: LRSchedulerCallable,
    optimizer: torch.optim.Optimizer,
    total_steps: Callable[[], int] | None,
) -> Any:
    keywords = getattr(factory, "keywords", {})
    if keywords.get("total_steps", 0) is None and keywords.get("epochs") is None:
        # One-cycle schedules need the run's length, which only the trainer knows.
        if total_steps is None:
            raise ValueError("this learning-rate schedule needs the run's total number of steps")
        return factory(optimizer, total_steps=int(total_steps()))
    return factory(optimizer)


def configure_head_optimizer(
    head: nn.Module,
    optimizer: OptimizerCallable,
    lr_scheduler: LRSchedulerCallable | None,
    *,
    bias_lr_multiplier: float,
    bias_weight_decay: bool,
    scheduler_interval: Literal["epoch", "step"],
    total_steps: Callable[[], int] | None = None,
) -> Any:
    """What ``configure_optimizers`` returns for ``head``: two groups, weights then biases.

    The biases learn ``bias_lr_multiplier`` times faster and, unless ``bias_weight_decay``, without
    weight decay (L-CAM decays them, TAME does not). ``total_steps()`` (asked only when
    needed: it may set up the training data) feeds schedules created with ``total_steps=None``
    (one-cycle).
    """
    weights = [p for name, p in head.named_parameters() if not name.endswith("bias")]
    biases = [p for name, p in head.named_parameters() if name.endswith("bias")]
    built = optimizer([{"params": weights}, {"params": biases}])
    built.param_groups[1]["lr"] *= bias_lr_multiplier
    if not bias_weight_decay:
        built.param_groups[1]["weight_decay"] = 0.0
    if lr_scheduler is None:
        return built
    scheduler = _build_scheduler(lr_scheduler, built, total_steps)
    return {
        "optimizer": built,
        "lr_scheduler": {"scheduler": scheduler, "interval": scheduler_interval},
    }
