"""One timed call of an explainer's own ``explain()``, keeping the maps the AD/IC protocol scores.

``explain()`` upsamples the raw maps, then min-max normalises them. The L-CAM/TAME AD/IC protocol
does it the other way round (normalise, then upsample: a different affine map per image, about
one point of AD on the built-in data) and scores a learned head on its **pre-sigmoid** logit map.
Both come out of the same pass: while ``explain()`` runs, the raw maps the explainer's
``compute_maps`` returns are recorded (for a :class:`~lcam.explainers.LearnedExplainer`, the
logit maps it hands to ``activate``, whatever its ``map_activation``). Nothing is recomputed and
``explain()`` itself is not re-implemented.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lcam.explainers import Explainer, LearnedExplainer
from lcam.explanation import Explanation

__all__ = ["Explained", "explain_timed"]


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


@contextmanager
def _recording(explainer: Explainer) -> Iterator[list[Tensor]]:
    """Record the raw maps of every ``compute_maps`` (learned heads: ``activate``) call.

    The bound method is shadowed by an instance attribute for the duration only; an instance
    attribute already there (e.g. a test's wrapper) is wrapped and put back.
    """
    learned = isinstance(explainer, LearnedExplainer)
    name = "activate" if learned else "compute_maps"
    original = getattr(explainer, name)
    shadowed = name in explainer.__dict__
    recorded: list[Tensor] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        recorded.append((args[0] if learned else result[0]).detach().float())
        return result

    explainer.__dict__[name] = recording  # not nn.Module.__setattr__: a plain attribute
    try:
        yield recorded
    finally:
        if shadowed:
            explainer.__dict__[name] = original
        else:
            del explainer.__dict__[name]


def explain_timed(explainer: Explainer, images: Tensor) -> Explained:
    """Explain ``(B, 3, H, W)`` images for their predicted classes once, timed.

    Raises:
        RuntimeError: the explainer's raw maps could not be told apart (several calls, or a
            learned head whose ``explain()`` never activated a ``(B, h, w)`` map).
    """
    device = images.device
    with _recording(explainer) as recorded:
        _synchronise(device)
        start = time.perf_counter()
        explanation = explainer.explain(images)
        _synchronise(device)
        seconds = time.perf_counter() - start
    batch = len(images)
    shapes = [tuple(maps.shape) for maps in recorded]
    if len(recorded) == 1 and recorded[0].dim() == 3 and len(recorded[0]) == batch:
        protocol_maps = recorded[0]
    elif not recorded and not isinstance(explainer, LearnedExplainer):
        # A custom explain() that never calls compute_maps: its maps are all there is.
        protocol_maps = explanation.maps.detach().float()
    else:
        raise RuntimeError(
            f"cannot take the raw maps of {type(explainer).__name__} for AD/IC: its explain() "
            f"produced maps of shapes {shapes} for a batch of {batch} (one (B, h, w) map "
            "expected)"
        )
    return Explained(explanation, protocol_maps, seconds)
