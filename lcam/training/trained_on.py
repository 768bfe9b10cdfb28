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
- the masked-response term: ``faithfulness_correlation`` and ``infidelity`` (it fits the map's
  sum over each random mask to the model's response to that mask, the linear relation between
  map and perturbed responses those two columns score);
- distillation from a teacher: nothing (it trains on agreement with the teacher's maps, which
  no column scores).

Checkpoint selection on a validation score (``faithfulness_metrics``, ``ModelCheckpoint``'s
``monitor``) is not an objective and is not counted; a head selected on ``val/ad_15`` has still
been chosen by that metric.
"""

from __future__ import annotations

from lcam.heads import LCAMFmHead, LCAMHead, LCAMImgHead
from lcam.training.kept_fraction import KeptFractionLoss
from lcam.training.losses import LCAMLoss

__all__ = ["MASKED_RESPONSE_COLUMNS", "head_masks_image", "objective_columns"]

MASKED_RESPONSE_COLUMNS = frozenset({"faithfulness_correlation", "infidelity"})
"""The columns the masked-response term trains on (see the module docstring)."""


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


def objective_columns(
    head: LCAMHead,
    criterion: LCAMLoss,
    kept_fraction: KeptFractionLoss | None = None,
    masked_response: bool = False,
) -> frozenset[str]:
    """The comparison columns the objective of ``head`` trained with these terms optimises.

    Args:
        head: the trained head (its training forward decides the cross-entropy's part).
        criterion: the L-CAM loss with its weights.
        kept_fraction: the kept-fraction term, when its weight is positive.
        masked_response: the masked-response term's weight is positive.
    """
    columns = set(criterion.trained_on(head_masks_image(head)))
    if kept_fraction is not None:
        columns |= kept_fraction.trained_on
    if masked_response:
        columns |= MASKED_RESPONSE_COLUMNS
    return frozenset(columns)
