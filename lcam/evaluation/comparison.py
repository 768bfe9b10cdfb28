"""Compare explanation methods on the same images with every metric, in one pass per method.

:class:`MethodComparison` explains each batch **once per method** (timed), feeds that one set of
maps to every metric of the method (the metrics and their columns are the table in
:mod:`lcam.evaluation.specs`), counts the classifier passes the method spent, and keeps a small
gallery of overlays and of misclassified images for the report
(:func:`lcam.evaluation.report.write_report`).

All accumulated numbers live in ``torchmetrics`` states reduced with ``"sum"``, so under DDP
``compute()`` (called on every rank) gives the same rows as one process would.

A learned head explains a class no training image had with its initialisation (``tame_shared``: the
map all classes share), not an explanation of that class (``Explanation.untrained``). Every metric
is therefore kept in two parts, the images every method explains for a trained class and the
others, so that besides the rows over all images (the two parts merged,
:meth:`torchmetrics.Metric.merge_state`) the comparison also gives every method's rows on the
trained-class images alone, the set where the head had something to learn, at no extra classifier
pass. The gallery and the misclassified examples are kept per process (rank zero writes the report
from its own).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lcam.backbone import FrozenBackbone
from lcam.evaluation.cost import MethodCost
from lcam.evaluation.examples import ExampleKeeper
from lcam.evaluation.protocol import Explained, LearnedMaps, check_learned_maps, explain_timed
from lcam.evaluation.specs import (
    ALL_METRICS,
    COMPARISON_KEYS,
    DEFAULT_METRICS,
    OWN_KEYS,
    SPECS,
    ComparisonOptions,
    Scored,
    check_comparison_options,
    checked_metrics,
    row_values,
)
from lcam.explainers import Explainer, LearnedExplainer
from lcam.explainers.base import check_images
from lcam.maps import boxes_to_masks

__all__ = [
    "ALL_METRICS",
    "COMPARISON_KEYS",
    "DEFAULT_METRICS",
    "MethodComparison",
    "MethodCost",
    "boxes_to_object_masks",
    "check_comparison_options",
]

BoxesLike = Tensor | Sequence[Tensor | Sequence[Sequence[float]]]


def boxes_to_object_masks(boxes: BoxesLike, size: tuple[int, int], device: torch.device) -> Tensor:
    """Union masks ``(B, H, W)`` of per-image boxes.

    Args:
        boxes: ``(B, 4)`` one box per image, or a sequence of ``B`` entries each ``(n_i, 4)``
            (any number of boxes, possibly none), all ``(x1, y1, x2, y2)`` in pixel coordinates
            of the images (the convention of :func:`lcam.maps.boxes_to_masks`: a pixel is
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


def _located(masks: Tensor | None, rows: Tensor | None = None) -> int:
    """How many images (of the ``(B,)`` bool selection ``rows``) have a non-empty object mask
    among ``(B, H, W)`` ``masks``."""
    if masks is None:
        return 0
    has_object = masks.flatten(1).any(dim=1)
    return int((has_object if rows is None else has_object & rows).sum())


def _trained_columns(row: Mapping[str, Any], trained_on: frozenset[str]) -> str:
    """The columns of ``row`` in ``trained_on``, in row order, separated by spaces."""
    return " ".join(column for column in row if column in trained_on)


class MethodComparison(nn.Module):
    """Every metric for every explanation method, from one explanation per method and image.

    For each batch and each method the explainer's own ``explain()`` runs **once** (timed with
    :func:`time.perf_counter`, CUDA synchronised) and its maps feed every selected metric
    (:data:`~lcam.evaluation.specs.SPECS` lists them with their columns):

    - ``adic``: :class:`~lcam.metrics.AverageDropIncrease` at ``fractions``, on the raw maps of
      the same call (:mod:`lcam.evaluation.protocol`): a
      :class:`~lcam.explainers.LearnedExplainer` is scored on its **pre-sigmoid** logit map of
      the explained class, as the L-CAM/TAME protocol does (``learned_maps="shown"``: on the map
      it shows, e.g. the sigmoid attention); other methods on their raw maps (the protocol
      min-max normalises, then upsamples).
    - ``road``: :class:`~lcam.metrics.ROAD` (MoRF and LeRF at ``road_fractions``).
    - ``deletion_insertion``: deletion and insertion AUCs and mean curves with the black and
      the blurred baseline
      (:class:`~lcam.evaluation.deletion_baselines.DeletionInsertionBaselines`).
    - ``sparseness``: :class:`~lcam.metrics.Sparseness` (higher better; no forward).
    - ``pointing_game``, ``energy_pointing_game``, ``mask_iou``: when the batch has object masks
      (or boxes, rasterised to masks).
    - ``max_sensitivity``: :class:`~lcam.metrics.MaxSensitivity` (off by default: it explains
      every image ``sensitivity_samples`` more times).
    - ``faithfulness_correlation`` (higher better), ``monotonicity`` (higher), ``infidelity``
      (lower), ``random_logit`` (lower): the other Quantus-style metrics
      (:data:`~lcam.evaluation.specs.OPT_IN_METRICS`, off by default).

    Cost of the default metrics, in forwards of the classifier per image and method, on top of
    the explanation: deletion/insertion ``2 * (deletion_steps + 1)`` per baseline (404 with the
    default 100 steps and both baselines), ROAD one per removed fraction and order (14), AD/IC
    one per fraction plus the clean image (4); localisation and sparseness none (measured by
    ``tests/evaluation/test_trained_on.py``). Halving ``deletion_steps`` or keeping one baseline
    halves the largest part.

    The explained class is the predicted one. The forward/backward passes per image are those the
    explainer reports for its explanation; the timing covers only producing the maps (an untimed
    forward of the batch runs first, so the first method does not pay for cold caches).

    It also keeps (per process) the first ``gallery_size`` images with every method's overlay,
    and up to ``max_misclassified`` images whose prediction differs from the given label, with
    every method's map of the predicted and of the true class (the latter from a second,
    untimed explanation of those images only).

    Each row records, in ``trained_on``, the columns that method's training objective optimises
    (``trained_on`` argument; a learned head's set comes from its training configuration,
    :attr:`lcam.training.LCAMModule.trained_on`; classic methods train on nothing), and the report
    marks those cells and groups the columns into metrics a head trains on and independent ones.

    The explainers and the backbone are held by reference, never registered as submodules, so
    attaching a comparison to a LightningModule adds nothing to its checkpoints (metric states
    are not persistent either).

    Args:
        backbone: the frozen classifier the metrics perturb (the one the explainers explain).
        explainers: ``{method name: explainer}``, e.g. ``{"lcam": learned, "gradcam": ...}``.
            Names must not contain ``"."``.
        metrics: names from :data:`ALL_METRICS` to compute (default :data:`DEFAULT_METRICS`).
        gallery_size: images kept with every method's overlay.
        max_misclassified: misclassified images kept (0 disables the second explanation).
        class_names: names of the classes for the gallery (default: the backbone's).
        learned_maps: the AD/IC maps of learned heads, ``"logit"`` (the papers' pre-sigmoid
            map) or ``"shown"`` (see :func:`~lcam.evaluation.protocol.explain_timed`).
        trained_on: ``{method name: column names its objective trains on}`` (methods not named
            train on nothing).
        **options: the metrics' settings, the fields of
            :class:`~lcam.evaluation.options.ComparisonOptions`: ``fractions``,
            ``road_fractions``, ``road_order``, ``deletion_steps``, ``deletion_baselines``,
            ``batch_size``, ``pointing_tolerance``, ``iou_threshold``, ``road_noise_std``,
            ``seed``, ``sensitivity_radius``, ``sensitivity_samples``, ``faithfulness_runs``,
            ``faithfulness_subset``, ``monotonicity_steps``, ``infidelity_samples``,
            ``infidelity_std``. Any other key raises :class:`ValueError` naming the valid ones
            (:data:`COMPARISON_KEYS`); ``train.py`` takes all of them in ``--model.comparison``.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        explainers: Mapping[str, Explainer],
        *,
        metrics: Iterable[str] | None = None,
        gallery_size: int = 8,
        max_misclassified: int = 8,
        class_names: Sequence[str] | None = None,
        learned_maps: LearnedMaps = "logit",
        trained_on: Mapping[str, Iterable[str]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.options = ComparisonOptions.from_mapping(options, OWN_KEYS)
        self.learned_maps = check_learned_maps(learned_maps)
        if not explainers:
            raise ValueError("explainers must name at least one method")
        selected = checked_metrics(metrics)
        for name, explainer in explainers.items():
            if not name or "." in name:
                raise ValueError(f"method names must be non-empty without '.', got {name!r}")
            if not isinstance(explainer, Explainer):
                raise TypeError(f"method {name!r} is not an Explainer: {type(explainer)}")
        strangers = sorted(set(trained_on or {}) - set(explainers))
        if strangers:
            raise ValueError(f"trained_on names methods that are not compared: {strangers}")
        self.trained_on = {name: frozenset((trained_on or {}).get(name, ())) for name in explainers}
        names = class_names if class_names is not None else backbone.class_names
        self.examples = ExampleKeeper(gallery_size, max_misclassified, names)
        self.__dict__["backbone"] = backbone  # references only: not part of any state_dict
        self.__dict__["explainers"] = dict(explainers)
        self.specs = tuple(spec for spec in SPECS if spec.name in selected)
        self.metric_names = tuple(spec.name for spec in self.specs)
        self.fractions = self.options.fractions
        self.costs = nn.ModuleDict({name: MethodCost() for name in explainers})
        # Images and located images of the trained-class part (see the module docstring).
        self.trained_cost = MethodCost()
        self.scores = nn.ModuleDict()  # the trained-class part of every metric
        self.untrained_scores = nn.ModuleDict()  # the images some method flags as untrained
        for name, explainer in explainers.items():
            self.scores[name] = self._metrics(explainer)
            self.untrained_scores[name] = self._metrics(explainer)

    def _metrics(self, explainer: Explainer) -> nn.ModuleDict:
        """A fresh metric of every selected spec for ``explainer``."""
        return nn.ModuleDict(
            {spec.name: spec.build(self.backbone, explainer, self.options) for spec in self.specs}
        )

    @property
    def device(self) -> torch.device:
        """The backbone's device (images are moved there)."""
        return self.backbone.mean.device

    @property
    def gallery(self) -> list[dict[str, Any]]:
        """The kept gallery examples (see :class:`~lcam.evaluation.examples.ExampleKeeper`)."""
        return self.examples.gallery

    @property
    def misclassified(self) -> list[dict[str, Any]]:
        """The kept misclassified examples."""
        return self.examples.misclassified

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
        located = _located(masks)

        # An untimed warm-up pass, so that the first method is not charged for cold caches or
        # allocations; its predictions also label the gallery.
        with torch.no_grad():
            predictions = self.backbone(images).argmax(dim=1)
        results: dict[str, Explained] = {
            name: explain_timed(explainer, images, self.learned_maps)
            for name, explainer in self.explainers.items()
        }
        untrained = torch.zeros(batch, dtype=torch.bool, device=images.device)
        for result in results.values():
            untrained |= result.explanation.untrained.to(images.device)
        trained = ~untrained
        self.trained_cost.update(int(trained.sum()), 0.0, 0.0, 0.0, _located(masks, trained))
        for name, result in results.items():
            explanation = result.explanation
            scored = Scored(
                images, result.protocol_maps, explanation.maps, explanation.targets, masks
            )
            parts = ((self.scores, trained), (self.untrained_scores, untrained))
            for part, rows in parts if bool(untrained.any()) else parts[:1]:
                chosen = scored if bool(rows.all()) else scored.select(rows)
                if chosen.images.shape[0] == 0:
                    continue
                for spec in self.specs:
                    spec.update(part[name][spec.name], chosen)
            self.costs[name].update(
                batch,
                result.seconds,
                float(explanation.forward_passes),
                float(explanation.backward_passes),
                located,
                int(explanation.untrained.sum()),
            )
        self.examples.keep(
            images,
            labels,
            predictions,
            {name: result.explanation.maps for name, result in results.items()},
            lambda name, rows, targets: self._explain_rows(name, images, rows, targets),
        )

    def _explain_rows(self, name: str, images: Tensor, rows: Tensor, targets: Tensor) -> Tensor:
        """Maps ``(n, H, W)`` of method ``name`` for ``targets`` of the images ``rows``
        (untimed)."""
        # Ordinary tensors: gradient explainers index with the targets inside autograd, which
        # refuses tensors made in inference mode (Lightning's test loop).
        with torch.inference_mode(False):
            chosen, targets = images[rows].clone(), targets.clone()
        with torch.no_grad():
            return self.explainers[name].explain(chosen, targets=targets).maps

    # ------------------------------------------------------------------ results
    def compute(self) -> list[dict[str, Any]]:
        """One row per method: ``method``, ``images``, passes, ``ms_per_image``,
        ``untrained_images`` (see :class:`~lcam.evaluation.cost.MethodCost`) and metrics.

        Columns (for the selected metrics): ``ad@<p>``/``ic@<p>`` (percent),
        ``road_morf@<p>``/``road_lerf@<p>`` and their means ``road_morf_mean``/
        ``road_lerf_mean``, ``deletion_auc``, ``deletion_auc_blur``, ``insertion_auc``,
        ``insertion_auc_black`` (see :func:`~lcam.evaluation.deletion_baselines.auc_columns`),
        ``pointing_game``, ``energy_pointing_game``, ``mask_iou`` (``None`` when no image had a
        mask), the opt-in metrics' columns, and last ``trained_on``: the row's columns its
        method trains on, separated by spaces. Call it on every process under DDP (it
        synchronises).
        """
        return self.results()["rows"]

    def results(self) -> dict[str, Any]:
        """``{"rows", "trained_rows", "curves", "gallery", "misclassified"}``: the keyword
        arguments of :func:`lcam.evaluation.report.write_report` apart from the run directory.

        ``rows`` score all images. ``trained_rows`` score, for every method, only the images
        that every method explained for a class it was trained on (see the module docstring);
        their ``images`` count those, their passes and milliseconds are the method's over all
        images, and they are empty unless some but not all images were excluded. ``curves`` is
        ``{method: {"fractions", "deletion", "insertion", ...}}`` (lists of floats: the mean
        deletion/insertion curves over all images, one per baseline, named as their columns
        without ``_auc``).
        """
        rows: list[dict[str, Any]] = []
        trained_rows: list[dict[str, Any]] = []
        curves: dict[str, dict[str, list[float]]] = {}
        trained = {k: float(v) for k, v in self.trained_cost.compute().items()}
        with warnings.catch_warnings():
            # Metrics never updated (e.g. no masks seen) warn on compute; their value is unused.
            warnings.filterwarnings("ignore", message=r".*compute.*before.*update.*")
            for name, explainer in self.explainers.items():
                cost = {k: float(v) for k, v in self.costs[name].compute().items()}
                row: dict[str, Any] = {
                    "method": name,
                    "images": int(cost["images"]),
                    "forward_passes": cost["forward_passes"],
                    "backward_passes": cost["backward_passes"],
                    "ms_per_image": cost["ms_per_image"],
                    # Images explained for a class the head never trained on (learned methods).
                    "untrained_images": int(cost["untrained"]),
                }
                trained_row = {**row, "images": int(trained["images"]), "untrained_images": 0}
                for spec in self.specs:
                    part = self.scores[name][spec.name]
                    merged = spec.build(self.backbone, explainer, self.options).to(part.device)
                    merged.merge_state(part)
                    merged.merge_state(self.untrained_scores[name][spec.name])
                    row.update(row_values(spec, merged, cost["located"] > 0))
                    trained_row.update(row_values(spec, part, trained["located"] > 0))
                    if spec.curves is not None:
                        curves[name] = spec.curves(merged)
                for entry in (row, trained_row):
                    entry["trained_on"] = _trained_columns(entry, self.trained_on[name])
                rows.append(row)
                trained_rows.append(trained_row)
        images = rows[0]["images"]
        return {
            "rows": rows,
            "trained_rows": trained_rows if 0 < trained["images"] < images else [],
            "curves": curves,
            "gallery": list(self.gallery),
            "misclassified": list(self.misclassified),
            "notes": self.map_notes(),
        }

    def map_notes(self) -> list[str]:
        """One sentence per learned head whose row scores two different maps of it.

        With ``learned_maps="logit"`` its AD/IC score the pre-sigmoid map while every metric
        of the explanation's own maps scores the sigmoid map it shows, so no single map of the
        head has that row's figures (README, *Evaluation*)."""
        if self.learned_maps != "logit":
            return []
        raw = [spec.name for spec in self.specs if spec.maps == "protocol"]
        shown = [spec.name for spec in self.specs if spec.maps != "protocol"]
        if not raw or not shown:
            return []
        return [
            f"{name}: {', '.join(raw)} score its pre-sigmoid map (the papers' protocol) and "
            f"{', '.join(shown)} the {explainer.map_activation} map it shows, so no single map "
            f"of it has this row's figures; comparison option learned_maps: shown scores every "
            f"column on the shown map."
            for name, explainer in self.explainers.items()
            if isinstance(explainer, LearnedExplainer) and explainer.map_activation != "logit"
        ]

    def reset(self) -> None:
        """Clear every state, the gallery and the misclassified examples."""
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()
        self.examples.clear()
