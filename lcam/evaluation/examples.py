"""The report's pictures: a gallery of every method's overlays and misclassified images.

Kept per process (rank zero writes the report from its own); every entry holds plain
``(H, W, 3)`` uint8 arrays, so it pickles and serialises without tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lcam.viz import overlay, to_uint8

__all__ = ["ExampleKeeper", "overlay_array"]

TrueClassMaps = Callable[[str, Tensor, Tensor], Tensor]
"""``(method, row indices (n,), labels (n,)) -> (n, H, W)`` maps of the true classes."""


def overlay_array(image: Tensor, saliency: Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 overlay of a ``(H, W)`` map in [0, 1] on a ``(3, H, W)`` image."""
    blended = overlay(image[None].float(), saliency[None].float().to(image.device))[0]
    return to_uint8(blended).numpy()


class ExampleKeeper:
    """Keeps the first ``gallery_size`` images and up to ``max_misclassified`` misclassified ones.

    Args:
        gallery_size: images kept with every method's overlay.
        max_misclassified: images whose prediction differs from the label, kept with every
            method's map of the predicted and of the true class.
        class_names: names for the captions (indices otherwise).
    """

    def __init__(
        self, gallery_size: int, max_misclassified: int, class_names: Sequence[str] | None
    ) -> None:
        if gallery_size < 0 or max_misclassified < 0:
            raise ValueError("gallery_size and max_misclassified must be >= 0")
        self.gallery_size = gallery_size
        self.max_misclassified = max_misclassified
        self.class_names = list(class_names) if class_names else None
        self.gallery: list[dict[str, Any]] = []
        self.misclassified: list[dict[str, Any]] = []

    def keep(
        self,
        images: Tensor,
        labels: Tensor | None,
        predictions: Tensor,
        maps: Mapping[str, Tensor],
        true_class_maps: TrueClassMaps,
    ) -> None:
        """Keep what still fits from a batch.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            labels: ``(B,)`` dataset labels, or ``None`` (no misclassified examples then).
            predictions: ``(B,)`` predicted classes.
            maps: ``{method: (B, H, W) maps of the predicted classes}``.
            true_class_maps: called (once per method) only when misclassified images are kept.
        """
        room = self.gallery_size - len(self.gallery)
        for index in range(min(room, len(images))):
            label = None if labels is None else int(labels[index])
            entry = self._example(images[index], label, int(predictions[index]))
            entry["overlays"] = {
                name: overlay_array(images[index], method_maps[index])
                for name, method_maps in maps.items()
            }
            self.gallery.append(entry)
        room = self.max_misclassified - len(self.misclassified)
        if labels is None or room <= 0:
            return
        rows = torch.nonzero(predictions != labels).flatten()[:room]
        if len(rows) == 0:
            return
        true_maps = {name: true_class_maps(name, rows, labels[rows]) for name in maps}
        for position, row in enumerate(rows.tolist()):
            entry = self._example(images[row], int(labels[row]), int(predictions[row]))
            entry["overlays"] = {
                name: {
                    "predicted": overlay_array(images[row], method_maps[row]),
                    "true": overlay_array(images[row], true_maps[name][position]),
                }
                for name, method_maps in maps.items()
            }
            self.misclassified.append(entry)

    def clear(self) -> None:
        """Forget every kept example."""
        self.gallery.clear()
        self.misclassified.clear()

    def _example(self, image: Tensor, label: int | None, prediction: int) -> dict[str, Any]:
        return {
            "image": to_uint8(image).numpy(),
            "label": label,
            "prediction": prediction,
            "label_name": self._class_name(label),
            "prediction_name": self._class_name(prediction),
        }

    def _class_name(self, index: int | None) -> str | None:
        if index is None:
            return None
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)
