"""Trivial answers a quality test must beat: maps that know nothing about the image.

A test that claims a map localises or is faithful scores, on the same images, a constant map,
a centre prior and (built by the test itself) an untrained head, and asserts the real map beats
each by a stated margin. If a trivial answer passes a quality bar, the bar tests nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["centre_prior", "constant_map", "margin_report"]


def constant_map(count: int, height: int, width: int) -> Tensor:
    """The same value everywhere: ``(count, height, width)`` of ones."""
    return torch.ones(count, height, width)


def centre_prior(count: int, height: int, width: int, sigma: float = 0.25) -> Tensor:
    """A Gaussian centred on the image, ``sigma`` a fraction of each side:
    ``(count, height, width)``, peak 1 at the centre."""
    rows = ((torch.arange(height) + 0.5) / height - 0.5) / sigma
    cols = ((torch.arange(width) + 0.5) / width - 0.5) / sigma
    prior = torch.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2))
    return prior.expand(count, height, width).clone()


def margin_report(scores: dict[str, float], real: str = "trained") -> str:
    """``name=score`` for every answer, and each trivial answer's distance to ``real``."""
    parts = [f"{name}={value:.3f}" for name, value in scores.items()]
    gaps = [f"{real}-{name}={scores[real] - v:+.3f}" for name, v in scores.items() if name != real]
    return ", ".join(parts) + " | " + ", ".join(gaps)
