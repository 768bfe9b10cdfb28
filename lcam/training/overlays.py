"""The validation overlay grid: fixed images beside their explanation, once per epoch."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_lightning.loggers import Logger, WandbLogger
from torch import Tensor

from lcam._io import atomic_write
from lcam.explainers import Explainer
from lcam.viz import overlay, to_uint8

__all__ = ["log_overlay_grid", "overlay_grid", "overlay_path"]


def overlay_grid(explainer: Explainer, images: Tensor) -> np.ndarray:
    """A picture ``(H', W', 3)`` uint8: two columns, each image ``(B, 3, H, W)`` in [0, 1] beside
    its overlay (predicted class)."""
    with torch.no_grad():
        explanation = explainer.explain(images)
    pairs = torch.stack([images, overlay(images, explanation.maps)], dim=1).flatten(0, 1)
    return to_uint8(torchvision.utils.make_grid(pairs, nrow=2, padding=2)).numpy()


def overlay_path(directory: Path, epoch: int, fitting: bool) -> Path:
    """Where a validation loop's grid goes: ``epoch_NNN.png`` while fitting; for a standalone
    ``validate`` run the first free ``validate_NNN.png``, so that it never replaces the grids the
    training run wrote (it would otherwise write ``epoch_000.png`` over the first epoch's)."""
    if fitting:
        return directory / f"epoch_{epoch:03d}.png"
    names = (directory / f"validate_{number:03d}.png" for number in itertools.count())
    return next(path for path in names if not path.exists())


def log_overlay_grid(grid: np.ndarray, path: Path | None, loggers: list[Logger], step: int) -> None:
    """Write ``grid`` as a PNG at ``path`` (atomically; ``None``: no file) and log it to W&B."""
    if path is not None:
        picture = Image.fromarray(grid)
        atomic_write(path, lambda temporary: picture.save(temporary, format="PNG"))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image("val/overlays", images=[grid], step=step)
