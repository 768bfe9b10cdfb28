r"""TAME: a multi-layer fusion attention head (Ntrougkas, Gkalelis, Mezaris, 2023).

Features from several depths ``F_i`` ``(B, C_i, h_i, w_i)`` each pass through a branch

.. math:: G_i = \mathrm{up}\big(\mathrm{ReLU}(\mathrm{BN}(\mathrm{conv}_{1\times1}(F_i)) + F_i)\big)

(``up`` = bilinear upsampling to the finest branch's resolution); the branches are concatenated
and fused by a 1x1 convolution ``sum_i C_i -> K`` into class logit maps ``S`` ``(B, K, h, w)``.
Training masks the image like L-CAM-Img; inference stays one forward pass, since every ``F_i`` is
a by-product of it. Maps are as fine as the finest branch (28x28 for VGG-16 and ResNet-50 at
224). Any backbone family works: the default layers are its last three stages
(:mod:`lcam.backbone.layers`).

Initialisation (our choice; the papers do not state one and the official code keeps PyTorch's
default, a fuse bias of about 0): the fuse convolution's bias starts at ``initial_bias = 1``, so
the attention maps start near ``sigmoid(1) = 0.73`` and the first masked images are nearly the
clean ones. Trained by image masking, maps that start near 0.5 dim the whole image first, and a
frozen classifier often assigns dim or black images to one fixed class; the loss is then already
low for that class with an all-dark map (cross-entropy low, area term minimal), and that class's
map collapses to ~0 everywhere, never to recover (the sigmoid's gradient vanishes). On the
built-in shapes data (black image -> "disc" with p = 0.94) this cost TAME a whole class's maps,
a sixth of the images; starting near 1, the area term carves the maps down from the clean image
while the cross-entropy holds on to the object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcam.backbone import BackboneOutput, FrozenBackbone, default_layers
from lcam.heads.conv import LCAMImgHead
from lcam.heads.fold import FoldCache, can_fold, norm_affine
from lcam.heads.norm import GlobalBatchNorm2d

__all__ = ["SharedTAMEHead", "TAMEHead", "default_tame_layers"]


def default_tame_layers(model: nn.Module, input_size: int | tuple[int, int] = 224) -> list[str]:
    """Three feature depths for TAME, shallow to deep: the last three stages.

    VGG (any depth): the paper's last three ``MaxPool2d`` of ``model.features``
    (``features.16/23/30`` in VGG-16). ResNet (any depth): ``layer2``, ``layer3``, ``layer4``.
    torchvision ``VisionTransformer``: its last three encoder layers (T-TAME). Any other model:
    the last module at each of its last three resolutions, or the last three blocks of a
    transformer (see :mod:`lcam.backbone.layers`; probed at ``input_size``).
    :meth:`FrozenBackbone.default_layers` does the same with what a backbone knows of its model
    (timm/Hugging Face stage descriptions, input size, token layout).

    Raises:
        ValueError: when no rule applies (pass ``target_layer`` as a list of module names).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    example = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    return default_layers(model, example, 3)


class _Branch(nn.Module):
    """``ReLU(BN(conv1x1(F)) + F)``: ``(B, C, h, w)`` -> ``(B, C, h, w)``.

    BN normalises with the statistics of the whole global batch under data-parallel training
    (:class:`~lcam.heads.norm.GlobalBatchNorm2d`), so a DDP run trains the same head as one
    process with the same global batch.

    The convolution has no bias: BN subtracts each channel's mean, so a bias before it cancels
    exactly and its true gradient is 0. What autograd returns is rounding noise, which Adam
    rescales into full-size steps (the bias wandered by ~1e-3 per step, differently in a DDP and
    a single-process run, and shifted the eval-mode maps through the running mean). The bias is
    still drawn at construction and then dropped, so a seeded head starts from the same weights
    as before; a checkpoint that holds ``conv.bias`` loads exactly, its bias folded into
    ``norm.running_mean`` (eval mode computes ``conv(F) + b - running_mean``).

    In eval mode BN is affine, ``BN(x) = x * s + t``, and the whole branch is one convolution:
    ``ReLU((diag(s) W + I) F + t)`` (:mod:`lcam.heads.fold`), which saves BN's and the residual
    sum's passes over the features (the same function, to float rounding).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.conv.register_parameter("bias", None)
        self.norm = GlobalBatchNorm2d(channels)
        self.register_load_state_dict_pre_hook(_fold_conv_bias)
        self._folded: FoldCache[tuple[Tensor, Tensor]] = FoldCache()

    def forward(self, features: Tensor) -> Tensor:
        if not can_fold(self.norm):
            return F.relu(self.norm(self.conv(features)) + features)
        weight, bias = self._folded.get(
            [*self.conv.parameters(), *self.norm.parameters(), *self.norm.buffers()], self.folded
        )
        return F.conv2d(features, weight.to(features.dtype), bias.to(features.dtype)).relu_()

    def folded(self) -> tuple[Tensor, Tensor]:
        """The eval-mode branch as one 1x1 convolution: weight ``(C, C, 1, 1)``, bias ``(C,)``
        (a conv bias, which only a hand-built old-layout branch has, is folded in too)."""
        scale, shift = norm_affine(self.norm)
        if self.conv.bias is not None:
            shift = shift + self.conv.bias * scale
        weight = self.conv.weight.flatten(1) * scale[:, None]
        eye = torch.eye(self.channels, dtype=weight.dtype, device=weight.device)
        return (weight + eye)[:, :, None, None], shift


def _fold_conv_bias(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Load hook: move an old checkpoint's ``conv.bias`` ``(C,)`` into ``norm.running_mean``."""
    bias = state_dict.pop(prefix + "conv.bias", None)
    running_mean = prefix + "norm.running_mean"
    if bias is not None and running_mean in state_dict:
        state_dict[running_mean] = state_dict[running_mean] - bias


class TAMEHead(LCAMImgHead):
    """Multi-layer fusion head: layer features ``[(B, C_i, h_i, w_i)]`` -> ``(B, K, h, w)``.

    Args:
        layer_channels: ``C_i`` of each branch.
        num_classes: ``K``.
        initial_bias: starting value of the fuse convolution's bias (see the module docstring;
            ``None`` keeps PyTorch's default initialisation, as the official code does).
    """

    def __init__(
        self, layer_channels: Sequence[int], num_classes: int, initial_bias: float | None = 1.0
    ) -> None:
        nn.Module.__init__(self)
        self.branches = nn.ModuleList(_Branch(channels) for channels in layer_channels)
        self.fuse = nn.Conv2d(sum(layer_channels), num_classes, kernel_size=1)
        if initial_bias is not None:
            nn.init.constant_(self.fuse.bias, initial_bias)

    @classmethod
    def for_backbone(cls, backbone: FrozenBackbone) -> TAMEHead:
        if len(backbone.target_layers) < 2:
            backbone.retarget(backbone.default_layers(3))
        return cls(backbone.layer_channels, backbone.num_classes)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        r"""Class logit maps ``(B, K, h, w)`` at the finest branch's resolution.

        Computed as :math:`S = b + \sum_i \mathrm{up}(W_i G_i)`, where ``W_i`` ``(K, C_i)`` is
        the fuse convolution's slice for branch ``i``: bilinear upsampling is linear and acts on
        each channel alike, so it commutes with the 1x1 convolution and this equals
        ``fuse(cat(up(G_i)))`` exactly, while each branch is mixed down to ``K`` channels at its
        own, coarser resolution (on ResNet-50 with K = 1000: 0.7 instead of 2.8 GMAC per image)
        and the ``sum C_i``-channel concatenation is never built.
        """
        weight, bias = self.fuse_rows()
        return self._fuse(
            layers,
            weight,
            bias.view(1, -1, 1, 1),
            lambda features, rows: F.conv2d(features, rows[:, :, None, None]),
        )

    def class_maps(self, output: BackboneOutput) -> Tensor:
        return self(output.layers)

    def target_maps(self, output: BackboneOutput, targets: Tensor) -> Tensor:
        """Logit maps ``S[b, targets[b]]`` ``(B, h, w)``: each branch mixed down with its
        targets' rows of ``W_i`` only, then upsampled and summed as in :meth:`forward`."""
        weight, bias = self.fuse_rows(targets)
        return self._fuse(
            output.layers,
            weight,
            bias.view(-1, 1, 1, 1),
            lambda features, rows: torch.einsum("bchw,bc->bhw", features, rows)[:, None],
        )[:, 0]

    def fuse_rows(self, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The fuse convolution's weight rows ``(N, sum C_i)`` and biases ``(N,)`` of
        ``classes`` ``(N,)`` (all ``K`` classes when ``None``)."""
        weight, bias = self.fuse.weight.flatten(1), self.fuse.bias
        if classes is None:
            return weight, bias
        return weight[classes], bias[classes]

    def _fuse(
        self,
        layers: Sequence[Tensor],
        rows: Tensor,
        bias: Tensor,
        mix: Callable[[Tensor, Tensor], Tensor],
    ) -> Tensor:
        """``bias + sum_i up(mix(G_i, rows_i))`` at the finest branch's resolution, where
        ``rows`` ``(..., sum C_i)`` are fuse-weight rows, split into each branch's ``C_i``."""
        size = max((layer.shape[-2:] for layer in layers), key=lambda s: s[0] * s[1])
        parts = rows.split([branch.channels for branch in self.branches], dim=-1)
        maps = bias
        for branch, layer, part in zip(self.branches, layers, parts, strict=True):
            features = branch(layer)
            mixed = mix(features, part.to(features.dtype))
            if mixed.shape[-2:] != size:
                mixed = F.interpolate(mixed, size=size, mode="bilinear", align_corners=False)
            maps = maps + mixed
        return maps


class SharedTAMEHead(TAMEHead):
    r"""TAME whose class maps share one learned map: fuse rows ``W_k = W_0 + D_k``.

    The same function class as :class:`TAMEHead` (any ``W_k`` is ``W_0 + (W_k - W_0)``), another
    parametrisation: the shared row ``W_0`` (and bias ``b_0``) is learned from the images of every
    class, and each class adds its own ``D_k``, ``d_k``, which start at zero. A class the head never
    trains on gets no gradient, so its map stays exactly the shared map
    ``S_0 = b_0 + \sum_i \mathrm{up}(W_{0,i} G_i)``: where the frozen model's evidence for the
    trained classes lies, not an explanation of that class (such images are still flagged
    ``Explanation.untrained``). Classes with few training images start from the shared map
    instead of from a random one. ``initial_bias`` goes to ``b_0``.
    """

    def __init__(
        self, layer_channels: Sequence[int], num_classes: int, initial_bias: float | None = 1.0
    ) -> None:
        super().__init__(layer_channels, num_classes, initial_bias=None)
        self.shared = nn.Conv2d(sum(layer_channels), 1, kernel_size=1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)
        if initial_bias is not None:
            nn.init.constant_(self.shared.bias, initial_bias)

    def fuse_rows(self, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weight, bias = super().fuse_rows(classes)
        return weight + self.shared.weight.flatten(1), bias + self.shared.bias
