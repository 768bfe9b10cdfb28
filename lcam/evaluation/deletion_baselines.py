"""Deletion and insertion AUC under several baselines at once, as one metric of the comparison.

A deletion curve removes the most salient pixels first; an insertion curve adds them to a start
image. What removed pixels become and what insertion starts from (the *baseline*) changes the
scores: a black square is far from the images the classifier saw, a blurred region less so. The
comparison therefore scores both by default, one
:class:`~lcam.metrics.DeletionInsertion` per baseline ``b`` (deletion to ``b``, insertion from
``b``).

Column names (:func:`auc_columns`): the RISE paper's pair keeps the unsuffixed names it always
had in lcam, ``deletion_auc`` (pixels removed to black) and ``insertion_auc`` (pixels added to
the blurred image), so that earlier tables, ``val/deletion_auc`` and ``val/insertion_auc`` keep
their meaning; the other baseline of each curve is suffixed: ``deletion_auc_blur``,
``insertion_auc_black``.

Cost: ``2 * (deletion_steps + 1)`` forwards per image and baseline (404 for the default 100 steps
and two baselines, against 202 for one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.evaluation.options import DELETION_BASELINES
from lcam.metrics import DeletionInsertion, trapezoid_auc
from lcam.metrics.common import Model

__all__ = ["DeletionInsertionBaselines", "auc_columns"]

_RISE = {"deletion": "black", "insertion": "blur"}  # the RISE paper's baseline of each curve


def auc_columns(baseline: str) -> dict[str, str]:
    """``{"deletion": column, "insertion": column}`` of ``baseline``: unsuffixed where it is the
    RISE paper's baseline of that curve, else suffixed ``_<baseline>``."""
    return {
        curve: f"{curve}_auc" if _RISE[curve] == baseline else f"{curve}_auc_{baseline}"
        for curve in ("deletion", "insertion")
    }


class DeletionInsertionBaselines(Metric):
    """Deletion and insertion curves under every baseline, from the same maps.

    Each baseline's per-image curves come from a :class:`~lcam.metrics.DeletionInsertion`
    (:meth:`~lcam.metrics.DeletionInsertion.curves`, deletion to the baseline and insertion
    from it), held by reference; the sums of the curves are this metric's own states, so DDP
    reduction and :meth:`merge_state` are exact as for one baseline.

    ``update(images, maps, targets=None)`` as :class:`~lcam.metrics.DeletionInsertion`: images
    ``(B, 3, H, W)`` in [0, 1], raw maps ``(B, h, w)``, targets ``(B,)`` (default: predicted).
    ``compute()`` returns ``{column: mean AUC}`` (see :func:`auc_columns`), deletion first.

    Args:
        model: callable ``(B, 3, H, W)`` -> ``(B, K)`` logits, held by reference.
        baselines: ``"black"`` and/or ``"blur"``.
        steps, batch_size: as :class:`~lcam.metrics.DeletionInsertion`.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    count: Tensor

    def __init__(
        self,
        model: Model,
        baselines: Sequence[str] = DELETION_BASELINES,
        steps: int = 100,
        batch_size: int = 64,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if not baselines or len(set(baselines)) != len(baselines):
            raise ValueError(f"baselines must be distinct and non-empty, got {tuple(baselines)}")
        # Not submodules: they only compute curves; the sums below are the states.
        self.__dict__["curve_makers"] = {
            baseline: DeletionInsertion(
                model, steps, batch_size, baseline=baseline, deletion_baseline=baseline
            )
            for baseline in baselines
        }
        self.baselines = tuple(baselines)
        self.steps = steps
        for baseline in baselines:
            for curve in ("deletion", "insertion"):
                self.add_state(f"{curve}_{baseline}_sum", torch.zeros(steps + 1), "sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    @property
    def fractions(self) -> Tensor:
        """``(steps + 1,)`` x axis of the curves: the changed share of pixels."""
        return torch.linspace(0.0, 1.0, self.steps + 1)

    def update(self, images: Tensor, maps: Tensor, targets: Tensor | None = None) -> None:
        """Accumulate every baseline's curves of a batch."""
        for baseline, maker in self.curve_makers.items():
            deletion, insertion = maker.curves(images, maps, targets)  # (B, steps + 1) each
            for curve, values in (("deletion", deletion), ("insertion", insertion)):
                state = getattr(self, f"{curve}_{baseline}_sum")
                setattr(self, f"{curve}_{baseline}_sum", state + values.sum(dim=0).to(state))
        self.count += images.shape[0]

    def mean_curves(self) -> dict[str, Tensor]:
        """``{column: (steps + 1,) mean curve}``, deletion columns first, the RISE paper's
        baseline first within each curve."""
        count = self.count.clamp_min(1)
        return {
            auc_columns(baseline)[curve]: getattr(self, f"{curve}_{baseline}_sum") / count
            for curve in ("deletion", "insertion")
            for baseline in sorted(self.baselines, key=lambda name: name != _RISE[curve])
        }

    def compute(self) -> dict[str, Tensor]:
        """``{column: mean AUC}`` (the AUC of the mean curve, as for one baseline)."""
        return {column: trapezoid_auc(curve) for column, curve in self.mean_curves().items()}

    def curves(self) -> dict[str, list[float]]:
        """``{"fractions", <curve>: mean curve}`` as lists of floats, each curve named as its
        column without ``_auc`` (``deletion``, ``deletion_blur``, ``insertion``, ...)."""
        curves = {
            column.replace("_auc", ""): curve.float().cpu().tolist()
            for column, curve in self.mean_curves().items()
        }
        return {"fractions": self.fractions.tolist(), **curves}
