"""The one table of the metrics a method comparison computes.

Each :class:`MetricSpec` says, for one metric name, how to build the metric for a method, which
maps it scores, how a batch updates it, which row entries it yields and, per table column, which
direction is better and whether the report's headline table shows it. The comparison
(:mod:`lcam.evaluation.comparison`) and the report (:mod:`lcam.evaluation.report`) read this
table; no other module spells a metric name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lcam.evaluation.deletion_baselines import DeletionInsertionBaselines
from lcam.evaluation.options import ComparisonOptions, option_names
from lcam.evaluation.protocol import check_learned_maps
from lcam.explainers import Explainer
from lcam.metrics import (
    ROAD,
    AverageDropIncrease,
    EnergyPointingGame,
    FaithfulnessCorrelation,
    Infidelity,
    MaskIoU,
    MaxSensitivity,
    Monotonicity,
    PointingGame,
    RandomLogit,
    Sparseness,
)
from lcam.metrics.common import Model

__all__ = [
    "ALL_METRICS",
    "COMPARISON_KEYS",
    "COST_COLUMNS",
    "DEFAULT_METRICS",
    "OPT_IN_METRICS",
    "OWN_KEYS",
    "SPECS",
    "Column",
    "ComparisonOptions",
    "MetricSpec",
    "Scored",
    "check_comparison_options",
    "checked_metrics",
    "column_direction",
    "is_headline",
    "is_metric_column",
    "row_values",
]

MapKind = Literal["protocol", "explained", "explainer"]
"""Which maps a metric scores:

- ``"protocol"``: the raw ``(B, h, w)`` maps before any resizing or normalising (for a learned
  head the pre-sigmoid logit map of the explained class); the metric min-max normalises, then
  upsamples them (the L-CAM/TAME AD/IC protocol's order).
- ``"explained"``: the explanation's ``(B, H, W)`` maps in [0, 1].
- ``"explainer"``: the metric calls the explainer itself (``update(images)``).
"""


@dataclass(frozen=True)
class Column:
    """One column, or a family of columns sharing a prefix (``"ad@"``: ``ad@100``, ``ad@50``).

    Attributes:
        prefix: the column's name, or the start of the family's names.
        better: ``-1`` lower is better, ``+1`` higher is better, ``0`` neither.
        headline: shown in the report's headline table (every column is in the full table).
    """

    prefix: str
    better: int
    headline: bool = False


@dataclass
class Scored:
    """What one method's explanation of a batch gives the metrics.

    Attributes:
        images: ``(B, 3, H, W)`` in [0, 1].
        protocol_maps: ``(B, h, w)`` raw maps (see :data:`MapKind`).
        maps: ``(B, H, W)`` explanation maps in [0, 1].
        targets: ``(B,)`` explained classes.
        masks: ``(B, H, W)`` boolean object masks, or ``None``.
    """

    images: Tensor
    protocol_maps: Tensor
    maps: Tensor
    targets: Tensor
    masks: Tensor | None

    def select(self, rows: Tensor) -> Scored:
        """The images of the ``(B,)`` bool selection ``rows`` (every field indexed alike)."""
        masks = None if self.masks is None else self.masks[rows]
        return Scored(
            self.images[rows], self.protocol_maps[rows], self.maps[rows], self.targets[rows], masks
        )


@dataclass(frozen=True)
class MetricSpec:
    """How the comparison uses one metric.

    Attributes:
        name: the name ``metrics=`` selects it by.
        maps: which maps it scores (:data:`MapKind`).
        located: it needs object masks: it is updated only on batches that have them, and its
            columns are ``None`` when no image had one.
        columns: its table columns, with direction and headline flag.
        build: ``(model, explainer, options) -> Metric`` for one method.
        values: ``metric -> {column: value}``, the row entries, in column order.
        curves: ``metric -> {"fractions", ...: list of floats}`` for the report's charts.
    """

    name: str
    maps: MapKind
    located: bool
    columns: tuple[Column, ...]
    build: Callable[[Model, Explainer, ComparisonOptions], Metric]
    values: Callable[[Metric], dict[str, float]]
    curves: Callable[[Metric], dict[str, list[float]]] | None = None

    def update(self, metric: Metric, scored: Scored) -> None:
        """Feed one batch to ``metric`` (a located metric skips a batch without masks)."""
        if self.maps == "explainer":
            metric.update(scored.images)  # the explainer may need gradients: no no_grad here
            return
        maps = scored.protocol_maps if self.maps == "protocol" else scored.maps
        with torch.no_grad():
            if self.located:
                if scored.masks is not None:
                    metric.update(maps, scored.masks)
            else:
                metric.update(scored.images, maps, scored.targets)


def _floats(values: Mapping[str, Tensor], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{key}": float(value) for key, value in values.items()}


def _road_values(metric: Metric) -> dict[str, float]:
    """``road_<order>@<p>`` per order and fraction, then ``road_<order>_mean`` per order."""
    values = _floats(metric.compute(), "road_")
    row: dict[str, float] = {}
    for order in metric.orders:
        keys = [key for key in values if key.startswith(f"road_{order}@")]
        row.update({key: values[key] for key in keys})
        row[f"road_{order}_mean"] = sum(values[key] for key in keys) / max(1, len(keys))
    return row


def _class_explain_fn(explainer: Explainer) -> Callable[[Tensor, Tensor | None], tuple]:
    """``(images, classes or None) -> (maps, classes explained)`` of ``explainer``."""

    def explain(images: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor]:
        explanation = explainer.explain(images, classes)
        return explanation.maps, explanation.targets

    return explain


def _scalar(name: str) -> Callable[[Metric], dict[str, float]]:
    return lambda metric: {name: float(metric.compute())}


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "adic",
        "protocol",
        False,
        (Column("ad@", -1, True), Column("ic@", +1, True)),
        lambda model, _, o: AverageDropIncrease(model, o.fractions, o.batch_size),
        lambda metric: _floats(metric.compute()),
    ),
    MetricSpec(
        "road",
        "explained",
        False,
        (Column("road_morf", -1), Column("road_lerf", +1)),
        lambda model, _, o: ROAD(
            model,
            o.road_fractions,
            order=o.road_order,
            batch_size=o.batch_size,
            noise_std=o.road_noise_std,
            seed=o.seed,
        ),
        _road_values,
    ),
    MetricSpec(
        "deletion_insertion",
        "explained",
        False,
        # Prefixes: deletion_auc_blur and insertion_auc_black belong to these families.
        (Column("deletion_auc", -1, True), Column("insertion_auc", +1, True)),
        lambda model, _, o: DeletionInsertionBaselines(
            model, o.deletion_baselines, steps=o.deletion_steps, batch_size=o.batch_size
        ),
        lambda metric: _floats(metric.compute()),
        lambda metric: metric.curves(),
    ),
    MetricSpec(
        "pointing_game",
        "explained",
        True,
        (Column("pointing_game", +1, True),),
        lambda _, __, o: PointingGame(tolerance=o.pointing_tolerance),
        _scalar("pointing_game"),
    ),
    MetricSpec(
        "energy_pointing_game",
        "explained",
        True,
        (Column("energy_pointing_game", +1, True),),
        lambda _, __, o: EnergyPointingGame(),
        _scalar("energy_pointing_game"),
    ),
    MetricSpec(
        "mask_iou",
        "explained",
        True,
        (Column("mask_iou", +1),),
        lambda _, __, o: MaskIoU(threshold=o.iou_threshold),
        _scalar("mask_iou"),
    ),
    MetricSpec(
        "max_sensitivity",
        "explainer",
        False,
        (Column("max_sensitivity", -1),),
        lambda _, explainer, o: MaxSensitivity(
            lambda images: explainer.explain(images).maps,
            radius=o.sensitivity_radius,
            num_samples=o.sensitivity_samples,
            seed=o.seed,
        ),
        _scalar("max_sensitivity"),
    ),
    MetricSpec(
        "faithfulness_correlation",
        "explained",
        False,
        (Column("faithfulness_correlation", +1),),
        lambda model, _, o: FaithfulnessCorrelation(
            model, o.faithfulness_runs, o.faithfulness_subset, batch_size=o.batch_size, seed=o.seed
        ),
        _scalar("faithfulness_correlation"),
    ),
    MetricSpec(
        "monotonicity",
        "explained",
        False,
        (Column("monotonicity", +1), Column("monotonic", +1)),
        lambda model, _, o: Monotonicity(model, o.monotonicity_steps, batch_size=o.batch_size),
        lambda metric: _floats(metric.compute()),
    ),
    MetricSpec(
        "infidelity",
        "explained",
        False,
        (Column("infidelity", -1),),
        lambda model, _, o: Infidelity(
            model, o.infidelity_samples, o.infidelity_std, batch_size=o.batch_size, seed=o.seed
        ),
        _scalar("infidelity"),
    ),
    MetricSpec(
        "sparseness",
        "explained",
        False,
        (Column("sparseness", +1),),
        lambda _, __, o: Sparseness(),
        _scalar("sparseness"),
    ),
    MetricSpec(
        "random_logit",
        "explained",
        False,
        (Column("random_logit", -1),),
        lambda _, explainer, o: RandomLogit(
            _class_explain_fn(explainer), explainer.backbone.num_classes, seed=o.seed
        ),
        _scalar("random_logit"),
    ),
)
"""Every metric, in the order of the table columns."""

ALL_METRICS: tuple[str, ...] = tuple(spec.name for spec in SPECS)
"""Every metric name :class:`~lcam.evaluation.MethodComparison` understands."""

OPT_IN_METRICS: tuple[str, ...] = (
    "max_sensitivity",
    "faithfulness_correlation",
    "monotonicity",
    "infidelity",
    "random_logit",
)
"""Metrics computed only when asked for: max-sensitivity and random logit explain every image
again (``sensitivity_samples`` times, once), faithfulness correlation, monotonicity and
infidelity run ``faithfulness_runs``, ``monotonicity_steps`` and ``infidelity_samples`` more
forwards per image. Sparseness needs no forward at all, so it is on by default."""

DEFAULT_METRICS: tuple[str, ...] = tuple(m for m in ALL_METRICS if m not in OPT_IN_METRICS)
"""The default selection: every metric not in :data:`OPT_IN_METRICS`."""

OWN_KEYS: tuple[str, ...] = (
    "metrics",
    "gallery_size",
    "max_misclassified",
    "class_names",
    "learned_maps",
)
"""The comparison's own keyword arguments (the others are :class:`ComparisonOptions`)."""

COMPARISON_KEYS: tuple[str, ...] = (*OWN_KEYS, *option_names())
"""Every key ``--model.comparison`` (``MethodComparison``'s keyword arguments) accepts."""


def checked_metrics(metrics: Iterable[str] | None) -> tuple[str, ...]:
    """The selected metric names (default :data:`DEFAULT_METRICS`), all known."""
    selected = tuple(DEFAULT_METRICS if metrics is None else metrics)
    unknown = sorted(set(selected) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose among {', '.join(ALL_METRICS)}")
    return selected


def check_comparison_options(options: Mapping[str, Any]) -> None:
    """Raise :class:`ValueError` for an unknown key (naming every valid one), an unknown metric
    or an invalid metric setting of ``options``, before any model or data is touched."""
    ComparisonOptions.from_mapping(options, OWN_KEYS)  # unknown keys first, then the values
    checked_metrics(options.get("metrics"))
    check_learned_maps(options.get("learned_maps", "logit"))


COST_COLUMNS: tuple[Column, ...] = (
    Column("images", 0),
    Column("forward_passes", -1, True),
    Column("backward_passes", -1, True),
    Column("ms_per_image", -1, True),
)
"""The columns every row has before the metrics' (the method's cost per image)."""


def _column(name: str) -> Column | None:
    """The column (family) ``name`` belongs to: the longest matching prefix, if any."""
    known = [c for c in COST_COLUMNS if c.prefix == name]
    known += [c for spec in SPECS for c in spec.columns if name.startswith(c.prefix)]
    return max(known, key=lambda c: len(c.prefix), default=None)


def column_direction(name: str) -> int:
    """``-1`` lower is better, ``+1`` higher is better, ``0`` unknown or neither."""
    column = _column(name)
    return column.better if column is not None else 0


def is_metric_column(name: str) -> bool:
    """Whether column ``name`` holds a metric's value (not the method, a count or a cost)."""
    return any(name.startswith(c.prefix) for spec in SPECS for c in spec.columns)


def is_headline(name: str) -> bool:
    """Whether the report's headline table shows column ``name`` (``"method"`` always)."""
    column = _column(name)
    return name == "method" or (column is not None and column.headline)


def row_values(spec: MetricSpec, metric: Metric, located: bool) -> dict[str, Any]:
    """The row entries of ``spec``'s metric; ``None`` for a located metric that saw no mask."""
    values = spec.values(metric)
    return {key: None for key in values} if spec.located and not located else values
