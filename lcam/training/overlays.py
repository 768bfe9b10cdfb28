"""The validation overlay grid: fixed images beside their explanation, once per epoch."""

from __future__ import annotations

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

__all__ = ["log_overlay_grid", "overlay_grid"]


def overlay_grid(explainer: Explainer, images: Tensor) -> np.ndarray:
    """A picture ``(H', W', 3)`` uint8: two columns, each image ``(B, 3, H, W)`` in [0, 1] beside
    its overlay (predicted class)."""
    with torch.no_grad():
        explanation = explainer.explain(images)
    pairs = torch.stack([images, overlay(images, explanation.maps)], dim=1).flatten(0, 1)
    return to_uint8(torchvision.utils.make_grid(pairs, nrow=2, padding=2)).numpy()


def log_overlay_grid(grid: np.ndarray, path: Path | None, loggers: list[Logger], step: int) -> None:
    """Write ``grid`` as a PNG at ``path`` (atomically; ``None``: no file) and log it to W&B."""
    if path is not None:
        picture = Image.fromarray(grid)
        atomic_write(path, lambda temporary: picture.save(temporary, format="PNG"))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image("val/overlays", images=[grid], step=step)
