"""Gradient-free CAMs that weight target-layer channels by perturbing them: Score-CAM and
Ablation-CAM.

Both produce ``S_c = ReLU(sum_k w_k F_k)`` from the target-layer features ``F`` ``(B, C, h, w)``
and differ in how the channel weights ``w`` ``(B, C)`` are measured:

* **Score-CAM** (Wang et al., CVPRW 2020) masks the *input* with each channel;
* **Ablation-CAM** (Desai & Ramaswamy, WACV 2020) zeroes each channel and re-runs only the *tail*
  of the network from the modified features.

The ``C`` perturbed inputs (or feature maps) of every image are built as tensors chunk by chunk
and run in batches of ``batch_size``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lcam.backbone import BackboneOutput, FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.features import weighted_channel_sum
from lcam.explainers.registry import register_explainer
from lcam.explainers.sampling import class_scores, evaluate_pairs, perturbed_batch

__all__ = ["AblationCAM", "PerturbationChannelCAM", "ScoreCAM"]


class PerturbationChannelCAM(Explainer):
    """Base of CAMs whose map is ``ReLU(sum_k w_k F_k)`` with perturbation-measured weights.

    Subclasses implement :meth:`weights_from`, which gets the clean pass (features, logits,
    skips) and returns ``w`` ``(B, C)``; :meth:`measure_weights` runs the clean pass and
    measures the weights of a batch of images.

    Args:
        backbone: the frozen classifier.
        batch_size: perturbed inputs (or feature maps) per forward pass.
    """

    backward_passes = 0.0
    tail_only: ClassVar[bool] = False
    """The ``C`` perturbed passes resume from the target layer (they are tail passes)."""

    def __init__(self, backbone: FrozenBackbone, batch_size: int = 32) -> None:
        super().__init__(backbone)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._count_passes(backbone.feature_channels)
        self.negative_features = False

    def _count_passes(self, channels: int) -> None:
        self.forward_passes = float(channels + 1)
        self.tail_passes = float(channels) if self.tail_only else 0.0

    @abstractmethod
    def weights_from(self, images: Tensor, output: BackboneOutput, targets: Tensor) -> Tensor:
        """Channel weights ``(B, C)`` for the classes ``targets`` ``(B,)``."""

    @torch.no_grad()
    def measure_weights(self, images: Tensor, targets: Targets = None) -> tuple[Tensor, Tensor]:
        """Measured channel weights ``(B, C)`` and resolved targets ``(B,)`` of
        ``(B, 3, H, W)`` images (the clean pass plus the ``C`` perturbed passes per image)."""
        images = images.to(self.device)
        output = self.backbone.run(images)
        resolved = resolve_targets(output.logits, targets)
        return self.weights_from(images, output, resolved), resolved

    @torch.no_grad()
    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        output = self.backbone.run(images)
        resolved = resolve_targets(output.logits, targets)
        weights = self.weights_from(images, output, resolved)
        features = self.backbone.grid(output.features)
        maps = weighted_channel_sum(weights, features.float())
        self._count_passes(features.shape[1])
        self.negative_features = bool((features < 0).any())  # for degenerate_cause()
        return maps, output.logits, resolved


@register_explainer("scorecam")
class ScoreCAM(PerturbationChannelCAM):
    r"""Score-CAM: each channel, used as an input mask, is weighted by the score it keeps.

    For each channel ``k``, ``F_k`` ``(h, w)`` is upsampled bilinearly to the input size and
    min-max normalised, ``H_k = (U_k - min U_k) / (max U_k - min U_k + 1e-8)`` (a constant
    channel becomes an all-zero, i.e. black, mask); the masked image ``x * H_k`` (in [0, 1]
    space, so hidden pixels are black) goes through the network and

    * ``weighting="probability"`` (default; the paper and its official code):
      ``w_k = softmax(f(x * H_k))_c``, the class-``c`` probability;
    * ``weighting="channel_softmax"`` (pytorch-grad-cam 1.5.7's ``ScoreCAM``):
      ``w = softmax_k(y_c(x * H_k))``, a softmax *over the channels* of the class logits.

    The map is ``ReLU(sum_k w_k F_k)`` ``(B, h, w)``. pytorch-grad-cam also upsamples with
    ``align_corners=True`` (``nn.UpsamplingBilinear2d``); the official Score-CAM code uses
    ``align_corners=False``, our default.

    Passes per image: ``C + 1`` full forwards (one per channel plus the clean pass), no backward.

    Args:
        backbone: the frozen classifier.
        batch_size: masked images per forward pass.
        weighting: ``"probability"`` or ``"channel_softmax"``.
        align_corners: ``align_corners`` of the bilinear upsampling of the channels.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        batch_size: int = 32,
        weighting: Literal["probability", "channel_softmax"] = "probability",
        align_corners: bool = False,
    ) -> None:
        super().__init__(backbone, batch_size)
        if weighting not in ("probability", "channel_softmax"):
            raise ValueError(
                f"weighting must be 'probability' or 'channel_softmax', got {weighting!r}"
            )
        self.weighting = weighting
        self.align_corners = align_corners

    def channel_masks(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """Upsampled, per-map min-max normalised masks: ``(n, h, w)`` -> ``(n, H, W)``."""
        up = F.interpolate(
            features[:, None].float(), size=size, mode="bilinear", align_corners=self.align_corners
        )[:, 0]
        flat = up.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1)
        high = flat.max(dim=1).values.view(-1, 1, 1)
        return (up - low) / (high - low + 1e-8)

    def degenerate_cause(self, maps: Tensor) -> str:
        """Score-CAM's weights are probabilities (positive): on a layer with negative outputs
        the map can vanish."""
        if self.negative_features:
            return (
                f"target layer output is not post-activation: the features of "
                f"{self.backbone.target_layer!r} take negative values, and Score-CAM weights "
                "are positive, so the ReLU of the weighted sum removes everything when the "
                "negative values dominate; choose a layer after a ReLU (a stage output)"
            )
        return super().degenerate_cause(maps)

    def weights_from(self, images: Tensor, output: BackboneOutput, targets: Tensor) -> Tensor:
        features = self.backbone.grid(output.features)
        size = (images.shape[-2], images.shape[-1])
        score = "probability" if self.weighting == "probability" else "logit"

        def evaluate(image_idx: Tensor, channel: Tensor) -> Tensor:
            masks = self.channel_masks(features[image_idx, channel], size)
            inputs = perturbed_batch(len(image_idx), images)
            torch.mul(images[image_idx], masks[:, None].to(images.dtype), out=inputs)
            return class_scores(self.backbone(inputs), targets[image_idx], score)

        batch, channels = features.shape[:2]
        scores = evaluate_pairs(batch, channels, self.batch_size, evaluate, images.device)
        return scores if self.weighting == "probability" else scores.softmax(dim=1)


@register_explainer("ablationcam")
class AblationCAM(PerturbationChannelCAM):
    r"""Ablation-CAM: a channel's weight is the relative score drop when it is zeroed.

    With ``y_c`` the class-``c`` logit of the clean pass and ``y_c^{(k)}`` the logit after setting
    channel ``k`` of the target-layer features to zero and resuming the forward from there
    (``backbone.tail(F with F_k = 0, skips)``; the layers before the target layer are not re-run),

    .. math::
        w_k = \frac{y_c - y_c^{(k)}}{y_c}, \qquad S_c = \mathrm{ReLU}\Big(\sum_k w_k F_k\Big).

    As in the paper (and pytorch-grad-cam) the score is the pre-softmax logit; note that a negative
    ``y_c`` flips the sign of every weight (the definition's, not ours). ``|y_c| < 1e-8`` is
    replaced by ``+-1e-8`` to avoid a division by zero.

    Passes per image: ``forward_passes = C + 1``, of which one is a full forward (the clean pass)
    and ``tail_passes = C`` run only the tail (from the target layer to the logits); no backward.

    Args:
        backbone: the frozen classifier.
        batch_size: ablated feature maps per tail pass.
    """

    tail_only = True

    def weights_from(self, images: Tensor, output: BackboneOutput, targets: Tensor) -> Tensor:
        features, skips = output.features, output.skips
        # Channels are ablated on the (B, C, h, w) grid, whatever the layer's own layout
        # (channels-last maps, tokens), and converted back before the tail resumes.
        grid = self.backbone.grid(features)

        def evaluate(image_idx: Tensor, channel: Tensor) -> Tensor:
            ablated = grid[image_idx]  # advanced indexing copies
            ablated[torch.arange(len(channel), device=channel.device), channel] = 0
            resumed = self.backbone.from_grid(ablated, like=features[image_idx])
            logits = self.backbone.tail(resumed, tuple(skip[image_idx] for skip in skips))
            return class_scores(logits, targets[image_idx], "logit")

        batch, channels = grid.shape[:2]
        ablated = evaluate_pairs(batch, channels, self.batch_size, evaluate, images.device)
        clean = class_scores(output.logits, targets, "logit")[:, None]
        eps = 1e-8
        denominator = torch.where(clean >= 0, clean.clamp_min(eps), clean.clamp_max(-eps))
        return (clean - ablated) / denominator
