r"""Activation maximisation: the input a frozen network finds most typical of a unit.

For a class logit (or the spatial mean of one channel of a layer) ``a(x)`` it solves

.. math::
    x^* = \arg\max_x \; a(\mathrm{jitter}(x)) - \lambda_2 \lVert x - 0.5 \rVert_2^2
          - \lambda_{tv} \mathrm{TV}(x)

by gradient ascent on an unconstrained image ``z`` with ``x = sigmoid(z)`` (so ``x`` stays in
[0, 1]), a random translation (jitter) each step and a Gaussian blur of ``z`` every few steps
(:func:`lcam.maps.gaussian_blur`).
All targets are optimised together as one batch; randomness comes from a local generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.maps import gaussian_blur

__all__ = ["activation_maximisation"]


def _total_variation(images: Tensor) -> Tensor:
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (
        images[..., :, 1:] - images[..., :, :-1]
    ).abs().mean()


def activation_maximisation(
    backbone: FrozenBackbone,
    targets: Sequence[int] | Tensor,
    *,
    layer: str | None = None,
    size: int | None = None,
    steps: int = 200,
    lr: float = 0.1,
    jitter: int = 4,
    l2_weight: float = 1e-2,
    tv_weight: float = 1e-1,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    seed: int | None = 0,
) -> Tensor:
    """Images ``(T, 3, size, size)`` in [0, 1] that maximise each of ``T`` targets.

    Args:
        backbone: the frozen classifier.
        targets: class indices (``layer=None``) or channel indices of ``layer``.
        layer: module name whose channel means are maximised; ``None`` maximises class logits.
        size: image side (default: the backbone's ``input_size``).
        steps, lr: Adam steps and learning rate on the image parameters.
        jitter: maximum random shift in pixels per step.
        l2_weight, tv_weight: regularisation weights.
        blur_every, blur_sigma: blur the image parameters every ``blur_every`` steps.
        seed: seed of the local generator (initial image and jitter).
    """
    device = backbone.mean.device
    targets = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    size = size or backbone.input_size
    generator = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    limit = backbone.num_classes if layer is None else None
    captured: list[Tensor] = []
    handle = None
    if layer is not None:
        modules = dict(backbone.model.named_modules())
        if layer not in modules:
            raise ValueError(f"layer {layer!r} is not a module of the backbone")
        handle = modules[layer].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        latent = (0.1 * torch.randn(len(targets), 3, size, size, generator=generator)).to(device)
        latent.requires_grad_(True)
        optimiser = torch.optim.Adam([latent], lr=lr)
        rows = torch.arange(len(targets), device=device)
        for step in range(steps):
            shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            images = latent.sigmoid()
            shifted = torch.roll(images, shifts=shift, dims=(2, 3))
            captured.clear()
            logits = backbone(shifted)
            if layer is None:
                units = logits
            else:
                units = captured[-1].mean(dim=(2, 3))
                limit = units.shape[1]
            if int(targets.max()) >= limit or int(targets.min()) < 0:
                units_name = "classes" if layer is None else f"channels in {layer!r}"
                raise ValueError(f"targets {targets.tolist()} out of range: {limit} {units_name}")
            score = units[rows, targets]
            penalty = l2_weight * (images - 0.5).pow(2).mean()
            penalty = penalty + tv_weight * _total_variation(images)
            loss = -score.sum() + len(targets) * penalty
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if blur_every and (step + 1) % blur_every == 0:
                with torch.no_grad():
                    latent.copy_(gaussian_blur(latent, blur_sigma))
    finally:
        if handle is not None:
            handle.remove()
    return latent.detach().sigmoid()
