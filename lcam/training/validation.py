"""Faithfulness on a fixed validation subset, each epoch, so checkpoints can be chosen by it.

With ``faithfulness_subset: n`` the validation loop also scores the head on ``n`` validation
images drawn once, class-stratified (see :mod:`lcam.training.validation_subset`; the log names
the classes it covers), exactly as a ``test`` run's method comparison scores it: the
**pre-sigmoid** logit map of the predicted class, min-max normalised, upsampled (with
``faithfulness_maps: shown``, the map the head shows, as ``comparison: {learned_maps: shown}``
scores it). ``faithfulness_metrics`` chooses the scores:

- ``"adic"``: the L-CAM/TAME Average Drop / Increase in Confidence protocol
  (:class:`~lcam.metrics.AverageDropIncrease`, kept fractions 100 %, 50 %, 15 %), logged as
  ``val/ad_100`` ... ``val/ic_15`` (percentages). The kept-fraction training term trains on it.
- ``"deletion_insertion"``: the RISE paper's deletion and insertion AUC
  (:class:`~lcam.metrics.DeletionInsertion`, blurred insertion baseline, ``deletion_steps``
  steps), logged as ``val/deletion_auc`` (lower is better) and ``val/insertion_auc``; no head
  trains on it, e.g. ``ModelCheckpoint(monitor="val/deletion_auc", mode="min")``.

The sums are reduced over processes, and under DDP every subset image is scored by one process
only (the sampler's padding repeats are skipped), so the values equal the single-process ones.
Batches without an ``index`` fall back to the first ``n`` images seen (one process). Cost per
subset image: one clean forward and one per fraction (AD/IC), ``2 (steps + 1)`` forwards
(deletion/insertion; 42 with the default 20 steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import Metric

from lcam.backbone import FrozenBackbone
from lcam.metrics import AverageDropIncrease, DeletionInsertion
from lcam.training.validation_subset import (
    dataset_labels,
    describe_subset,
    own_indices,
    stratified_subset,
)

__all__ = ["FAITHFULNESS_METRICS", "ValidationFaithfulness", "logged_name"]

FAITHFULNESS_METRICS: tuple[str, ...] = ("adic", "deletion_insertion")
"""Names ``faithfulness_metrics`` accepts."""


def logged_name(key: str) -> str:
    """``"ic@15"`` -> ``"ic_15"``: metric keys as logged names (``@`` is awkward in file names
    that ``ModelCheckpoint`` builds from monitored values)."""
    return key.replace("@", "_")


def _metric(name: str, backbone: FrozenBackbone, batch_size: int, deletion_steps: int) -> Metric:
    if name == "adic":
        return AverageDropIncrease(backbone, (1.0, 0.5, 0.15), batch_size)
    if name == "deletion_insertion":
        return DeletionInsertion(backbone, steps=deletion_steps, batch_size=batch_size)
    raise ValueError(
        f"unknown faithfulness metric {name!r}; choose from {', '.join(FAITHFULNESS_METRICS)}"
    )


class ValidationFaithfulness(nn.Module):
    """Faithfulness scores of a head's maps on a fixed subset of the validation set.

    Args:
        backbone: the frozen classifier (held by reference by the metrics).
        subset: images scored per epoch; must be >= 1.
        metrics: names from :data:`FAITHFULNESS_METRICS` (default ``("adic",)``).
        batch_size: images per forward pass inside the metrics.
        deletion_steps: steps of the deletion/insertion curves: 20 by default, a coarser curve
            than the comparison's 100 (42 forwards per image instead of 202); 100 gives the
            test-time table's values.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        subset: int,
        metrics: Sequence[str] = ("adic",),
        batch_size: int = 64,
        deletion_steps: int = 20,
    ) -> None:
        super().__init__()
        if subset < 1:
            raise ValueError(f"faithfulness_subset must be >= 1 to be scored, got {subset}")
        if not metrics:
            raise ValueError(f"faithfulness_metrics is empty; choose from {FAITHFULNESS_METRICS}")
        self.subset = subset
        self.metrics = nn.ModuleDict(
            {name: _metric(name, backbone, batch_size, deletion_steps) for name in metrics}
        )
        self.indices: Tensor | None = None  # the subset's dataset indices, once chosen
        self._scored: Tensor | None = None  # the ones this process scores
        self.seen = 0  # images streamed this epoch, for batches without an ``index``

    def choose(self, loader: Any, class_names: Sequence[str] | None = None) -> str | None:
        """Draw the subset from the validation ``loader``'s dataset, and this process's share of it
        from the loader's sampler (called as each validation starts; the draw is fixed).

        Returns the log line naming the classes covered when the subset differs from the last
        one drawn, else None (the same subset again, or a loader without a sized dataset: then
        the first ``subset`` images seen are scored).
        """
        dataset = getattr(loader, "dataset", None) if isinstance(loader, DataLoader) else None
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            self.indices = self._scored = None
            return None
        labels = dataset_labels(dataset)
        previous, self.indices = self.indices, stratified_subset(labels, size, self.subset)
        mine = own_indices(loader.sampler)
        self._scored = (
            self.indices if mine is None else self.indices[torch.isin(self.indices, mine)]
        )
        if previous is not None and torch.equal(previous, self.indices):
            return None
        return describe_subset(self.indices, labels, size, class_names)

    def update(self, images: Tensor, logit_maps: Tensor, indices: Tensor | None) -> None:
        """Score the batch's images of the subset.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            logit_maps: ``(B, h, w)`` maps of each image's predicted class, as the test run scores
                them (pre-sigmoid, or the shown maps; see the module docstring).
            indices: ``(B,)`` dataset indices, or None (then the first ``subset`` images seen
                this epoch form the subset).
        """
        if indices is not None and self._scored is not None:
            keep = torch.isin(indices.to(images.device), self._scored.to(images.device))
        elif indices is not None:
            keep = indices.to(images.device) < self.subset
        else:
            keep = torch.arange(len(images), device=images.device) < self.subset - self.seen
        self.seen += len(images)
        if bool(keep.any()):
            for metric in self.metrics.values():
                metric.update(images[keep], logit_maps[keep].float())

    def compute(self) -> dict[str, Tensor]:
        """Logged name -> value over every process (``ad_100`` ... in percent, ``deletion_auc``
        and ``insertion_auc`` as probabilities); then reset."""
        values = {
            logged_name(key): value
            for metric in self.metrics.values()
            for key, value in metric.compute().items()
        }
        self.reset()
        return values

    def reset(self) -> None:
        """Forget the epoch's sums."""
        for metric in self.metrics.values():
            metric.reset()
        self.seen = 0
