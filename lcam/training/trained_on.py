"""Which columns of the method comparison a head's training objective optimises.

A head that trains on a metric can win it without explaining the model any better, so the
comparison marks, per row, the columns the row's objective trains on and groups them apart from
the independent ones (:class:`lcam.evaluation.MethodComparison`, ``trained_on``). The set is
derived here from the module's loss settings, never typed per run; each term states its own
part (:meth:`~lcam.training.losses.LCAMLoss.trained_on`,
:attr:`~lcam.training.kept_fraction.KeptFractionLoss.trained_on`). The decisions:

- the L-CAM cross-entropy on the image masked by the map (L-CAM-Img, TAME): ``ad@100``,
  ``ic@100``; on masked features (L-CAM-Fm): nothing;
- the area term: ``sparseness``;
- the kept-fraction term: ``ad@<p>`` and ``ic@<p>`` at its fractions;
- the removed-fraction term: the deletion column of each fill it removes with that the metric
  uses (black: ``deletion_auc``, blur: ``deletion_auc_blur``);
- the masked-response term: ``faithfulness_correlation`` and ``infidelity`` (it fits the map's
  sum over each random mask to the model's response to that mask, the linear relation between
  map and perturbed responses those two columns score);

Every term scored through the frozen network states its own columns as a ``trained_on``
property (:attr:`~lcam.training.removed_fraction.RemovedFractionLoss.trained_on`,
:attr:`~lcam.training.masked_response.MaskedResponseLoss.trained_on`).
- distillation from a teacher: nothing (it trains on agreement with the teacher's maps, which
  no column scores).

Checkpoint selection on a validation score (``faithfulness_metrics``, ``ModelCheckpoint``'s
``monitor``) is not an objective and is not counted; a head selected on ``val/ad_15`` has still
been chosen by that metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from lcam.heads import LCAMFmHead, LCAMHead, LCAMImgHead
from lcam.training.kept_fraction import KeptFractionLoss
from lcam.training.losses import LCAMLoss
from lcam.training.masked_response import MaskedResponseLoss
from lcam.training.removed_fraction import RemovedFractionLoss

__all__ = ["MAP_TERMS", "MapTerm", "head_masks_image", "map_terms", "objective_columns"]

MAP_TERMS = {
    "masked_response": MaskedResponseLoss,
    "kept_fraction": KeptFractionLoss,
    "removed_fraction": RemovedFractionLoss,
}
"""The optional loss terms on the head's maps, each set by ``<name>_weight`` and
``<name>_options`` of :class:`~lcam.training.LCAMModule`."""


class MapTerm(Protocol):
    """A loss term on the head's maps that names the comparison columns it optimises."""

    @property
    def trained_on(self) -> frozenset[str]: ...


def head_masks_image(head: LCAMHead) -> bool:
    """Whether ``head``'s training forward masks the image (L-CAM-Img, TAME and their
    subclasses) rather than the features (L-CAM-Fm).

    Raises:
        TypeError: for a head of neither family, whose objective this module cannot name.
    """
    if isinstance(head, LCAMImgHead):
        return True
    if isinstance(head, LCAMFmHead):
        return False
    raise TypeError(
        f"{type(head).__name__} masks neither like LCAMImgHead nor like LCAMFmHead: say in "
        "lcam.training.trained_on which comparison columns its objective trains on"
    )


def map_terms(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: term}`` of the terms whose ``<name>_weight`` is positive in ``settings`` (the
    module's hyperparameters, or a checkpoint's: a test run marks what the head was trained
    with, whatever its own config says)."""
    return {
        name: term(**(settings.get(f"{name}_options") or {}))
        for name, term in MAP_TERMS.items()
        if (settings.get(f"{name}_weight") or 0) > 0
    }


def objective_columns(
    head: LCAMHead, criterion: LCAMLoss, terms: Iterable[MapTerm] = ()
) -> frozenset[str]:
    """The comparison columns the objective of ``head`` trained with these terms optimises.

    Args:
        head: the trained head (its training forward decides the cross-entropy's part).
        criterion: the L-CAM loss with its weights.
        terms: the further terms with positive weight (kept fraction, removed fraction, masked
            response), each naming its columns.
    """
    columns = set(criterion.trained_on(head_masks_image(head)))
    for term in terms:
        columns |= term.trained_on
    return frozenset(columns)
