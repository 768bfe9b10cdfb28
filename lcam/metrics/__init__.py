"""Evaluation metrics of explanations, as ``torchmetrics.Metric`` subclasses (layer L4: depends
only on the leaf helpers :mod:`lcam.maps`; shared pieces in :mod:`lcam.metrics.common`).

All states are sums reduced with ``dist_reduce_fx="sum"``, so values under DDP equal the
single-process ones. Perturbation metrics take any callable ``images -> logits`` as the model
(e.g. a :class:`~lcam.backbone.FrozenBackbone`).

- Faithfulness: :class:`AverageDropIncrease` (AD/IC, the L-CAM/TAME protocol),
  :class:`DeletionInsertion` (RISE deletion/insertion AUC), :class:`ROAD` (noisy linear
  imputation, MoRF/LeRF).
- Localisation: :class:`PointingGame`, :class:`EnergyPointingGame`, :class:`MaskIoU`
  (:func:`boxes_to_masks` turns boxes into masks).
- Robustness: :class:`MaxSensitivity`.
- Quantus-style (each compared with Quantus or captum in its tests):
  :class:`FaithfulnessCorrelation`, :class:`Monotonicity`, :class:`Infidelity` (faithfulness),
  :class:`Sparseness` (complexity), :class:`RandomLogit` (randomisation).
"""

from lcam.metrics.common import soft_keep_masks
from lcam.metrics.deletion import DeletionInsertion, trapezoid_auc
from lcam.metrics.faithfulness import AverageDropIncrease
from lcam.metrics.faithfulness_correlation import FaithfulnessCorrelation
from lcam.metrics.infidelity import Infidelity
from lcam.metrics.localisation import EnergyPointingGame, MaskIoU, PointingGame, boxes_to_masks
from lcam.metrics.monotonicity import Monotonicity
from lcam.metrics.random_logit import RandomLogit
from lcam.metrics.road import ROAD, noisy_linear_imputation
from lcam.metrics.robustness import MaxSensitivity
from lcam.metrics.sparseness import Sparseness

__all__ = [
    "ROAD",
    "AverageDropIncrease",
    "DeletionInsertion",
    "EnergyPointingGame",
    "FaithfulnessCorrelation",
    "Infidelity",
    "MaskIoU",
    "MaxSensitivity",
    "Monotonicity",
    "PointingGame",
    "RandomLogit",
    "Sparseness",
    "boxes_to_masks",
    "noisy_linear_imputation",
    "soft_keep_masks",
    "trapezoid_auc",
]
