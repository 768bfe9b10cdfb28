"""One timed call of an explainer's own ``explain()``, keeping the maps the AD/IC protocol scores.

``explain()`` upsamples the raw maps, then min-max normalises them. The L-CAM/TAME AD/IC protocol
does it the other way round (normalise, then upsample: a different affine map per image, about
one point of AD on the built-in data) and scores a learned head on its **pre-sigmoid** logit map.
Both come out of the same call: ``Explanation.raw_maps`` holds the maps the explainer computed
before activation, resizing and normalisation (for a learned head, the pre-sigmoid logit maps,
whatever its ``map_activation``). Nothing is recomputed and ``explain()`` is not re-implemented.

``learned_maps="shown"`` scores a learned head instead on the map it shows (its
``map_activation`` applied to the same logit maps: the sigmoid attention by default, the maps
``infer.py`` writes), still normalised then upsampled. Ranks, and so the kept pixels, are the
same; only the soft values of the kept pixels differ, which moves IC (see the README).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from lcam.explainers import Explainer, LearnedExplainer
from lcam.explanation import Explanation

__all__ = ["LEARNED_MAPS", "Explained", "LearnedMaps", "explain_timed", "check_learned_maps"]

LearnedMaps = Literal["logit", "shown"]
LEARNED_MAPS: tuple[str, ...] = get_args(LearnedMaps)


def check_learned_maps(learned_maps: str) -> str:
    """``learned_maps`` if it is one of :data:`LEARNED_MAPS`, else a ``ValueError``."""
    if learned_maps not in LEARNED_MAPS:
        raise ValueError(
            f"learned_maps must be one of {', '.join(LEARNED_MAPS)}, got {learned_maps!r}"
        )
    return learned_maps


@dataclass
class Explained:
    """One method's explanation of a batch.

    Attributes:
        explanation: what ``explainer.explain(images)`` returned (maps ``(B, H, W)``).
        protocol_maps: ``(B, h, w)`` float raw maps for AD/IC (see the module docstring).
        seconds: wall time of the ``explain()`` call (CUDA synchronised).
    """

    explanation: Explanation
    protocol_maps: Tensor
    seconds: float


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def explain_timed(
    explainer: Explainer, images: Tensor, learned_maps: LearnedMaps = "logit"
) -> Explained:
    """Explain ``(B, 3, H, W)`` images for their predicted classes once, timed.

    ``learned_maps`` chooses the maps of a learned head: ``"logit"`` (the papers' pre-sigmoid
    map) or ``"shown"`` (its ``map_activation`` applied to it). An explainer whose own
    ``explain()`` keeps no ``raw_maps`` (a custom override) is scored on its final maps, all there
    is of it; a learned head must keep its logit maps.

    Raises:
        RuntimeError: the raw maps are not ``(B, h, w)``, or a learned head kept none.
        ValueError: ``learned_maps`` is not one of :data:`LEARNED_MAPS`.
    """
    check_learned_maps(learned_maps)
    device = images.device
    _synchronise(device)
    start = time.perf_counter()
    explanation = explainer.explain(images)
    _synchronise(device)
    seconds = time.perf_counter() - start
    raw = explanation.raw_maps
    if raw is None and not isinstance(explainer, LearnedExplainer):
        raw = explanation.maps
    elif raw is not None and isinstance(explainer, LearnedExplainer) and learned_maps == "shown":
        raw = explainer.activate(raw)
    if raw is None or raw.dim() != 3 or len(raw) != len(images):
        shape = None if raw is None else tuple(raw.shape)
        raise RuntimeError(
            f"cannot take the raw maps of {type(explainer).__name__} for AD/IC: its explain() "
            f"kept raw maps of shape {shape} for a batch of {len(images)} ((B, h, w) expected)"
        )
    return Explained(explanation, raw.detach().float(), seconds)
