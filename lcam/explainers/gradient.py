r"""Input-gradient saliency: vanilla gradient, guided backpropagation, deconvnet, guided Grad-CAM.

All four differentiate the pre-softmax logit ``y_c`` of the explained class with respect to the
**[0, 1] image** ``x`` ``(B, 3, H, W)`` (the backbone normalises inside, so the gradient includes
the ``1 / std`` factor of the normalisation) and differ in how the gradient crosses each ReLU
``r = max(z, 0)``, given the gradient ``G`` arriving at its output:

* **gradient** (Simonyan et al., 2014): the ordinary rule, ``G * 1[z > 0]``;
* **guided backpropagation** (Springenberg et al., 2015): ``ReLU(G) * 1[z > 0]``, i.e. only where
  both the forward input and the gradient are positive;
* **deconvnet** (Zeiler & Fergus, 2014): ``ReLU(G)``, ignoring the forward input.

The per-channel attributions ``(B, 3, H, W)`` are available from :meth:`attributions`; the map
of an explanation is the largest absolute value over the colour channels,
``M_ij = max_ch |A_ch,ij|`` ``(B, H, W)``.

The modified ReLU rules are installed by :func:`relu_gradient_rule`, a context manager that
hooks every ``nn.ReLU`` module of the network and always removes its hooks and restores the
modules' ``inplace`` flags, also when an exception is raised. Networks that apply ReLU as a
function (``F.relu``) cannot be hooked this way and are refused with a ``ValueError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.cam import GradCAM
from lcam.explainers.features import autograd_enabled
from lcam.explainers.registry import register_explainer
from lcam.maps import upsample_maps

__all__ = [
    "Deconvnet",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputGradient",
    "ReLURule",
    "relu_gradient_rule",
]

ReLURule = Literal["plain", "guided", "deconvnet"]
_FUNCTIONAL_RELUS = (F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_")


@dataclass
class _RuleSwitch:
    """The rule the hooked ReLUs apply in the *next* backward pass (may change between passes)."""

    rule: ReLURule


class _RuleReLU(torch.autograd.Function):
    """``max(z, 0)`` whose backward follows the rule held by a :class:`_RuleSwitch`."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, switch: _RuleSwitch) -> Tensor:
        ctx.switch = switch
        ctx.save_for_backward(inputs > 0)
        return inputs.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (positive,) = ctx.saved_tensors
        rule = ctx.switch.rule
        grad = grad_output if rule == "plain" else grad_output.clamp_min(0)
        if rule != "deconvnet":
            grad = grad.masked_fill(~positive, 0)
        return grad, None


def _check_hookable(backbone: FrozenBackbone) -> list[nn.ReLU]:
    relus = [module for module in backbone.model.modules() if isinstance(module, nn.ReLU)]
    functional = [
        node.name
        for graph in (backbone.body_graph, backbone.tail_graph)
        if graph is not None  # hook fallback: no graph, functional ReLUs cannot be listed
        for node in graph.nodes
        if node.op in ("call_function", "call_method") and node.target in _FUNCTIONAL_RELUS
    ]
    name = type(backbone.model).__name__
    if functional:
        raise ValueError(
            f"{name} applies ReLU as a function ({', '.join(functional)}); guided "
            "backpropagation and deconvnet can only change the gradient of nn.ReLU modules"
        )
    if not relus:
        raise ValueError(
            f"{name} has no nn.ReLU modules: guided backpropagation and deconvnet change the "
            "gradient of ReLU modules through hooks"
        )
    return relus


@contextlib.contextmanager
def relu_gradient_rule(backbone: FrozenBackbone, rule: ReLURule) -> Iterator[_RuleSwitch]:
    """Make every ``nn.ReLU`` of ``backbone.model`` backpropagate with ``rule`` inside the block.

    A forward hook replaces each ReLU's output by :class:`_RuleReLU` applied to its input (the
    module's own output is discarded), so the rule applies to every call of a module, also of a
    module used several times (torchvision's ResNet blocks). ``inplace`` is switched off while
    the hooks are active so the input is still intact. On exit (normal or by an exception) the
    hooks are removed and the ``inplace`` flags restored.

    Yields:
        A switch whose ``rule`` can be changed between backward passes of the same forward.

    Raises:
        ValueError: the network has no ``nn.ReLU`` module, or calls ReLU as a function.
    """
    relus = _check_hookable(backbone)
    switch = _RuleSwitch(rule)
    inplace = [relu.inplace for relu in relus]

    def hook(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> Tensor:
        return _RuleReLU.apply(inputs[0], switch)

    handles = []
    try:
        for relu in relus:
            relu.inplace = False
            handles.append(relu.register_forward_hook(hook))
        yield switch
    finally:
        for handle in handles:
            handle.remove()
        for relu, flag in zip(relus, inplace, strict=True):
            relu.inplace = flag


@dataclass
class _InputPass:
    image_gradients: Tensor  # (B, 3, H, W)
    feature_gradients: Tensor | None  # (B, C, h, w), ordinary ReLU rule
    features: Tensor  # (B, C, h, w)
    logits: Tensor  # (B, K)
    targets: Tensor  # (B,)


@register_explainer("gradient")
class InputGradient(Explainer):
    r"""Vanilla gradient saliency ``|dy_c / dx|``, reduced over colours by the maximum.

    .. math:: A = \frac{\partial y_c}{\partial x} \quad (B, 3, H, W), \qquad
              M_{ij} = \max_{ch} |A_{ch,ij}|

    ``x`` is the [0, 1] image (normalisation happens inside the backbone). Passes per image:
    1 forward, 1 backward (through the whole network). Subclasses change :attr:`rule`, the
    backward rule of the ReLUs.
    """

    forward_passes = 1.0
    backward_passes = 1.0
    rule: ClassVar[ReLURule] = "plain"

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__(backbone)
        if self.rule != "plain":
            _check_hookable(backbone)

    def _backward(self, images: Tensor, targets: Targets, feature_gradients: bool) -> _InputPass:
        """One forward; optionally a plain backward to the features, then one to the image."""
        hooks = (
            relu_gradient_rule(self.backbone, self.rule)
            if self.rule != "plain"
            else contextlib.nullcontext(_RuleSwitch("plain"))
        )
        with autograd_enabled(), hooks as switch:
            images = images.detach().clone().requires_grad_(True)
            features, skips = self.backbone.body(images)
            logits = self.backbone.tail(features, skips)
            resolved = resolve_targets(logits.detach(), targets).clone()  # no inference tensor
            score = logits.gather(1, resolved[:, None]).sum()
            grad_features = None
            if feature_gradients:
                switch.rule = "plain"
                (grad_features,) = torch.autograd.grad(score, features, retain_graph=True)
                switch.rule = self.rule
            (grad_images,) = torch.autograd.grad(score, images)
        return _InputPass(grad_images, grad_features, features.detach(), logits.detach(), resolved)

    def attributions(
        self, images: Tensor, targets: Targets = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-channel attributions ``(B, 3, H, W)``, logits ``(B, K)`` and targets ``(B,)``.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1] on the backbone's device.
            targets: classes to explain (``None``: the predicted class; an int; or ``(B,)``).
        """
        result = self._backward(images, targets, feature_gradients=False)
        return result.image_gradients, result.logits, result.targets

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        attributions, logits, resolved = self.attributions(images, targets)
        return attributions.abs().amax(dim=1), logits, resolved


@register_explainer("guided_backprop")
class GuidedBackprop(InputGradient):
    r"""Guided backpropagation: at every ReLU the gradient passes only where it is positive
    and the ReLU's forward input was positive, ``G_in = ReLU(G_out) * 1[z > 0]``.

    Map: ``max_ch |A|`` of the [0, 1]-image attribution ``A`` ``(B, 3, H, W)``. Passes per
    image: 1 forward, 1 backward. Matches captum's ``GuidedBackprop``.
    """

    rule = "guided"


@register_explainer("deconvnet")
class Deconvnet(InputGradient):
    r"""Deconvnet: at every ReLU the gradient passes only where it is positive,
    ``G_in = ReLU(G_out)``, whatever the forward input was.

    Map: ``max_ch |A|`` of the [0, 1]-image attribution ``A`` ``(B, 3, H, W)``. Passes per
    image: 1 forward, 1 backward. Matches captum's ``Deconvolution``.
    """

    rule = "deconvnet"


@register_explainer("guided_gradcam")
class GuidedGradCAM(InputGradient):
    r"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    .. math:: A = \mathrm{GB}_c(x) \odot \mathrm{up}(M^{\mathrm{Grad\text{-}CAM}}_c)
              \quad (B, 3, H, W), \qquad M_{ij} = \max_{ch} |A_{ch,ij}|

    with bilinear upsampling. Both factors come from **one** forward pass with the ReLU hooks
    installed: a first backward with the ordinary ReLU rule from ``y_c`` to the target-layer
    features (only through the tail) gives Grad-CAM, a second backward with the guided rule to
    the image gives guided backpropagation. Passes per image: 1 forward, 2 backward (the first
    through the tail only).

    Args:
        backbone: the frozen classifier.
    """

    backward_passes = 2.0
    rule = "guided"

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__(backbone)
        self.gradcam = GradCAM(backbone)

    def attributions(
        self, images: Tensor, targets: Targets = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        result = self._backward(images, targets, feature_gradients=True)
        cam = self.gradcam.maps_from(result.features, result.feature_gradients, result.targets)
        cam = upsample_maps(cam, tuple(images.shape[-2:]))
        return result.image_gradients * cam[:, None], result.logits, result.targets
