"""The settings of every metric of a method comparison, as one checked record.

``train.py`` passes them inside ``--model.comparison`` (or the YAML's ``model.comparison``) next to
the comparison's own keys (``metrics``, ``gallery_size``, ...); every key of this record reaches
the metric builders of :mod:`lcam.evaluation.specs`. A key that is neither fails before anything
runs, naming the valid ones (:func:`unknown_keys_message`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DELETION_BASELINES", "ComparisonOptions", "option_names", "unknown_keys_message"]

DELETION_BASELINES: tuple[str, ...] = ("black", "blur")
"""What deleted pixels become and what insertion starts from, one deletion and one insertion
curve per baseline (:class:`~lcam.evaluation.deletion_baselines.DeletionInsertionBaselines`)."""

_ROAD_ORDERS = ("both", "morf", "lerf")


@dataclass(frozen=True)
class ComparisonOptions:
    """The settings of every metric (see :class:`~lcam.evaluation.MethodComparison`).

    Attributes:
        fractions: AD/IC kept fractions (the papers' 100 %, 50 %, 15 %).
        road_fractions: ROAD removed fractions (T-TAME's 10..50, 70, 90 %).
        road_order: ROAD's ``"both"``, ``"morf"`` or ``"lerf"``.
        deletion_steps: steps ``S`` of every deletion/insertion curve (``S + 1`` forwards per
            image and curve).
        deletion_baselines: ``"black"`` and/or ``"blur"``: each gives a deletion curve (pixels
            removed to it) and an insertion curve (pixels added to it); see
            :func:`~lcam.evaluation.deletion_baselines.auc_columns` for the column names.
        batch_size: maximum images per forward pass inside the metrics.
        pointing_tolerance: pointing-game tolerance in pixels (15 in Zhang et al.).
        iou_threshold: threshold of the normalised map for mask IoU.
        road_noise_std: ROAD's imputation noise.
        seed: seed of every random draw of the metrics (ROAD noise, subsets, perturbations).
        sensitivity_radius, sensitivity_samples: max-sensitivity's input noise radius and draws
            (each draw explains every image once more).
        faithfulness_runs, faithfulness_subset: faithfulness correlation's random subsets per
            image (one forward each) and pixels per subset.
        monotonicity_steps: monotonicity's steps (one forward each per image).
        infidelity_samples, infidelity_std: infidelity's Gaussian perturbations per image (one
            forward each) and their standard deviation.
    """

    fractions: tuple[float, ...] = (1.0, 0.5, 0.15)
    road_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
    road_order: str = "both"
    deletion_steps: int = 100
    deletion_baselines: tuple[str, ...] = DELETION_BASELINES
    batch_size: int = 64
    pointing_tolerance: float = 15
    iou_threshold: float = 0.5
    road_noise_std: float = 0.01
    seed: int = 0
    sensitivity_radius: float = 0.02
    sensitivity_samples: int = 10
    faithfulness_runs: int = 100
    faithfulness_subset: int = 224
    monotonicity_steps: int = 20
    infidelity_samples: int = 10
    infidelity_std: float = 0.1

    def __post_init__(self) -> None:
        # YAML gives lists: keep the record hashable and its fractions floats.
        set_ = object.__setattr__
        set_(self, "fractions", tuple(float(p) for p in self.fractions))
        set_(self, "road_fractions", tuple(float(p) for p in self.road_fractions))
        baselines = (
            (self.deletion_baselines,)
            if isinstance(self.deletion_baselines, str)
            else tuple(self.deletion_baselines)
        )
        set_(self, "deletion_baselines", baselines)
        if not baselines or len(set(baselines)) != len(baselines):
            raise ValueError(f"deletion_baselines must be distinct and non-empty, got {baselines}")
        if not set(baselines) <= set(DELETION_BASELINES):
            raise ValueError(
                f"deletion_baselines must be among {DELETION_BASELINES}, got {baselines}"
            )
        if self.road_order not in _ROAD_ORDERS:
            raise ValueError(f"road_order must be one of {_ROAD_ORDERS}, got {self.road_order!r}")

    @classmethod
    def from_mapping(
        cls, options: Mapping[str, Any], valid: Iterable[str] = ()
    ) -> ComparisonOptions:
        """The record of ``options``; a key that is not a field (nor in ``valid``, the caller's
        own keys, which are skipped) raises :class:`ValueError` naming every valid key."""
        names = option_names()
        message = unknown_keys_message(options, (*valid, *names))
        if message:
            raise ValueError(message)
        return cls(**{key: value for key, value in options.items() if key in names})


def option_names() -> tuple[str, ...]:
    """The fields of :class:`ComparisonOptions`, in order."""
    return tuple(field.name for field in fields(ComparisonOptions))


def unknown_keys_message(options: Mapping[str, Any], valid: Iterable[str]) -> str:
    """``""`` when every key of ``options`` is in ``valid``; else one sentence naming the
    unknown keys and every valid one."""
    valid = tuple(valid)
    unknown = sorted(set(options) - set(valid))
    if not unknown:
        return ""
    return f"unknown comparison option(s) {unknown}; valid keys: {', '.join(sorted(valid))}"
