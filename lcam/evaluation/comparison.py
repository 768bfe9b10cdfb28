"""Compare explanation methods on the same images with every metric, in one pass per method.

:class:`MethodComparison` explains each batch **once per method** (timed), feeds that one set of
maps to every metric of the method, counts the classifier passes the method spent, and keeps a
small gallery of overlays and of misclassified images for the report
(:func:`lcam.evaluation.report.write_report`).

All accumulated numbers live in ``torchmetrics`` states reduced with ``"sum"``, so under DDP
``compute()`` (called on every rank) gives the same rows as one process would. The gallery and
the misclassified examples are kept per process (rank zero writes the report from its own).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import (
    Explainer,
    check_images,
    normalise_maps,
    resolve_targets,
    upsample_maps,
)
from lcam.explainers.learned import LearnedExplainer
from lcam.explanation import Explanation
from lcam.metrics import (
    ROAD,
    AverageDropIncrease,
    DeletionInsertion,
    EnergyPointingGame,
    MaskIoU,
    MaxSensitivity,
    PointingGame,
    boxes_to_masks,
)
from lcam.metrics.faithfulness import fraction_key
from lcam.viz import overlay, to_uint8

__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "MethodComparison",
    "MethodCost",
    "boxes_to_object_masks",
]

ALL_METRICS: tuple[str, ...] = (
    "adic",
    "road",
    "deletion_insertion",
    "pointing_game",
    "energy_pointing_game",
    "mask_iou",
    "max_sensitivity",
)
"""Every metric name :class:`MethodComparison` understands (``metrics=`` selects among them)."""

DEFAULT_METRICS: tuple[str, ...] = ALL_METRICS[:-1]
"""The default selection: everything but the costly max-sensitivity."""

_LOCALISATION = ("pointing_game", "energy_pointing_game", "mask_iou")

BoxesLike = Tensor | Sequence[Tensor | Sequence[Sequence[float]]]


class MethodCost(Metric):
    """Images, explanation time and classifier passes of one method, as sum states.

    ``update(images, seconds, forward_passes, backward_passes, located)``: the number of images
    of the batch, the wall time of explaining it, the passes *per image* the method reported and
    how many of the images had an object mask. ``compute()`` returns per-image means.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    images: Tensor
    seconds: Tensor
    forward_passes: Tensor
    backward_passes: Tensor
    located: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("images", "seconds", "forward_passes", "backward_passes", "located"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        images: int,
        seconds: float,
        forward_passes: float,
        backward_passes: float,
        located: int,
    ) -> None:
        """Accumulate one batch (passes are per image; they are weighted by ``images``)."""
        self.images += images
        self.seconds += seconds
        self.forward_passes += forward_passes * images
        self.backward_passes += backward_passes * images
        self.located += located

    def compute(self) -> dict[str, Tensor]:
        """``images``, ``located``, per-image ``forward_passes``/``backward_passes``, ``ms``."""
        count = self.images.clamp_min(1)
        return {
            "images": self.images,
            "located": self.located,
            "forward_passes": self.forward_passes / count,
            "backward_passes": self.backward_passes / count,
            "ms_per_image": 1000.0 * self.seconds / count,
        }


def boxes_to_object_masks(boxes: BoxesLike, size: tuple[int, int], device: torch.device) -> Tensor:
    """Union masks ``(B, H, W)`` of per-image boxes.

    Args:
        boxes: ``(B, 4)`` one box per image, or a sequence of ``B`` entries each ``(n_i, 4)``
            (any number of boxes, possibly none), all ``(x1, y1, x2, y2)`` in pixel coordinates
            of the images (the convention of :func:`lcam.metrics.boxes_to_masks`: a pixel is
            inside when its centre is).
        size: ``(H, W)`` of the images.
    """
    if isinstance(boxes, Tensor) and boxes.dim() == 2:
        return boxes_to_masks(boxes.to(device), size)
    masks = []
    for entry in boxes:
        entry = torch.as_tensor(entry, dtype=torch.float32, device=device).reshape(-1, 4)
        masks.append(boxes_to_masks(entry, size).any(dim=0))
    return torch.stack(masks)


@dataclass
class _Explained:
    """One method's result on a batch."""

    explanation: Explanation
    adic_maps: Tensor  # the maps AD/IC sees: raw (the head's pre-sigmoid logit map) or final
    class_maps: Tensor | None  # (B, K, h, w) logit maps of a learned head, else None
    seconds: float


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MethodComparison(nn.Module):
    """Every metric for every explanation method, from one explanation per method and image.

    For each batch and each method the maps are computed **once** (timed with
    :func:`time.perf_counter`, CUDA synchronised) and the same maps feed every selected metric:

    - ``adic``: :class:`~lcam.metrics.AverageDropIncrease` at ``fractions``. A
      :class:`~lcam.explainers.LearnedExplainer` is scored on its **pre-sigmoid** logit map of the
      explained class, as the L-CAM/TAME protocol does; it comes from the same single pass as the
      attention map (all K logit maps are a by-product of the pass). Other methods are scored on
      their raw maps (the protocol min-max normalises, then upsamples).
    - ``road``: :class:`~lcam.metrics.ROAD` (MoRF and LeRF at ``road_fractions``).
    - ``deletion_insertion``: :class:`~lcam.metrics.DeletionInsertion` AUCs and mean curves.
    - ``pointing_game``, ``energy_pointing_game``, ``mask_iou``: when the batch has object masks
      (or boxes, rasterised to masks).
    - ``max_sensitivity``: :class:`~lcam.metrics.MaxSensitivity` (off by default: it explains
      every image ``sensitivity_samples`` more times).

    The explained class is the predicted one. The forward/backward passes per image are those the
    explainer reports for its explanation; the timing covers only producing the maps (an untimed
    forward of the batch runs first, so the first method does not pay for cold caches).

    It also keeps (per process) the first ``gallery_size`` images with every method's overlay,
    and up to ``max_misclassified`` images whose prediction differs from the given label, with
    every method's map of the predicted and of the true class (the latter from a second,
    untimed explanation of those images only; a learned head needs none: it already has all K
    maps).

    The explainers and the backbone are held by reference, never registered as submodules, so
    attaching a comparison to a LightningModule adds nothing to its checkpoints (metric states
    are not persistent either).

    Args:
        backbone: the frozen classifier the metrics perturb (the one the explainers explain).
        explainers: ``{method name: explainer}``, e.g. ``{"lcam": learned, "gradcam": ...}``.
            Names must not contain ``"."``.
        fractions: AD/IC kept fractions (the papers' 100 %, 50 %, 15 %).
        road_fractions: ROAD removed fractions (T-TAME's 10..50, 70, 90 %).
        road_order: ``"both"``, ``"morf"`` or ``"lerf"``.
        deletion_steps: steps of the deletion/insertion curves.
        deletion_baseline: insertion start, ``"blur"`` (RISE paper) or ``"black"``.
        batch_size: maximum images per forward pass inside the metrics.
        gallery_size: images kept with every method's overlay.
        max_misclassified: misclassified images kept (0 disables the second explanation).
        metrics: names from :data:`ALL_METRICS` to compute (default :data:`DEFAULT_METRICS`).
        pointing_tolerance: pointing-game tolerance in pixels (15 in Zhang et al.).
        iou_threshold: threshold of the normalised map for :class:`~lcam.metrics.MaskIoU`.
        road_noise_std, seed: ROAD imputation noise and its seed.
        sensitivity_radius, sensitivity_samples: max-sensitivity settings.
        class_names: names of the classes for the gallery (default: the backbone's).
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        explainers: Mapping[str, Explainer],
        *,
        fractions: Sequence[float] = (1.0, 0.5, 0.15),
        road_fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9),
        road_order: str = "both",
        deletion_steps: int = 100,
        deletion_baseline: str = "blur",
        batch_size: int = 64,
        gallery_size: int = 8,
        max_misclassified: int = 8,
        metrics: Iterable[str] | None = None,
        pointing_tolerance: float = 15,
        iou_threshold: float = 0.5,
        road_noise_std: float = 0.01,
        seed: int = 0,
        sensitivity_radius: float = 0.02,
        sensitivity_samples: int = 10,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not explainers:
            raise ValueError("explainers must name at least one method")
        selected = tuple(DEFAULT_METRICS if metrics is None else metrics)
        unknown = sorted(set(selected) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose among {', '.join(ALL_METRICS)}")
        if gallery_size < 0 or max_misclassified < 0:
            raise ValueError("gallery_size and max_misclassified must be >= 0")
        for name, explainer in explainers.items():
            if not name or "." in name:
                raise ValueError(f"method names must be non-empty without '.', got {name!r}")
            if not isinstance(explainer, Explainer):
                raise TypeError(f"method {name!r} is not an Explainer: {type(explainer)}")
        self.__dict__["backbone"] = backbone  # references only: not part of any state_dict
        self.__dict__["explainers"] = dict(explainers)
        self.metric_names = tuple(m for m in ALL_METRICS if m in selected)
        self.fractions = tuple(float(p) for p in fractions)
        self.gallery_size = gallery_size
        self.max_misclassified = max_misclassified
        names = class_names if class_names is not None else backbone.class_names
        self.class_names = list(names) if names else None

        self.costs = nn.ModuleDict({name: MethodCost() for name in explainers})
        self.scores = nn.ModuleDict()
        for name, explainer in explainers.items():
            group: dict[str, Metric] = {}
            if "adic" in selected:
                group["adic"] = AverageDropIncrease(backbone, self.fractions, batch_size)
            if "road" in selected:
                group["road"] = ROAD(
                    backbone,
                    road_fractions,
                    order=road_order,
                    batch_size=batch_size,
                    noise_std=road_noise_std,
                    seed=seed,
                )
            if "deletion_insertion" in selected:
                group["deletion_insertion"] = DeletionInsertion(
                    backbone,
                    steps=deletion_steps,
                    batch_size=batch_size,
                    baseline=deletion_baseline,
                    return_curves=True,
                )
            if "pointing_game" in selected:
                group["pointing_game"] = PointingGame(tolerance=pointing_tolerance)
            if "energy_pointing_game" in selected:
                group["energy_pointing_game"] = EnergyPointingGame()
            if "mask_iou" in selected:
                group["mask_iou"] = MaskIoU(threshold=iou_threshold)
            if "max_sensitivity" in selected:
                group["max_sensitivity"] = MaxSensitivity(
                    lambda x, e=explainer: e.explain(x).maps,
                    radius=sensitivity_radius,
                    num_samples=sensitivity_samples,
                    seed=seed,
                )
            self.scores[name] = nn.ModuleDict(group)
        self.gallery: list[dict[str, Any]] = []
        self.misclassified: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ explaining
    @property
    def device(self) -> torch.device:
        """The backbone's device (images are moved there)."""
        return self.backbone.mean.device

    def _explain(self, explainer: Explainer, images: Tensor) -> _Explained:
        """One timed explanation of ``images`` for the predicted classes."""
        device = images.device
        if isinstance(explainer, LearnedExplainer):
            _synchronise(device)
            start = time.perf_counter()
            with torch.no_grad():
                output, class_maps = explainer.class_maps(images)
                targets = resolve_targets(output.logits, None)
                own = explainer.select(class_maps, targets)
                maps = normalise_maps(upsample_maps(own.float(), tuple(images.shape[-2:])))
            _synchronise(device)
            seconds = time.perf_counter() - start
            rows = torch.arange(len(targets), device=targets.device)
            explanation = Explanation(
                maps=maps,
                logits=output.logits.detach(),
                targets=targets,
                forward_passes=explainer.forward_passes,
                backward_passes=explainer.backward_passes,
                method=explainer.name,
            )
            return _Explained(explanation, class_maps[rows, targets].float(), class_maps, seconds)
        _synchronise(device)
        start = time.perf_counter()
        if type(explainer).explain is Explainer.explain:
            # The base explain() on the raw maps, keeping them: AD/IC normalises the raw maps
            # before upsampling them (the protocol's order).
            raw, logits, targets = explainer.compute_maps(images, None)
            raw = raw.detach().float()
            maps = normalise_maps(upsample_maps(raw, tuple(images.shape[-2:])))
            explanation = Explanation(
                maps=maps,
                logits=logits.detach(),
                targets=targets,
                forward_passes=explainer.forward_passes,
                backward_passes=explainer.backward_passes,
                method=explainer.name,
            )
        else:  # a custom explain(): use its maps as they come
            explanation = explainer.explain(images)
            raw = explanation.maps
        _synchronise(device)
        return _Explained(explanation, raw, None, time.perf_counter() - start)

    def _true_class_maps(
        self, explainer: Explainer, result: _Explained, images: Tensor, rows: Tensor, labels: Tensor
    ) -> Tensor:
        """Maps ``(n, H, W)`` of the true classes of the images ``rows`` (untimed)."""
        if result.class_maps is not None:
            assert isinstance(explainer, LearnedExplainer)
            selected = result.class_maps[rows, labels]
            if explainer.map_activation == "sigmoid":
                selected = selected.sigmoid()
            return normalise_maps(upsample_maps(selected.float(), tuple(images.shape[-2:])))
        # Ordinary tensors: gradient explainers index with the targets inside autograd, which
        # refuses tensors made in inference mode (Lightning's test loop).
        with torch.inference_mode(False):
            chosen, targets = images[rows].clone(), labels.clone()
        with torch.no_grad():
            return explainer.explain(chosen, targets=targets).maps

    # ------------------------------------------------------------------ accumulating
    def update(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        masks: Tensor | None = None,
        boxes: BoxesLike | None = None,
    ) -> None:
        """Explain a batch with every method once and accumulate every metric.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            labels: ``(B,)`` dataset labels (only for the misclassified examples).
            masks: ``(B, H, W)`` object masks (bool or {0, 1}) at the images' resolution.
            boxes: used when ``masks`` is None: ``(B, 4)`` or ``B`` entries of ``(n_i, 4)``
                boxes ``(x1, y1, x2, y2)`` in the images' pixels (see
                :func:`boxes_to_object_masks`).
        """
        images = check_images(images).to(self.device)
        batch, _, height, width = images.shape
        if self.costs[next(iter(self.costs))].images.device != images.device:
            self.to(images.device)
        if masks is None and boxes is not None:
            masks = boxes_to_object_masks(boxes, (height, width), images.device)
        if masks is not None:
            masks = masks.to(images.device).bool()
            if tuple(masks.shape) != (batch, height, width):
                raise ValueError(
                    f"masks must have shape {(batch, height, width)}, got {tuple(masks.shape)}"
                )
        if labels is not None:
            labels = torch.as_tensor(labels, device=images.device).long().reshape(batch)
        located = int(masks.flatten(1).any(dim=1).sum()) if masks is not None else 0

        # An untimed warm-up pass, so that the first method is not charged for cold caches or
        # allocations; its predictions also label the gallery.
        with torch.no_grad():
            predictions = self.backbone(images).argmax(dim=1)
        results: dict[str, _Explained] = {}
        for name, explainer in self.explainers.items():
            result = self._explain(explainer, images)
            results[name] = result
            explanation = result.explanation
            maps, targets = explanation.maps, explanation.targets
            group = self.scores[name]
            with torch.no_grad():
                if "adic" in group:
                    group["adic"].update(images, result.adic_maps, targets)
                if "road" in group:
                    group["road"].update(images, maps, targets)
                if "deletion_insertion" in group:
                    group["deletion_insertion"].update(images, maps, targets)
                if masks is not None:
                    for key in _LOCALISATION:
                        if key in group:
                            group[key].update(maps, masks)
            if "max_sensitivity" in group:
                group["max_sensitivity"].update(images)
            self.costs[name].update(
                batch,
                result.seconds,
                float(explanation.forward_passes),
                float(explanation.backward_passes),
                located if masks is not None else 0,
            )
        self._keep_examples(images, labels, predictions, results)

    def _keep_examples(
        self,
        images: Tensor,
        labels: Tensor | None,
        predictions: Tensor,
        results: dict[str, _Explained],
    ) -> None:
        room = self.gallery_size - len(self.gallery)
        for index in range(min(room, len(images))):
            label = None if labels is None else int(labels[index])
            entry = self._example(images[index], label, int(predictions[index]))
            entry["overlays"] = {
                name: _overlay_array(images[index], result.explanation.maps[index])
                for name, result in results.items()
            }
            self.gallery.append(entry)
        room = self.max_misclassified - len(self.misclassified)
        if labels is None or room <= 0:
            return
        rows = torch.nonzero(predictions != labels).flatten()[:room]
        if len(rows) == 0:
            return
        true_maps = {
            name: self._true_class_maps(self.explainers[name], result, images, rows, labels[rows])
            for name, result in results.items()
        }
        for position, row in enumerate(rows.tolist()):
            entry = self._example(images[row], int(labels[row]), int(predictions[row]))
            entry["overlays"] = {
                name: {
                    "predicted": _overlay_array(images[row], result.explanation.maps[row]),
                    "true": _overlay_array(images[row], true_maps[name][position]),
                }
                for name, result in results.items()
            }
            self.misclassified.append(entry)

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

    # ------------------------------------------------------------------ results
    def compute(self) -> list[dict[str, Any]]:
        """One row per method: ``method``, ``images``, passes, ``ms_per_image`` and metrics.

        Columns (for the selected metrics): ``ad@<p>``/``ic@<p>`` (percent),
        ``road_morf@<p>``/``road_lerf@<p>`` and their means ``road_morf_mean``/
        ``road_lerf_mean``, ``deletion_auc``, ``insertion_auc``, ``pointing_game``,
        ``energy_pointing_game``, ``mask_iou`` (``None`` when no image had a mask) and
        ``max_sensitivity``. Call it on every process under DDP (it synchronises).
        """
        return self.results()["rows"]

    def results(self) -> dict[str, Any]:
        """``{"rows", "curves", "gallery", "misclassified"}``: the keyword arguments of
        :func:`lcam.evaluation.report.write_report` apart from the run directory.

        ``curves`` is ``{method: {"fractions", "deletion", "insertion"}}`` (lists of floats: the
        mean deletion/insertion curves over the images).
        """
        rows: list[dict[str, Any]] = []
        curves: dict[str, dict[str, list[float]]] = {}
        with warnings.catch_warnings():
            # Metrics never updated (e.g. no masks seen) warn on compute; their value is unused.
            warnings.filterwarnings("ignore", message=r".*compute.*before.*update.*")
            for name in self.explainers:
                cost = {k: float(v) for k, v in self.costs[name].compute().items()}
                row: dict[str, Any] = {
                    "method": name,
                    "images": int(cost["images"]),
                    "forward_passes": cost["forward_passes"],
                    "backward_passes": cost["backward_passes"],
                    "ms_per_image": cost["ms_per_image"],
                }
                group = self.scores[name]
                if "adic" in group:
                    values = group["adic"].compute()
                    for fraction in self.fractions:
                        key = fraction_key(fraction)
                        row[f"ad@{key}"] = float(values[f"ad@{key}"])
                        row[f"ic@{key}"] = float(values[f"ic@{key}"])
                if "road" in group:
                    values = group["road"].compute()
                    for order in group["road"].orders:
                        keys = [k for k in values if k.startswith(order)]
                        for key in keys:
                            row[f"road_{key}"] = float(values[key])
                        row[f"road_{order}_mean"] = float(
                            sum(float(values[k]) for k in keys) / max(1, len(keys))
                        )
                if "deletion_insertion" in group:
                    metric = group["deletion_insertion"]
                    values = metric.compute()
                    row["deletion_auc"] = float(values["deletion_auc"])
                    row["insertion_auc"] = float(values["insertion_auc"])
                    curves[name] = {
                        "fractions": metric.fractions.tolist(),
                        "deletion": values["deletion_curve"].float().cpu().tolist(),
                        "insertion": values["insertion_curve"].float().cpu().tolist(),
                    }
                for key in _LOCALISATION:
                    if key in group:
                        value = float(group[key].compute())
                        row[key] = value if cost["located"] > 0 else None
                if "max_sensitivity" in group:
                    row["max_sensitivity"] = float(group["max_sensitivity"].compute())
                rows.append(row)
        return {
            "rows": rows,
            "curves": curves,
            "gallery": list(self.gallery),
            "misclassified": list(self.misclassified),
        }

    def reset(self) -> None:
        """Clear every state, the gallery and the misclassified examples."""
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()
        self.gallery.clear()
        self.misclassified.clear()


def _overlay_array(image: Tensor, saliency: Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 overlay of a ``(H, W)`` map in [0, 1] on a ``(3, H, W)`` image."""
    blended = overlay(image[None].float(), saliency[None].float().to(image.device))[0]
    return to_uint8(blended).numpy()
