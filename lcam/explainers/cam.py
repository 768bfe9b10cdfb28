r"""Class activation maps that weight the target-layer channels: CAM and the gradient CAMs.

Every method here produces, for the class ``c_b`` of image ``b``, the map

.. math:: M_b = \mathrm{ReLU}\Big(\sum_k w_{bk} F_{bk}\Big) \qquad (h \times w)

from the target-layer features ``F`` ``(B, C, h, w)``, and differs only in the channel weights
``w`` ``(B, C)``:

* **CAM** (Zhou et al., CVPR 2016): the row of the final linear layer, ``w_k = W[c, k]``;
* **Grad-CAM** (Selvaraju et al., ICCV 2017): ``w_k = mean_ij g_kij`` with ``g = dy_c / dF``;
* **Grad-CAM++** (Chattopadhyay et al., WACV 2018): ``w_k = sum_ij alpha_kij ReLU(g_kij)``;
* **XGrad-CAM** (Fu et al., BMVC 2020): ``w_k = sum_ij F_kij g_kij / sum_ij F_kij``.

``y_c`` is the pre-softmax logit. The gradients come from the *fast path*: the body of the frozen
network runs once without autograd, the features are detached and marked as requiring gradients,
and only the tail (the layers after the target layer) is run with autograd, so the single
backward pass never enters a layer before the target layer. One backward of the batch sum
``sum_b y_{b, c_b}`` gives every image its own gradient because the images of a batch do not
interact in an eval-mode network. :meth:`_ChannelWeightCAM.compute_maps_full_backward` gives the
same maps by backpropagating through the whole network from the image, as most libraries do.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.registry import register_explainer

__all__ = [
    "CAM",
    "FeaturePass",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "autograd_enabled",
    "capture_output",
    "feature_pass",
    "linear_after_global_pool",
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
            target_module = backbone.model.get_submodule(backbone.target_layer)
            with capture_output(target_module) as outputs:
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


class _ChannelWeightCAM(Explainer):
    """Base of the CAMs whose map is ``ReLU(sum_k w_k F_k)`` ``(B, h, w)``.

    It runs the pass (:func:`feature_pass`, whose only hook, in the full-backward check, is
    always removed) and combines the channels; a variant only implements
    :meth:`channel_weights`.

    Args:
        backbone: the frozen classifier.
        relu: keep only the positive evidence (``True``, the published definition); ``False``
            returns the signed weighted sum.
    """

    forward_passes = 1.0
    backward_passes = 1.0
    needs_gradients: ClassVar[bool] = True

    def __init__(self, backbone: FrozenBackbone, relu: bool = True) -> None:
        super().__init__(backbone)
        self.relu = relu

    @abstractmethod
    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Channel weights ``w`` ``(B, C)``.

        Args:
            features: ``F`` ``(B, C, h, w)``.
            gradients: ``dy_c / dF`` ``(B, C, h, w)``, ``None`` when ``needs_gradients`` is off.
            targets: explained classes ``(B,)``.
        """

    def maps_from(self, features: Tensor, gradients: Tensor | None, targets: Tensor) -> Tensor:
        """Raw maps ``ReLU(sum_k w_k F_k)`` ``(B, h, w)`` at the feature resolution."""
        weights = self.channel_weights(features, gradients, targets)
        return weighted_channel_sum(weights, features, relu=self.relu)

    def _maps(
        self, images: Tensor, targets: Targets, full_backward: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        result = feature_pass(
            self.backbone,
            images,
            targets,
            gradients=self.needs_gradients,
            full_backward=full_backward,
        )
        maps = self.maps_from(result.features, result.gradients, result.targets)
        return maps, result.logits, result.targets

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Fast path: raw maps ``(B, h, w)``, logits ``(B, K)`` and targets ``(B,)``."""
        return self._maps(images, targets, full_backward=False)

    def compute_maps_full_backward(
        self, images: Tensor, targets: Targets
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`compute_maps`, with the backward through the whole network from the image."""
        return self._maps(images, targets, full_backward=True)


@register_explainer("gradcam")
class GradCAM(_ChannelWeightCAM):
    r"""Grad-CAM: channels weighted by their spatially averaged gradient.

    .. math:: w_k = \frac{1}{hw} \sum_{ij} \frac{\partial y_c}{\partial F_{kij}}, \qquad
              M = \mathrm{ReLU}\Big(\sum_k w_k F_k\Big)

    with ``y_c`` the pre-softmax logit. Passes per image: 1 forward, 1 backward (tail only).
    """

    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        assert gradients is not None
        return gradients.mean(dim=(2, 3))


@register_explainer("gradcampp")
class GradCAMPlusPlus(_ChannelWeightCAM):
    r"""Grad-CAM++: positive gradients weighted by a closed-form second-order coefficient.

    With the score ``Y = exp(y_c)`` the second and third derivatives are powers of the first,
    which gives, with ``g = dy_c / dF`` ``(B, C, h, w)``,

    .. math:: \alpha_{kij} = \frac{g_{kij}^2}{2 g_{kij}^2 + \sum_{ab} F_{kab}\, g_{kij}^3
              + \epsilon}, \qquad w_k = \sum_{ij} \alpha_{kij}\, \mathrm{ReLU}(g_{kij})

    and ``alpha = 0`` where ``g = 0``. The factor ``exp(y_c)`` of ``dY/dF`` is dropped: it is
    one positive number per image, which min-max normalisation removes. This is the definition
    of grad-cam's ``GradCAMPlusPlus`` (``eps = 1e-6``). Passes: 1 forward, 1 backward.

    Args:
        backbone: the frozen classifier.
        relu: see :class:`_ChannelWeightCAM`.
        eps: added to the denominator of ``alpha``.
    """

    def __init__(self, backbone: FrozenBackbone, relu: bool = True, eps: float = 1e-6) -> None:
        super().__init__(backbone, relu=relu)
        self.eps = eps

    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        assert gradients is not None
        squared = gradients.square()
        channel_sums = features.sum(dim=(2, 3), keepdim=True)
        alpha = squared / (2 * squared + channel_sums * squared * gradients + self.eps)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))


@register_explainer("xgradcam")
class XGradCAM(_ChannelWeightCAM):
    r"""XGrad-CAM: gradients averaged with the channel's own activations as weights.

    .. math:: w_k = \frac{\sum_{ij} F_{kij}\, g_{kij}}{\sum_{ij} F_{kij} + \epsilon}

    with ``g = dy_c / dF``. Passes: 1 forward, 1 backward.

    Args:
        backbone: the frozen classifier.
        relu: see :class:`_ChannelWeightCAM`.
        eps: added to the channel sums (grad-cam's ``XGradCAM`` uses 1e-7).
    """

    def __init__(self, backbone: FrozenBackbone, relu: bool = True, eps: float = 1e-7) -> None:
        super().__init__(backbone, relu=relu)
        self.eps = eps

    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        assert gradients is not None
        weighted = (features * gradients).sum(dim=(2, 3))
        return weighted / (features.sum(dim=(2, 3)) + self.eps)


_FLATTENS = {torch.flatten, torch.squeeze, torch.reshape, "flatten", "view", "reshape", "squeeze"}
_GLOBAL_MEAN_DIMS = ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Short name of a tail operation for error messages (``AdaptiveAvgPool2d((7, 7))``)."""
    if node.op != "call_module":
        return getattr(node.target, "__name__", str(node.target))
    module = modules[str(node.target)]
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return f"{type(module).__name__}({module.output_size})"
    return type(module).__name__


def _step_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Kind of a tail operation: ``pool``, ``flatten``, ``linear``, ``identity`` or ``other``."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
            return "pool" if size in (1, (1, 1)) else "other"
        if isinstance(module, nn.Flatten):
            return "flatten"
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, (nn.Identity, nn.Dropout)):  # identities in eval mode
            return "identity"
        return "other"
    if node.op in ("call_function", "call_method"):
        if node.target in _FLATTENS:
            return "flatten"
        if node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            return "pool" if size in (1, (1, 1)) else "other"
        if node.target in (torch.mean, "mean"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if isinstance(dims, (tuple, list)) and set(dims) in _GLOBAL_MEAN_DIMS:
                return "pool"
    return "other"


def linear_after_global_pool(backbone: FrozenBackbone) -> str:
    """Name of the linear layer that directly follows global average pooling of the features.

    The tail (the layers after the target layer, as traced by ``torch.fx``) must consist of one
    global average pool (``AdaptiveAvgPool2d(1)``, ``adaptive_avg_pool2d(x, 1)`` or a mean over
    the spatial dimensions), optional flattening, and one ``nn.Linear`` giving the logits;
    eval-mode identities (``Dropout``, ``Identity``) are allowed anywhere.

    Raises:
        ValueError: naming the model and its tail when it has another structure.
    """
    modules = dict(backbone.model.named_modules())
    graph = backbone.tail_graph
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    chain: list[fx.Node] = []
    node = placeholders[0]
    problem = ""
    while not problem:
        users = list(node.users)
        if len(users) != 1:
            problem = f"an operation whose output is used {len(users)} times"
            break
        node = users[0]
        if node.op == "output":
            break
        chain.append(node)
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    kinds = [kind for kind in (_step_kind(n, modules) for n in chain) if kind != "identity"]
    if not problem and (len(calls) != len(chain) or any(p.users for p in placeholders[1:])):
        problem = "operations that do not act on the target-layer features alone"
    if not problem and (
        not kinds
        or kinds[0] != "pool"
        or kinds[-1] != "linear"
        or any(kind != "flatten" for kind in kinds[1:-1])
        or node.args[0] is not chain[-1]
    ):
        problem = " -> ".join(_describe(n, modules) for n in chain) or "no operation"
    if problem:
        raise ValueError(
            "CAM needs global average pooling followed by one linear layer after the target "
            f"layer; {type(backbone.model).__name__} has {problem} after "
            f"{backbone.target_layer!r}. Use Grad-CAM instead."
        )
    linear = next(n for n in reversed(chain) if _step_kind(n, modules) == "linear")
    return str(linear.target)


@register_explainer("cam")
class CAM(_ChannelWeightCAM):
    r"""CAM: channels weighted by the final linear layer's row of the explained class.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k W_{ck} F_k\Big)

    Only defined when the tail is global average pooling followed by one linear layer
    ``y = W \bar F + b`` (ResNets at ``layer4``); then ``dy_c / dF_kij = W_ck / (hw)`` and CAM is
    exactly ``hw`` times Grad-CAM. The original CAM has no ReLU; it is applied by default for
    consistency with Grad-CAM (negative evidence is dropped; ``relu=False`` keeps it). The bias
    is not part of the map. Passes per image: 1 forward, no backward.

    Args:
        backbone: the frozen classifier.
        relu: see :class:`_ChannelWeightCAM`.

    Raises:
        ValueError: when the layers after the target layer are not global pooling + one linear.
    """

    backward_passes = 0.0
    needs_gradients = False

    def __init__(self, backbone: FrozenBackbone, relu: bool = True) -> None:
        super().__init__(backbone, relu=relu)
        self.linear_name = linear_after_global_pool(backbone)
        linear = backbone.model.get_submodule(self.linear_name)
        if not isinstance(linear, nn.Linear) or linear.in_features != backbone.feature_channels:
            raise ValueError(
                f"CAM needs a linear layer over the {backbone.feature_channels} feature channels; "
                f"{self.linear_name!r} is {linear}"
            )

    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        linear = self.backbone.model.get_submodule(self.linear_name)
        return linear.weight[targets].to(features.dtype)
