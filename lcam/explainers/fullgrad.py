r"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): input-gradient and every bias-gradient term.

With ``x`` the [0, 1] image, ``y_c`` the pre-softmax logit of the explained class, and for each
2-D layer ``l`` with a bias (``nn.Conv2d`` with bias, ``nn.BatchNorm2d``) its output ``z_l``
``(B, C_l, h_l, w_l)`` and effective bias ``b_l`` ``(C_l,)`` (for batch norm in eval mode
``beta - mu * gamma / sqrt(var + eps)``),

.. math:: M = \sum_{ch} \psi\big(|x \odot \partial_x y_c|_{ch}\big)
          + \sum_l \sum_{k} \mathrm{up}\Big(\psi\big(|b_{lk}\, \partial_{z_{lk}} y_c|\big)\Big)

where ``psi`` min-max normalises each ``(h, w)`` channel map to [0, 1] and ``up`` resizes
bilinearly to the image size. This is pytorch-grad-cam's ``FullGrad`` (its per-channel
normalisation; the paper's code normalises each layer's whole tensor). The sum over channels is
taken at the layer's own resolution before resizing (resizing is linear, so the result is the
same and no ``C_l x H x W`` tensor is built). A layer called twice contributes each call.

One forward through the whole network with a forward hook on every bias layer (removed on exit,
also on an exception) and one backward to the image and to every hooked output: 1 forward,
1 backward per image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.features import autograd_enabled
from lcam.explainers.registry import register_explainer
from lcam.maps import upsample_maps

__all__ = ["FullGrad", "bias_layers", "effective_bias"]


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The ``nn.Conv2d`` (with a bias) and ``nn.BatchNorm2d`` modules of ``model``."""
    return [
        module
        for module in model.modules()
        if type(module) in (nn.Conv2d, nn.BatchNorm2d) and module.bias is not None
    ]


def effective_bias(layer: nn.Module) -> Tensor:
    """``(C,)`` bias a layer adds in eval mode (batch norm: ``beta - mu * gamma / sigma``)."""
    if isinstance(layer, nn.BatchNorm2d):
        assert layer.running_mean is not None and layer.running_var is not None
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return (layer.bias - layer.running_mean * scale).detach()
    return layer.bias.detach()


def _channel_normalised_sum(maps: Tensor) -> Tensor:
    """Sum over channels of ``(B, C, h, w)`` maps each min-max normalised -> ``(B, h, w)``."""
    flat = maps.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    high = (flat - low).amax(dim=2, keepdim=True)
    return ((flat - low) / (high + 1e-7)).sum(dim=1).view(maps.shape[0], *maps.shape[2:])


@contextlib.contextmanager
def _capture_outputs(layers: list[nn.Module]) -> Iterator[list[tuple[nn.Module, Tensor]]]:
    """``(layer, output)`` of every call of ``layers`` in the block, in call order.

    Each hook hands the network a copy of the output, so an in-place operation after the layer
    (``ReLU(inplace=True)`` after a batch norm) cannot turn the differentiated tensor into its
    own output. The hooks are always removed (also on an exception).
    """
    calls: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        calls.append((module, output))
        return output.clone()

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@register_explainer("fullgrad")
class FullGrad(Explainer):
    """FullGrad saliency (see the module doc). The target layer is not used.

    Args:
        backbone: the frozen classifier; it needs at least one ``Conv2d``/``BatchNorm2d`` with a
            bias, otherwise the map is the input-gradient term alone.
    """

    forward_passes = 1.0
    backward_passes = 1.0

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__(backbone)
        self._layers = bias_layers(backbone.model)

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(B, H, W)`` at the image size, logits ``(B, K)``, targets ``(B,)``."""
        size = tuple(images.shape[-2:])
        with autograd_enabled(), _capture_outputs(self._layers) as calls:
            images = images.detach().clone().requires_grad_(True)
            logits = self.backbone(images)
            resolved = resolve_targets(logits.detach(), targets).clone()
            score = logits.gather(1, resolved[:, None]).sum()
            grads = torch.autograd.grad(score, [images, *(out for _, out in calls)])
        maps = _channel_normalised_sum((images.detach() * grads[0]).abs())
        for (layer, _), grad in zip(calls, grads[1:], strict=True):
            bias = effective_bias(layer).to(grad.dtype)[None, :, None, None]
            term = _channel_normalised_sum((bias * grad).abs())
            maps = maps + upsample_maps(term, size)
        return maps, logits.detach(), resolved
