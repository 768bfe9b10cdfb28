"""The labels of the global batch under data-parallel training.

Under DDP every process holds ``B_r`` of the global batch's images. A loss term that looks at the
labels of *other* images (the L-CAM ``"batch"`` map selection) needs the labels of all ranks to
equal the single-process term with the same global batch.
"""

from __future__ import annotations

import torch
from pytorch_lightning import LightningModule
from torch import Tensor

__all__ = ["global_labels"]


def global_labels(module: LightningModule, labels: Tensor) -> Tensor:
    """The labels ``(N,)`` of every process's batch, rank by rank (``labels`` ``(B,)`` itself
    outside a multi-process run).

    Every process must call this at the same step (it is a collective). Ranks may hold batches of
    different sizes (an uneven last batch): their sizes are gathered first and the padding is
    dropped, so ``N`` is the sum of the ranks' batch sizes.
    """
    trainer = module._trainer  # noqa: SLF001 - ``module.trainer`` raises when detached
    if trainer is None or trainer.world_size <= 1:
        return labels
    sizes = module.all_gather(torch.tensor(len(labels), device=labels.device)).reshape(-1)
    largest = int(sizes.max())
    padded = labels.new_full((largest,), -1)
    padded[: len(labels)] = labels
    gathered = module.all_gather(padded).reshape(len(sizes), largest)
    keep = torch.arange(largest, device=labels.device) < sizes[:, None].to(labels.device)
    return gathered[keep]
