"""The trained one-pass explainer: frozen backbone + attention head."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from lcam.backbone import BackboneOutput, FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.heads import LCAMHead, build_head

__all__ = ["LearnedExplainer", "TrainedClasses", "UntrainedClassWarning"]


class UntrainedClassWarning(UserWarning):
    """A learned head was asked for the map of a class no training image was explained as."""


class TrainedClasses:
    """Flags targets whose class no training image was explained as, and warns once.

    Mixed into every explainer of a trained head (the torch one and the exported ONNX one),
    which says only where its per-class training counts are (:meth:`training_counts`).
    """

    name: str
    backbone: Any
    _warned_untrained: bool = False

    def training_counts(self) -> Tensor | None:
        """``(K,)`` int64 training examples per class, or ``None`` when not recorded."""
        raise NotImplementedError

    def untrained_targets(self, targets: Tensor) -> Tensor | None:
        """``(B,)`` flags of targets with no training example; ``None`` when no counts are
        recorded (a head built, not trained, or a file older than the counts)."""
        counts = self.training_counts()
        if counts is None or not bool(counts.any()):
            return None
        untrained = counts.to(targets.device)[targets] == 0
        if bool(untrained.any()) and not self._warned_untrained:
            self._warned_untrained = True
            classes = sorted(set(targets[untrained].tolist()))
            names = self.backbone.class_names
            shown = [f"{c} ({names[c]})" if names else str(c) for c in classes]
            warnings.warn(
                f"{self.name}: class(es) {', '.join(shown)} had no training example, so their "
                f"maps do not explain them: they are the head's initialisation, or with "
                f"tame_shared the map all classes share (Explanation.untrained "
                f"marks the images; train on images of these classes). {int(counts.gt(0).sum())} "
                f"of {len(counts)} classes were trained. This warning is shown once per explainer.",
                UntrainedClassWarning,
                stacklevel=3,
            )
        return untrained


class LearnedExplainer(TrainedClasses, Explainer):
    """Class activation maps from one forward pass of the frozen network.

    The body runs once; the tail gives the logits and the head gives the logit maps ``S`` of all
    ``K`` classes from the same features. The explained map is the trained attention
    ``sigmoid(S[b, c_b])`` (``map_activation="sigmoid"``, the default) or the pre-sigmoid logit
    map ``S[b, c_b]`` (``"logit"``, what the papers' AD/IC protocol min-max normalises), then
    upsampled and min-max normalised.

    A head learns one map per class, and only from training images explained as that class
    (their predicted or dataset label). The buffer ``class_examples`` ``(K,)`` int64, saved with
    the head, counts them (summed over epochs and processes; training adds to it with
    :meth:`count_training_labels`). Where it is known (a nonzero sum), :meth:`explain` flags
    images whose class has a zero count (``Explanation.untrained``) and warns once: such a map is
    the head's initialisation (with ``tame_shared``, the map all classes share), however
    plausible it looks.

    Args:
        backbone: the frozen classifier.
        head: registry name of the head (``"lcam_fm"``, ``"lcam_img"``) or a head module.
        map_activation: ``"sigmoid"`` (default) or ``"logit"``.
    """

    backward_passes = 0.0

    def __init__(
        self,
        backbone: FrozenBackbone,
        head: str | LCAMHead = "lcam_fm",
        map_activation: Literal["sigmoid", "logit"] = "sigmoid",
    ) -> None:
        super().__init__(backbone)
        if isinstance(head, str):
            self.name = head
            head = build_head(head, backbone)
        else:
            self.name = type(head).__name__
        self.head = head
        if map_activation not in ("logit", "sigmoid"):
            raise ValueError(f"map_activation must be 'logit' or 'sigmoid', got {map_activation!r}")
        self.map_activation = map_activation
        self.register_buffer(
            "class_examples",
            torch.zeros(backbone.num_classes, dtype=torch.long, device=self.device),
        )

    @torch.no_grad()
    def count_training_labels(self, labels: Tensor) -> None:
        """Add the explained classes ``(N,)`` of one training step to ``class_examples``."""
        counts = torch.bincount(labels.flatten().long(), minlength=len(self.class_examples))
        self.class_examples += counts.to(self.class_examples.device)

    def training_counts(self) -> Tensor:
        """The ``class_examples`` buffer ``(K,)`` (all zeros: not recorded)."""
        return self.class_examples

    def class_maps(self, images: Tensor) -> tuple[BackboneOutput, Tensor]:
        """One pass: the backbone output and logit maps ``S`` ``(B, K, h, w)`` of all classes."""
        output = self.backbone.run(images)
        return output, self.head.class_maps(output)

    def activate(self, logit_maps: Tensor) -> Tensor:
        """Logit maps as explained: ``sigmoid`` (the attention) or unchanged (``"logit"``)."""
        return logit_maps.sigmoid() if self.map_activation == "sigmoid" else logit_maps

    def select(self, class_maps: Tensor, targets: Tensor) -> Tensor:
        """Raw maps ``(B, h, w)`` of ``targets`` ``(B,)`` from logit maps ``(B, K, h, w)``."""
        return self.activate(class_maps[torch.arange(len(targets), device=targets.device), targets])

    @torch.no_grad()
    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        # Only the explained class's map is computed; class_maps() gives all K from one pass.
        output = self.backbone.run(images)
        resolved = resolve_targets(output.logits, targets)
        # Pre-activation logit maps: explain() applies activate() (and keeps these as raw_maps).
        return self.head.target_maps(output, resolved), output.logits, resolved
