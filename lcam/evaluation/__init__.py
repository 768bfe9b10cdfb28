"""Evaluation of explanation methods against each other (layer L5: uses metrics, explainers,
backbone and the leaf helpers; training and inference build on it).

- :mod:`~lcam.evaluation.specs`: the one table of metrics (name -> factory, maps scored,
  columns with direction and headline flag); :mod:`~lcam.evaluation.options`: their settings
  (:class:`ComparisonOptions`, every key of ``--model.comparison``);
  :mod:`~lcam.evaluation.deletion_baselines`: deletion/insertion under both baselines.
- :class:`MethodComparison` (:mod:`~lcam.evaluation.comparison`): every metric, passes and time
  per image, for every method, from one ``explain()`` call per method and batch
  (:mod:`~lcam.evaluation.protocol` keeps the raw maps AD/IC scores; :mod:`~lcam.evaluation.cost`
  and :mod:`~lcam.evaluation.examples` hold the cost states and the gallery).
- :func:`write_report` (:mod:`~lcam.evaluation.report`): ``comparison.csv``, ``comparison.md``
  and a self-contained ``report.html`` (:func:`write_tables`: the two tables alone, first);
  :func:`log_to_wandb` logs the rows as a W&B table.
- :func:`model_randomisation` (:mod:`~lcam.evaluation.sanity`): the model-randomisation sanity
  check (cascading/independent).
- :class:`UnitAlignment` / :func:`unit_alignment` (:mod:`~lcam.evaluation.dissection`):
  network-dissection-style alignment of the target layer's channels with object classes.
"""

from lcam.evaluation.comparison import (
    ALL_METRICS,
    COMPARISON_KEYS,
    DEFAULT_METRICS,
    MethodComparison,
    MethodCost,
    boxes_to_object_masks,
    check_comparison_options,
)
from lcam.evaluation.dissection import (
    UnitAlignment,
    alignment_rows,
    channel_quantiles,
    unit_alignment,
)
from lcam.evaluation.options import ComparisonOptions
from lcam.evaluation.protocol import LEARNED_MAPS, LearnedMaps, check_learned_maps
from lcam.evaluation.report import log_to_wandb, write_report, write_tables
from lcam.evaluation.sanity import model_randomisation, randomisable_layers, spearman

__all__ = [
    "ALL_METRICS",
    "COMPARISON_KEYS",
    "DEFAULT_METRICS",
    "ComparisonOptions",
    "LEARNED_MAPS",
    "LearnedMaps",
    "MethodComparison",
    "MethodCost",
    "UnitAlignment",
    "alignment_rows",
    "boxes_to_object_masks",
    "channel_quantiles",
    "check_comparison_options",
    "check_learned_maps",
    "log_to_wandb",
    "model_randomisation",
    "randomisable_layers",
    "spearman",
    "unit_alignment",
    "write_report",
    "write_tables",
]
