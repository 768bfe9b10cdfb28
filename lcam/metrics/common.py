"""Pieces every perturbation metric shares: input checks, map preparation, a stable pixel
ranking, exact keep counts, the AD/IC soft masks, result keys and a chunked forward through the
classifier.

Depends only on :mod:`lcam.maps`; the evaluation layer uses :func:`in_chunks` too (one chunking
helper for the whole package).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lcam.maps import normalise_maps, upsample_maps

__all__ = [
    "Model",
    "check_batch",
    "checked_batch_size",
    "checked_fractions",
    "fraction_key",
    "in_chunks",
    "keep_count",
    "pixel_ranks",
    "predict_in_chunks",
    "prepare_maps",
    "resolve_classes",
    "soft_keep_masks",
]

Model = Callable[[Tensor], Tensor]
"""Any callable ``(B, 3, H, W)`` images in [0, 1] -> ``(B, K)`` logits (e.g. a FrozenBackbone)."""


def check_batch(images: Tensor, maps: Tensor, targets: Tensor | None) -> None:
    """Validate ``images (B, 3, H, W)``, ``maps (B, h, w)`` and optional ``targets (B,)``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must have shape (B, h, w) with B={images.shape[0]}, got {tuple(maps.shape)}"
        )
    if targets is not None and tuple(targets.shape) != (images.shape[0],):
        raise ValueError(
            f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}"
        )


def checked_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """``fractions`` as a tuple of floats; refused when empty or outside [0, 1]."""
    if not fractions:
        raise ValueError("fractions must not be empty")
    for fraction in fractions:
        keep_count(fraction, 1)  # validates the range
    return tuple(float(p) for p in fractions)


def checked_batch_size(batch_size: int) -> int:
    """``batch_size``, refused when below 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def prepare_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Min-max normalise raw ``(B, h, w)`` maps per image, then upsample bilinearly to ``size``.

    The order is the protocol's (normalise, then upsample); bilinear weights are convex, so the
    result ``(B, *size)`` stays in [0, 1].
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (B, h, w), got {tuple(maps.shape)}")
    return upsample_maps(normalise_maps(maps.detach().float()), size)


def pixel_ranks(maps: Tensor, descending: bool = True) -> Tensor:
    """Rank of every pixel of ``(B, H, W)`` maps, shape ``(B, H * W)`` int64.

    Rank 0 is the most relevant pixel (``descending=True``) or the least relevant one. Ties are
    broken deterministically by a stable sort: among equal values the pixel with the smaller
    flat (row-major) index ranks first. Keeping the pixels with ``rank < k`` therefore keeps
    exactly ``k`` pixels whatever the ties.
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def keep_count(fraction: float, num_pixels: int) -> int:
    """``ceil(fraction * num_pixels)``, robust to float error (``0.7 * 10`` gives 7, not 8)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fractions must be in [0, 1], got {fraction}")
    return min(num_pixels, math.ceil(round(fraction * num_pixels, 6)))


def fraction_key(fraction: float) -> str:
    """Percent label of a fraction for result keys: ``0.15 -> "15"``, ``1.0 -> "100"``."""
    return f"{fraction * 100:g}"


def soft_keep_masks(maps: Tensor, fractions: Sequence[float]) -> Tensor:
    """AD/IC masks: the top ``ceil(p * H * W)`` pixels keep their soft map values, others 0.

    Args:
        maps: ``(B, H, W)`` normalised maps in [0, 1].
        fractions: ``P`` kept fractions ``p`` in [0, 1].

    Returns:
        ``(P, B, H, W)`` masks ``M_p = maps * 1[rank < ceil(p * H * W)]`` (ranks from
        :func:`pixel_ranks`, so exactly that many pixels are selected even with ties).
    """
    batch, height, width = maps.shape
    ranks = pixel_ranks(maps).view(1, batch, height, width)
    counts = torch.tensor(
        [keep_count(p, height * width) for p in fractions], device=maps.device
    ).view(-1, 1, 1, 1)
    return maps.unsqueeze(0) * (ranks < counts).to(maps.dtype)


def in_chunks(
    compute: Callable[[Tensor], Tensor], total: int, batch_size: int, device: torch.device
) -> Tensor:
    """``compute`` over the flat indices ``0..total-1``, at most ``batch_size`` at a time.

    Args:
        compute: flat indices ``(n,)`` int64 -> ``(n, ...)`` results.
        total: number of items.
        batch_size: chunk size (memory stays bounded by it).
        device: where the flat indices live.

    Returns:
        ``(total, ...)`` results concatenated along the first dimension.
    """
    checked_batch_size(batch_size)
    results = [
        compute(torch.arange(start, min(start + batch_size, total), device=device))
        for start in range(0, total, batch_size)
    ]
    return torch.cat(results) if results else torch.zeros(0, device=device)


@torch.no_grad()
def predict_in_chunks(
    model: Model,
    make_inputs: Callable[[Tensor], Tensor],
    total: int,
    batch_size: int,
    reduce: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
) -> Tensor:
    """Run ``total`` perturbed inputs through ``model``, at most ``batch_size`` at a time.

    Inputs are built lazily per chunk (:func:`in_chunks`) so memory stays bounded by
    ``batch_size`` images.

    Args:
        model: images ``(n, 3, H, W)`` -> logits ``(n, K)``.
        make_inputs: flat indices ``(n,)`` int64 -> the images ``(n, 3, H, W)`` they stand for.
        total: number of inputs.
        batch_size: chunk size.
        reduce: ``(logits (n, K), indices (n,)) -> (n, ...)`` per-input result (e.g. the
            probability of each input's class).
        device: where the flat indices live (the images' device).

    Returns:
        ``(total, ...)`` results of ``reduce`` concatenated along the first dimension.
    """
    return in_chunks(
        lambda index: reduce(model(make_inputs(index)).float(), index), total, batch_size, device
    )


def resolve_classes(
    model: Model, images: Tensor, targets: Tensor | None, batch_size: int
) -> Tensor:
    """``targets`` as ``(B,)`` int64 on the images' device, or the model's top-1 classes."""
    if targets is None:
        return predict_in_chunks(
            model,
            lambda i: images[i],
            len(images),
            batch_size,
            lambda logits, _: logits.argmax(dim=1),
            images.device,
        )
    return targets.to(images.device).long()
