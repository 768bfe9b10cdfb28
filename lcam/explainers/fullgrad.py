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

Token models (ViT, DeiT, EVA: the target layer's layout is ``"tokens"``, outputs
``(B, P + h*w, C)``): their biases are in ``nn.Linear`` and ``nn.LayerNorm`` layers (the
``beta`` of a layer norm is added after the normalisation, so it is a bias as a batch norm's
is). Every call of such a layer whose output is a token sequence of the target layer's length
contributes ``|b_l * dy_c/dz_l|`` ``(B, P + h*w, C_l)``, read on the patch grid by the layout
helper (:func:`lcam.backbone.layout.to_grid`: the ``P`` prefix tokens dropped, the patch tokens
reshaped to ``(B, C_l, h, w)``), then normalised per channel and summed as above; the patch
embedding's ``Conv2d`` bias is a 2-D term as in a CNN. Calls with other outputs (the pooled
``(B, C)`` head and its norm) have no grid and are left out, as the classifier's bias is in a
CNN; so are token sequences of another length (a model that merges tokens between stages
contributes only the layers at the target layer's length). This is the FullGrad construction,
not an exact decomposition: the completeness of Srinivas & Fleuret needs a piecewise-linear
network (softmax attention, GELU and the layer norm's division are not) and the terms at the
prefix tokens have no place on the grid.
pytorch-grad-cam's ``FullGrad`` takes only ``Conv2d``/``BatchNorm2d`` biases, so on a token
model it sees the patch embedding alone: there is no peer to compare with.

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
from lcam.backbone.layout import Layout, to_grid
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.features import autograd_enabled
from lcam.explainers.registry import register_explainer
from lcam.maps import upsample_maps

__all__ = ["FullGrad", "bias_layers", "effective_bias"]


TOKEN_BIAS_LAYERS = (nn.Linear, nn.LayerNorm)
"""Layer types whose bias FullGrad takes on token models (subclasses included: timm's norms)."""


def bias_layers(model: nn.Module, tokens: bool = False) -> list[nn.Module]:
    """The ``nn.Conv2d`` (with a bias) and ``nn.BatchNorm2d`` modules of ``model``; with
    ``tokens`` also its ``nn.Linear`` and ``nn.LayerNorm`` modules with a bias."""
    return [
        module
        for module in model.modules()
        if getattr(module, "bias", None) is not None
        and (
            type(module) in (nn.Conv2d, nn.BatchNorm2d)
            or (tokens and isinstance(module, TOKEN_BIAS_LAYERS))
        )
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


def _on_grid(output: Tensor, tokens: Layout | None) -> bool:
    """Whether a bias layer's output has a place on the grid: a 2-D map, or (token models) a
    sequence of the target layer's ``P + h*w`` tokens."""
    if output.dim() == 4:
        return True
    if tokens is None or tokens.grid is None or output.dim() != 3:
        return False
    return output.shape[1] == tokens.num_prefix_tokens + tokens.grid[0] * tokens.grid[1]


@contextlib.contextmanager
def _capture_outputs(
    layers: list[nn.Module], tokens: Layout | None
) -> Iterator[list[tuple[nn.Module, Tensor]]]:
    """``(layer, output)`` of every call of ``layers`` in the block whose output is on the grid
    (:func:`_on_grid`), in call order.

    Each hook hands the network a copy of the output, so an in-place operation after the layer
    (``ReLU(inplace=True)`` after a batch norm) cannot turn the differentiated tensor into its
    own output. The hooks are always removed (also on an exception).
    """
    calls: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not _on_grid(output, tokens):
            return None  # the output unchanged
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
    """FullGrad saliency (see the module doc). The target layer only tells a token model
    (its layout gives the prefix tokens and the patch grid).

    Args:
        backbone: the frozen classifier; it needs at least one bias layer (see the module doc),
            otherwise the map is the input-gradient term alone.
    """

    forward_passes = 1.0
    backward_passes = 1.0

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__(backbone)
        layout = backbone.layouts[backbone.target_layers.index(backbone.target_layer)]
        self._tokens = layout if layout.kind == "tokens" else None
        self._layers = bias_layers(backbone.model, tokens=self._tokens is not None)

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(B, H, W)`` at the image size, logits ``(B, K)``, targets ``(B,)``."""
        size = tuple(images.shape[-2:])
        with autograd_enabled(), _capture_outputs(self._layers, self._tokens) as calls:
            images = images.detach().clone().requires_grad_(True)
            # The network itself, not the torch.fx split: fx inlines modules from outside
            # torch.nn (timm's LayerNorm subclass), whose hooks would then never fire.
            logits = self.backbone.model(self.backbone.normalise(images))
            resolved = resolve_targets(logits.detach(), targets).clone()
            score = logits.gather(1, resolved[:, None]).sum()
            grads = torch.autograd.grad(score, [images, *(out for _, out in calls)])
        maps = _channel_normalised_sum((images.detach() * grads[0]).abs())
        for (layer, _), grad in zip(calls, grads[1:], strict=True):
            bias = effective_bias(layer).to(grad.dtype)
            if grad.dim() == 4:  # (B, C, h, w) maps
                term = (bias[None, :, None, None] * grad).abs()
            else:  # (B, P + h*w, C) tokens -> (B, C, h, w) patch grid
                assert self._tokens is not None
                term = to_grid((bias * grad).abs(), self._tokens)
            maps = maps + upsample_maps(_channel_normalised_sum(term), size)
        return maps, logits.detach(), resolved
