"""Batched weighted ridge regression, the fit of LIME and KernelSHAP."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["solve_dtype", "weighted_ridge"]


def solve_dtype(device: torch.device) -> torch.dtype:
    """float64 for the normal equations, except on MPS (which has none)."""
    return torch.float32 if device.type == "mps" else torch.float64


def weighted_ridge(
    design: Tensor,
    target: Tensor,
    weights: Tensor,
    ridge: float,
    *,
    fit_intercept: bool = True,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Batched weighted ridge regression solved on the normal equations.

    With the weights normalised to sum to one per problem, ``w_i = weights_i / sum(weights)``,

    .. math::
        \min_{\beta_0, \beta} \sum_i w_i (y_i - \beta_0 - x_i^\top \beta)^2
            + \lambda \lVert \beta \rVert^2

    (the intercept is not penalised; it is eliminated by weighted centring as scikit-learn's
    ``Ridge`` does, so ``Ridge(alpha=lambda * sum(weights))`` gives the same solution).

    Args:
        design: ``(B, S, P)`` regressors ``x``.
        target: ``(B, S)`` responses ``y``.
        weights: ``(B, S)`` non-negative sample weights.
        ridge: ``lambda >= 0``.
        fit_intercept: fit ``beta_0``; otherwise ``beta_0 = 0``.
        valid: ``(B, P)`` bool, columns that exist (the others are padding and get ``beta = 0``).

    Returns:
        ``beta`` ``(B, P)`` and ``beta_0`` ``(B,)`` in the dtype of ``design``.
    """
    dtype = solve_dtype(design.device)
    x, y, w = design.to(dtype), target.to(dtype), weights.to(dtype)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    if valid is not None:
        x = x * valid[:, None, :].to(dtype)
    if fit_intercept:
        mean_x = torch.einsum("bs,bsp->bp", w, x)
        mean_y = (w * y).sum(dim=1)
        x, y = x - mean_x[:, None, :], y - mean_y[:, None]
    gram = torch.einsum("bsp,bs,bsq->bpq", x, w, x)
    rhs = torch.einsum("bsp,bs,bs->bp", x, w, y)
    diagonal = torch.full(gram.shape[:2], float(ridge), dtype=dtype, device=gram.device)
    if valid is not None:
        diagonal = torch.where(valid, diagonal, torch.ones_like(diagonal))
    beta = torch.linalg.solve(gram + torch.diag_embed(diagonal), rhs[..., None])[..., 0]
    intercept = mean_y - (mean_x * beta).sum(dim=1) if fit_intercept else y.new_zeros(len(y))
    return beta.to(design.dtype), intercept.to(design.dtype)
