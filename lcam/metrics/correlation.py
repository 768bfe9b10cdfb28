"""Per-row Pearson correlation, the similarity the correlation-based metrics share."""

from __future__ import annotations

from torch import Tensor

__all__ = ["row_pearson"]


def row_pearson(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation of each row of ``a`` and ``b`` ``(B, n)`` -> ``(B,)`` (float64).

    A constant row has no defined correlation; it gets 0 (no linear relation), not NaN.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)
