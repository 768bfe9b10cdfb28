"""The interface every explainer, learned or classic, answers."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explanation import Explanation

__all__ = ["Explainer", "check_images", "normalise_maps", "resolve_targets", "upsample_maps"]

Targets = Tensor | Sequence[int] | int | None


def check_images(images: Tensor) -> Tensor:
    """Validate a ``(B, 3, H, W)`` float batch in [0, 1] and return it unchanged."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
    low, high = images.min().item(), images.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"images must be in [0, 1] (normalisation happens inside the backbone); got values "
            f"in [{low:.3g}, {high:.3g}]"
        )
    return images


def resolve_targets(logits: Tensor, targets: Targets) -> Tensor:
    """The ``(B,)`` classes to explain: ``targets`` checked against ``logits`` ``(B, K)``.

    ``None`` means the predicted class; an int is used for every image.
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    resolved = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
    if resolved.dim() == 0:
        resolved = resolved.expand(batch)
    if resolved.shape != (batch,):
        raise ValueError(f"targets must have shape ({batch},), got {tuple(resolved.shape)}")
    bad = (resolved < 0) | (resolved >= num_classes)
    if bad.any():
        raise ValueError(
            f"target class {resolved[bad][0].item()} does not exist: the model has "
            f"{num_classes} classes (0..{num_classes - 1})"
        )
    return resolved


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(B, h, w)`` maps to ``(B, *size)``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise_maps(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Min-max normalise each of ``(B, H, W)`` maps to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1)
    return (maps - low) / (high - low).clamp_min(eps)


class Explainer(nn.Module):
    """Base class: validates inputs, resolves targets, resizes and normalises maps.

    A method only implements :meth:`compute_maps`, which returns raw maps at any resolution; the
    base class upsamples them bilinearly to the input size and min-max normalises each to [0, 1].

    Args:
        backbone: the frozen classifier to explain.
    """

    name: str = "explainer"
    forward_passes: float = 1.0
    backward_passes: float = 0.0

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def device(self) -> torch.device:
        """Device of the backbone."""
        return self.backbone.mean.device

    @abstractmethod
    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(B, h, w)``, logits ``(B, K)`` and resolved targets ``(B,)``."""

    def explain(self, images: Tensor, targets: Targets = None) -> Explanation:
        """Explain ``(B, 3, H, W)`` images in [0, 1] for ``targets`` (default: predicted class).

        Returns:
            An :class:`Explanation` with ``(B, H, W)`` maps in [0, 1].
        """
        images = check_images(images).to(self.device)
        raw_maps, logits, resolved = self.compute_maps(images, targets)
        maps = normalise_maps(upsample_maps(raw_maps.detach().float(), tuple(images.shape[-2:])))
        return Explanation(
            maps=maps,
            logits=logits.detach(),
            targets=resolved,
            forward_passes=self.forward_passes,
            backward_passes=self.backward_passes,
            method=self.name,
        )
