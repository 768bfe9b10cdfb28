"""One pass for the channel-weighting CAMs: target-layer features, logits and gradients.

The gradients come from the *fast path*: the body of the frozen network runs once without
autograd, the features are detached and marked as requiring gradients, and only the tail (the
layers after the target layer) is run with autograd, so the single backward pass never enters a
layer before the target layer. One backward of the batch sum ``sum_b y_{b, c_b}`` gives every
image its own gradient because the images of a batch do not interact in an eval-mode network.
``full_backward=True`` backpropagates through the whole network from the image instead, as most
libraries do (to check the fast path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Targets, resolve_targets

__all__ = [
    "FeaturePass",
    "autograd_enabled",
    "capture_output",
    "feature_pass",
    "weighted_channel_sum",
]


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Enable autograd inside the block, also when the caller is in ``no_grad``/``inference_mode``.

    Gradient explainers are often called from evaluation code that disabled autograd globally.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def capture_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the outputs of every call of ``module`` in the block; the hook is always removed."""
    outputs: list[Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def weighted_channel_sum(weights: Tensor, features: Tensor, relu: bool = True) -> Tensor:
    """``ReLU(sum_k w_k F_k)`` ``(B, h, w)`` of weights ``(B, C)`` and features ``(B, C, h, w)``."""
    maps = torch.einsum("bc,bchw->bhw", weights.to(features.dtype), features)
    return maps.relu() if relu else maps


@dataclass
class FeaturePass:
    """What one forward (+ optional backward) pass gives a channel-weighting CAM.

    Attributes:
        features: target-layer features ``F`` ``(B, C, h, w)`` (detached).
        gradients: ``dy_c / dF`` ``(B, C, h, w)`` of each image's target logit, or ``None``.
        logits: ``(B, K)`` logits of the clean images (detached).
        targets: ``(B,)`` explained classes.
    """

    features: Tensor
    gradients: Tensor | None
    logits: Tensor
    targets: Tensor


def feature_pass(
    backbone: FrozenBackbone,
    images: Tensor,
    targets: Targets,
    *,
    gradients: bool = True,
    full_backward: bool = False,
) -> FeaturePass:
    """Target-layer features, logits and (optionally) the gradients of the target logits.

    Args:
        backbone: the frozen classifier.
        images: ``(B, 3, H, W)`` in [0, 1] on the backbone's device.
        targets: classes to explain (``None``: predicted class; an int; or ``(B,)``).
        gradients: compute ``g = d(sum_b y_{b, c_b}) / dF`` ``(B, C, h, w)``.
        full_backward: backpropagate from the image through the whole network (``backbone.model``
            with a forward hook capturing the target layer's output) instead of the fast path
            (``body`` without autograd, ``tail`` with autograd; the backward stops at ``F``).
            Slower; it exists to check the fast path against the usual implementation.

    Returns:
        A :class:`FeaturePass` (one forward pass and, with ``gradients``, one backward pass).
    """
    if not gradients:
        with torch.no_grad():
            output = backbone.run(images)
        resolved = resolve_targets(output.logits, targets)
        return FeaturePass(backbone.grid(output.features), None, output.logits, resolved)
    with autograd_enabled():
        if full_backward:
            images = images.detach().clone().requires_grad_(True)
            # The backbone's hook knows call sites ("_swish#1"), not only module names.
            with backbone.capture_split_output() as outputs:
                logits = backbone.model(backbone.normalise(images))
            features, wrt = outputs[0], (outputs[0], images)
        else:
            with torch.no_grad():
                features, skips = backbone.body(images)
            features = features.detach().requires_grad_(True)
            logits = backbone.tail(features, skips)
            wrt = (features,)
        resolved = resolve_targets(logits.detach(), targets).clone()  # no inference tensor
        score = logits.gather(1, resolved[:, None]).sum()
        grads = torch.autograd.grad(score, wrt)[0]
    grid = backbone.grid
    return FeaturePass(grid(features.detach()), grid(grads), logits.detach(), resolved)
