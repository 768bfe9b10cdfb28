"""LightningModule that trains an attention head on a frozen backbone."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torchmetrics
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lcam.api import (
    CLASS_EXAMPLES,
    STATE_PREFIX,
    build_explainer,
    describe_mismatch,
    explainer_metadata,
)
from lcam.backbone import FrozenBackbone
from lcam.evaluation import LearnedMaps, check_learned_maps
from lcam.maps import in_mask_energy, normalise_maps, upsample_maps
from lcam.training.distillation import Distance, TeacherMaps, map_distance
from lcam.training.evaluation_run import EVALUATION_ARGUMENTS, TestTimeEvaluation
from lcam.training.global_batch import global_labels
from lcam.training.losses import LCAMLoss, MapSelection
from lcam.training.overlays import log_overlay_grid, overlay_grid, overlay_path
from lcam.training.recipe import configure_head_optimizer, paper_optimizer, paper_scheduler
from lcam.training.trained_on import map_terms, objective_columns
from lcam.training.validation import ValidationFaithfulness

__all__ = ["LCAMModule", "paper_optimizer", "paper_scheduler"]


# Lightning warns when modules are in eval mode as training starts; the frozen backbone is in eval
# mode on purpose (BatchNorm statistics, no Dropout). Ignored from on_fit_start to on_train_start.
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode"


class LCAMModule(LightningModule):
    """Train an L-CAM head; the backbone stays frozen and in eval mode.

    Batches are dicts with ``image`` ``(B, 3, H, W)`` in [0, 1], ``label`` ``(B,)`` and optionally
    ``mask`` ``(B, H, W)`` (object masks; then the in-mask share of map energy is logged) and
    ``index`` ``(B,)`` (dataset indices: the teacher cache and the faithfulness subset use them).

    Args:
        backbone: torchvision model name or ``package.module.Class`` path.
        weights: torchvision weights name or local state_dict file for the backbone.
        num_classes: classes of a backbone built by name (default: the model's).
        target_layer: module (or list of modules, for TAME) to attach the head to (default:
            detected, see FrozenBackbone).
        input_size: training image side (or ``[H, W]``), also stored for inference (default:
            the model's own, see FrozenBackbone).
        token_weighting: vision transformers: weight patch tokens by the class token (T-TAME).
        head: ``"lcam_fm"``, ``"lcam_img"``, ``"tame"`` (multi-layer; with ``target_layer``
            unset it uses VGG pool3/4/5 or ResNet layer2/3/4) or ``"tame_shared"`` (TAME whose
            class maps share one learned map, see :class:`~lcam.heads.SharedTAMEHead`).
        labels: train on the frozen model's ``"predicted"`` classes (papers) or the
            ``"dataset"`` labels.
        map_selection: maps the regularisers see: ``"batch"`` (official code: every image's maps
            of every label of the global batch, gathered from all processes under DDP, so the
            objective does not depend on the number of processes) or ``"own"``.
        ce_weight, area_weight, tv_weight, area_exponent: loss weights (1.5, 2, 0.01, 0.3).
        optimizer: optimizer factory (default: SGD Nesterov, lr 1e-2, momentum 0.9, wd 5e-4).
        lr_scheduler: scheduler factory (default: x0.75 per epoch); ``None`` for a constant lr.
        scheduler_interval: step the scheduler every ``"epoch"`` or ``"step"``.
        bias_lr_multiplier: the bias's learning rate relative to the weights' (papers: 2).
        bias_weight_decay: apply weight decay to the bias too (L-CAM: yes, TAME: no).
        num_overlays: validation images shown in the logged overlay grid.
        teacher: registry name of an explainer to imitate (``"gradcam"``, ``"lime"``, ...):
            adds ``distill_weight * distance(head map, teacher map)`` to the training loss.
        teacher_options: keyword options of the teacher explainer.
        distill_weight: ``lambda`` of the distillation term.
        distill_distance: ``"mse"`` or ``"l1"``.
        teacher_cache: file of teacher maps for every training image, built on the first fit if
            missing (needs deterministic training images: no random augmentation).
        methods: explainers to compare in ``test`` runs: ``"lcam"`` (this head) and any
            registered name (``gradcam``, ``rise``, ``lime``, ...). Empty: no comparison.
        method_options: ``{name: {option: value}}`` for the compared explainers.
        comparison: keyword options of :class:`lcam.evaluation.MethodComparison` (``metrics``,
            ``gallery_size``, ``learned_maps`` and every metric setting: ``fractions``,
            ``deletion_steps``, ``deletion_baselines``, ``faithfulness_runs``, ...); an
            unknown key fails here, naming the valid ones.
        sanity_images: test images kept for the model-randomisation sanity check (0: off).
        sanity_methods: methods the sanity check re-runs on every randomised model (default:
            the compared methods that cost at most one forward pass per image).
        unit_alignment: compute the network-dissection unit alignment on data with masks.
        report_dir: where ``comparison.csv``/``.md`` and ``report.html`` go (default:
            ``<default_root_dir>/comparison``).
        faithfulness_subset: validation images (a fixed class-stratified draw, named in the log)
            scored each epoch as the test-time comparison scores the head, for checkpoint
            selection (0: off; see :mod:`lcam.training.validation`).
        faithfulness_metrics: the scores: ``"adic"`` (AD/IC at 100/50/15 %, ``val/ad_100`` ...
            ``val/ic_15``; the kept-fraction term trains on it) and/or ``"deletion_insertion"``
            (``val/deletion_auc``: pixels removed to black, ``val/insertion_auc``: added to the
            blurred image, as the comparison's columns of the same names; no head trains on it).
            Default ``["adic"]``.
        faithfulness_options: keyword arguments of ``ValidationFaithfulness`` (``batch_size``,
            ``deletion_steps``: 20 by default, 100 as the test-time comparison).
        faithfulness_maps: the maps those scores use, ``"logit"`` (the papers' pre-sigmoid map,
            as the comparison's default) or ``"shown"`` (the sigmoid attention the head shows,
            as ``comparison: {learned_maps: shown}``).
        masked_response_weight: weight of the amortized masked-response term (0: off): the
            head's pre-sigmoid map of each image's label is fitted to the frozen model's
            responses to random masks (see :class:`~lcam.training.masked_response.
            MaskedResponseLoss`); logged as ``train/masked_response``.
        masked_response_options: keyword arguments of ``MaskedResponseLoss``
            (``masks_per_image``, ``masks``, ``grid``, ``keep_prob``, ``sampling``, ``score``,
            ``fit``, ``chunk_size``).
        kept_fraction_weight: weight of the kept-fraction term (0: off): the frozen model must
            still predict the label from the image kept by the top 100/50/15 % of the head's
            pre-sigmoid map, the AD/IC protocol's masks with a soft edge (see
            :class:`~lcam.training.kept_fraction.KeptFractionLoss`); logged as
            ``train/kept_fraction``. Costs one forward and backward pass per fraction and image
            (one per image with ``sampling: one``).
        kept_fraction_options: keyword arguments of ``KeptFractionLoss`` (``fractions``,
            ``temperature``, ``sampling``: ``"all"`` or ``"one"``, one fraction drawn per image
            and step, the same objective in expectation with a third of the term's passes for three
            fractions; the fast recipe, ``configs/quickstart_fast.yaml``).
        removed_fraction_weight, removed_fraction_options: the removed-fraction term (0: off;
            :class:`~lcam.training.removed_fraction.RemovedFractionLoss` and its options): the
            label must fall once the map's top 5/10/20/30 % are removed; one forward and
            backward pass per fraction and image; logged as ``train/removed_fraction``.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        weights: str | None = None,
        num_classes: int | None = None,
        target_layer: str | list[str] | None = None,
        input_size: int | None = None,
        token_weighting: bool = False,
        head: str = "lcam_fm",
        labels: Literal["predicted", "dataset"] = "predicted",
        map_selection: MapSelection = "batch",
        ce_weight: float = 1.5,
        area_weight: float = 2.0,
        tv_weight: float = 0.01,
        area_exponent: float = 0.3,
        optimizer: OptimizerCallable = paper_optimizer,
        lr_scheduler: LRSchedulerCallable | None = paper_scheduler,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        bias_lr_multiplier: float = 2.0,
        bias_weight_decay: bool = True,
        num_overlays: int = 8,
        teacher: str | None = None,
        teacher_options: dict[str, Any] | None = None,
        distill_weight: float = 1.0,
        distill_distance: Distance = "mse",
        teacher_cache: str | None = None,
        methods: list[str] | None = None,
        method_options: dict[str, dict[str, Any]] | None = None,
        comparison: dict[str, Any] | None = None,
        sanity_images: int = 16,
        sanity_methods: list[str] | None = None,
        unit_alignment: bool = True,
        report_dir: str | None = None,
        faithfulness_subset: int = 0,
        faithfulness_maps: LearnedMaps = "logit",
        faithfulness_metrics: list[str] | None = None,
        faithfulness_options: dict[str, Any] | None = None,
        masked_response_weight: float = 0.0,
        masked_response_options: dict[str, Any] | None = None,
        kept_fraction_weight: float = 0.0,
        kept_fraction_options: dict[str, Any] | None = None,
        removed_fraction_weight: float = 0.0,
        removed_fraction_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Evaluation settings stay out of the checkpoint: a test run takes them from its config
        # (LightningCLI would otherwise let a checkpoint's values override the config's).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", *EVALUATION_ARGUMENTS])
        self.evaluation = TestTimeEvaluation(
            methods=methods, method_options=method_options, comparison=comparison,
            sanity_images=sanity_images, sanity_methods=sanity_methods,
            unit_alignment=unit_alignment, report_dir=report_dir,
        )  # fmt: skip
        frozen = FrozenBackbone(
            backbone,
            num_classes=num_classes,
            weights=weights,
            target_layer=target_layer,
            input_size=input_size,
            token_weighting=token_weighting,
        )
        # The attribute name is the checkpoint's state_dict prefix that load_explainer expects.
        self.explainer = build_explainer(frozen, head)
        self.criterion = LCAMLoss(
            ce_weight, area_weight, tv_weight, area_exponent=area_exponent, selection=map_selection
        )
        self.teacher = (
            TeacherMaps(teacher, frozen, teacher_options, teacher_cache) if teacher else None
        )
        # Terms scored on the head's pre-sigmoid maps of the labels through the frozen network,
        # each called as term(maps, images, labels, backbone) and logged as train/<name>.
        self.map_terms = nn.ModuleDict(map_terms(self.hparams))
        self.trained_terms: list[Any] | None = None  # a loaded checkpoint's (on_load_checkpoint)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        # Logged as <stage>/masked_accuracy, <stage>/map_area and <stage>/in_mask_energy.
        self.masked_accuracy = torchmetrics.MeanMetric()
        self.map_area = torchmetrics.MeanMetric()
        self.in_mask_energy = torchmetrics.MeanMetric()
        check_learned_maps(faithfulness_maps)
        self.faithfulness = (
            ValidationFaithfulness(
                frozen,
                faithfulness_subset,
                faithfulness_metrics or ["adic"],
                **(faithfulness_options or {}),
            )
            if faithfulness_subset
            else None
        )
        self._overlay_images: Tensor | None = None
        self._warning_scope: contextlib.ExitStack | None = None

    @property
    def backbone(self) -> FrozenBackbone:
        """The frozen classifier."""
        return self.explainer.backbone

    @property
    def trained_on(self) -> frozenset[str]:
        """The comparison columns this head's objective trains on, from its loss settings
        (:mod:`lcam.training.trained_on`); the comparison marks them in the ``lcam`` row."""
        terms = self.map_terms.values() if self.trained_terms is None else self.trained_terms
        return objective_columns(self.explainer.head, self.criterion, terms)

    def setup(self, stage: str) -> None:
        """Take class names from the datamodule when the backbone's weights carry none."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "class_names", None)
        if self.backbone.class_names is None and names and len(names) == self.backbone.num_classes:
            self.backbone.class_names = list(names)

    def _labels(self, batch: dict[str, Tensor], logits: Tensor) -> Tensor:
        return logits.argmax(dim=1) if self.hparams.labels == "predicted" else batch["label"]

    def _step(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """One pass: the loss terms, and the maps the hooks log (shapes ``(B, h, w)``)."""
        images = batch["image"]
        with torch.no_grad():
            output = self.backbone.run(images)
        labels = self._labels(batch, output.logits)
        class_maps = self.explainer.head.class_maps(output)
        attention = class_maps.sigmoid()
        rows = torch.arange(len(labels), device=labels.device)
        own_maps = attention[rows, labels]
        masked_logits = self.explainer.head.masked_logits(self.backbone, images, output, own_maps)
        # "batch" selection regularises the maps of the global batch's labels (a collective).
        map_labels = global_labels(self, labels) if self.criterion.selection == "batch" else None
        predicted = output.logits.argmax(1)
        return {
            "labels": labels,
            "terms": self.criterion(masked_logits, labels, attention, map_labels),
            "masked_correct": (masked_logits.argmax(1) == labels).float(),
            "own_maps": own_maps,
            "predicted_maps": self.explainer.select(class_maps.detach(), predicted),
            "predicted_logit_maps": class_maps.detach()[rows, predicted],
            "own_logit_maps": class_maps[rows, labels],
        }

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self._step(batch)
        terms = step["terms"]
        # Every process counts the global batch's labels, so the saved counts agree across ranks.
        self.explainer.count_training_labels(global_labels(self, step["labels"]))
        if self.teacher is not None:
            own_maps = step["own_maps"]
            teacher_maps = self.teacher.lookup(
                batch["image"], step["labels"], batch.get("index"), tuple(own_maps.shape[-2:])
            )
            terms["distill"] = map_distance(own_maps, teacher_maps, self.hparams.distill_distance)
            terms["loss"] = terms["loss"] + self.hparams.distill_weight * terms["distill"]
        for name, term in self.map_terms.items():
            terms[name] = term(
                step["own_logit_maps"], batch["image"], step["labels"], self.backbone
            )
            terms["loss"] = terms["loss"] + self.hparams[f"{name}_weight"] * terms[name]
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        self.log("train/masked_accuracy", step["masked_correct"].mean(), prog_bar=True)
        self.log("train/map_area", step["own_maps"].mean())
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        step = self._step(batch)
        self.log_dict({f"{stage}/{k}": v for k, v in step["terms"].items()}, sync_dist=True)
        self.masked_accuracy.update(step["masked_correct"])
        self.map_area.update(step["own_maps"].mean(dim=(1, 2)))
        self.log(f"{stage}/masked_accuracy", self.masked_accuracy, prog_bar=True)
        self.log(f"{stage}/map_area", self.map_area)
        if "mask" in batch:
            size = tuple(batch["mask"].shape[-2:])
            maps = normalise_maps(upsample_maps(step["predicted_maps"], size))
            self.in_mask_energy.update(in_mask_energy(maps, batch["mask"]))
            self.log(f"{stage}/in_mask_energy", self.in_mask_energy, prog_bar=True)
        if stage == "val" and self.faithfulness is not None:
            shown = self.hparams.faithfulness_maps == "shown"
            maps = step["predicted_maps"] if shown else step["predicted_logit_maps"]
            self.faithfulness.update(batch["image"], maps, batch.get("index"))
        if stage == "val" and batch_idx == 0 and self._overlay_images is None:
            self._overlay_images = batch["image"][: self.hparams.num_overlays].detach()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")
        self.evaluation.update(batch, self.backbone)

    def on_test_start(self) -> None:
        """Build the method comparison for ``test`` runs that name ``methods``."""
        self.evaluation.start(self.explainer, self.device, self.trained_on)

    def on_test_epoch_end(self) -> None:
        """Compute the comparison on every rank, then write the report and log the table."""
        self.evaluation.finish(
            self.explainer,
            self.trainer,
            lambda name, value: self.log(name, value, rank_zero_only=True),
        )

    def on_validation_start(self) -> None:
        """Draw the faithfulness subset from the validation set (logged when it changes)."""
        if self.faithfulness is not None:
            names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
            chosen = self.faithfulness.choose(self.trainer.val_dataloaders, names)
            if chosen is not None:
                rank_zero_info(chosen)

    def on_validation_epoch_end(self) -> None:
        """Log the faithfulness of the subset; write and log the overlay grid."""
        if self.faithfulness is not None:
            values = self.faithfulness.compute()  # a collective: every process takes part
            if not self.trainer.sanity_checking:
                self.log_dict({f"val/{name}": value for name, value in values.items()})
        if self._overlay_images is None or self.trainer.sanity_checking:
            return
        grid = overlay_grid(self.explainer, self._overlay_images)
        path = None
        if self.trainer.is_global_zero:
            directory = Path(self.trainer.default_root_dir) / "overlays"
            path = overlay_path(
                directory, self.current_epoch, fitting=self.trainer.state.fn == TrainerFn.FITTING
            )
        log_overlay_grid(grid, path, self.loggers, self.global_step)

    def on_fit_start(self) -> None:
        """Scope the eval-mode warning; build or load the teacher cache over the training set."""
        self._close_warning_scope()
        self._warning_scope = contextlib.ExitStack()
        self._warning_scope.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)
        if self.teacher is not None:
            labels_for = lambda batch: self._labels(batch, self.backbone(batch["image"]))  # noqa: E731
            self.teacher.prepare_for_fit(
                self.trainer, labels_for, self.hparams.labels, self.backbone.feature_size
            )

    def on_train_start(self) -> None:
        """Lightning's eval-mode check has run: restore the warning filters."""
        self._close_warning_scope()

    def teardown(self, stage: str) -> None:
        """Restore the warning filters if training never started (e.g. ``max_steps=0``)."""
        self._close_warning_scope()

    def _close_warning_scope(self) -> None:
        if self._warning_scope is not None:
            self._warning_scope.close()
            self._warning_scope = None

    def configure_optimizers(self) -> Any:
        return configure_head_optimizer(
            self.explainer.head,
            self.optimizer_factory,
            self.scheduler_factory,
            bias_lr_multiplier=self.hparams.bias_lr_multiplier,
            bias_weight_decay=self.hparams.bias_weight_decay,
            scheduler_interval=self.hparams.scheduler_interval,
            total_steps=lambda: int(self.trainer.estimated_stepping_batches),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lcam"] = explainer_metadata(self.explainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, before any weight is loaded, a checkpoint made for another configuration."""
        saved = checkpoint.get("lcam")
        if saved is None:
            raise ValueError("the checkpoint has no lcam metadata: it was not written by lcam")
        mismatches = describe_mismatch(saved, explainer_metadata(self.explainer))
        if mismatches:
            raise ValueError(
                "the checkpoint was trained with another configuration: " + "; ".join(mismatches)
            )
        self.trained_terms = list(map_terms(checkpoint.get("hyper_parameters") or {}).values())
        # Checkpoints written before the training counts existed resume with the counts unknown.
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            state.setdefault(STATE_PREFIX + CLASS_EXAMPLES, self.explainer.class_examples.clone())
