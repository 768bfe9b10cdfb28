"""Evaluation of explanation methods against each other.

- :class:`MethodComparison`: every metric (AD/IC, ROAD, deletion/insertion, pointing games,
  mask IoU, optional max-sensitivity), passes and time per image, for every method, from one
  explanation per method and image; plus a gallery and misclassified examples.
- :func:`write_report`: ``comparison.csv``, ``comparison.md`` and a self-contained
  ``report.html``; :func:`log_to_wandb` logs the rows as a W&B table.
- :func:`model_randomisation`: the model-randomisation sanity check (cascading/independent).
- :class:`UnitAlignment` / :func:`unit_alignment`: network-dissection-style alignment of the
  target layer's channels with object classes.
"""

from lcam.evaluation.comparison import (
    ALL_METRICS,
    DEFAULT_METRICS,
    MethodComparison,
    MethodCost,
    boxes_to_object_masks,
)
from lcam.evaluation.dissection import (
    UnitAlignment,
    alignment_rows,
    channel_quantiles,
    unit_alignment,
)
from lcam.evaluation.report import log_to_wandb, write_report
from lcam.evaluation.sanity import model_randomisation, randomisable_layers, spearman

__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "MethodComparison",
    "MethodCost",
    "UnitAlignment",
    "alignment_rows",
    "boxes_to_object_masks",
    "channel_quantiles",
    "log_to_wandb",
    "model_randomisation",
    "randomisable_layers",
    "spearman",
    "unit_alignment",
    "write_report",
]
