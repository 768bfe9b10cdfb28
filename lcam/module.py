"""LightningModule that trains an attention head on a frozen backbone."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torchmetrics
import torchvision
from PIL import Image
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from lcam.api import build_explainer, describe_mismatch, explainer_metadata
from lcam.backbone import FrozenBackbone
from lcam.distillation import Distance, TeacherMaps, map_distance
from lcam.evaluation import (
    MethodComparison,
    UnitAlignment,
    alignment_rows,
    log_to_wandb,
    model_randomisation,
    write_report,
)
from lcam.explainers import Explainer, get_explainer
from lcam.explainers.base import normalise_maps, upsample_maps
from lcam.localisation import in_mask_energy
from lcam.losses import LCAMLoss, MapSelection
from lcam.viz import overlay, to_uint8

__all__ = ["LCAMModule", "paper_optimizer", "paper_scheduler"]

_EVALUATION_ARGUMENTS = (
    "methods",
    "method_options",
    "comparison",
    "sanity_images",
    "sanity_methods",
    "unit_alignment",
    "report_dir",
)

# The frozen backbone is kept in eval mode on purpose (BatchNorm statistics, no Dropout).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def paper_optimizer(params: Any) -> torch.optim.Optimizer:
    """The L-CAM VGG-16 recipe: SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 1e-2."""
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=5e-4)


def paper_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The L-CAM VGG-16 recipe: learning rate x0.75 per epoch."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.75)


class LCAMModule(LightningModule):
    """Train an L-CAM head; the backbone stays frozen and in eval mode.

    Batches are dicts with ``image`` ``(B, 3, H, W)`` in [0, 1], ``label`` ``(B,)`` and optionally
    ``mask`` ``(B, H, W)`` (object masks; then the in-mask share of map energy is logged).

    Args:
        backbone: torchvision model name or ``package.module.Class`` path.
        weights: torchvision weights name or local state_dict file for the backbone.
        num_classes: classes of a backbone built by name (default: the model's).
        target_layer: module (or list of modules, for TAME) to attach the head to (default:
            detected, see FrozenBackbone).
        input_size: training image side, also stored for inference.
        token_weighting: vision transformers: weight patch tokens by the class token (T-TAME).
        head: ``"lcam_fm"``, ``"lcam_img"`` or ``"tame"`` (multi-layer; with ``target_layer``
            unset it uses VGG pool3/4/5 or ResNet layer2/3/4).
        labels: train on the frozen model's ``"predicted"`` classes (papers) or the
            ``"dataset"`` labels.
        map_selection: maps the regularisers see: ``"batch"`` (official code) or ``"own"``.
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
            ``fractions``, ``deletion_steps``, ``gallery_size``, ...).
        sanity_images: test images kept for the model-randomisation sanity check (0: off).
        sanity_methods: methods the sanity check re-runs on every randomised model (default:
            the compared methods that cost at most one forward pass per image).
        unit_alignment: compute the network-dissection unit alignment on data with masks.
        report_dir: where ``comparison.csv``/``.md`` and ``report.html`` go (default:
            ``<default_root_dir>/comparison``).
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        weights: str | None = None,
        num_classes: int | None = None,
        target_layer: str | list[str] | None = None,
        input_size: int = 224,
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
    ) -> None:
        super().__init__()
        # Evaluation settings stay out of the checkpoint: a test run takes them from its config
        # (LightningCLI would otherwise let a checkpoint's values override the config's).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", *_EVALUATION_ARGUMENTS])
        self.evaluation = {
            "methods": list(methods or []),
            "method_options": dict(method_options or {}),
            "comparison": dict(comparison or {}),
            "sanity_images": sanity_images,
            "sanity_methods": sanity_methods,
            "unit_alignment": unit_alignment,
            "report_dir": report_dir,
        }
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
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.masked_accuracy = torchmetrics.MeanMetric()
        self.in_mask_share = torchmetrics.MeanMetric()
        self.mask_area = torchmetrics.MeanMetric()
        self._overlay_images: Tensor | None = None
        self.comparison: MethodComparison | None = None
        self.units: UnitAlignment | None = None
        self._sanity_batches: list[Tensor] = []

    @property
    def backbone(self) -> FrozenBackbone:
        """The frozen classifier."""
        return self.explainer.backbone

    def setup(self, stage: str) -> None:
        """Take class names from the datamodule when the backbone's weights carry none."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "class_names", None)
        if self.backbone.class_names is None and names and len(names) == self.backbone.num_classes:
            self.backbone.class_names = list(names)

    def _labels(self, batch: dict[str, Tensor], logits: Tensor) -> Tensor:
        return logits.argmax(dim=1) if self.hparams.labels == "predicted" else batch["label"]

    def _step(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        images = batch["image"]
        with torch.no_grad():
            output = self.backbone.run(images)
        labels = self._labels(batch, output.logits)
        class_maps = self.explainer.head.class_maps(output)
        attention = class_maps.sigmoid()
        rows = torch.arange(len(labels), device=labels.device)
        own_maps = attention[rows, labels]
        masked_logits = self.explainer.head.masked_logits(self.backbone, images, output, own_maps)
        return {
            "labels": labels,
            "terms": self.criterion(masked_logits, labels, attention),
            "masked_correct": (masked_logits.argmax(1) == labels).float(),
            "own_maps": own_maps,
            "predicted_maps": self.explainer.select(class_maps.detach(), output.logits.argmax(1)),
        }

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self._step(batch)
        terms = step["terms"]
        if self.teacher is not None:
            own_maps = step["own_maps"]
            teacher_maps = self.teacher.lookup(
                batch["image"], step["labels"], batch.get("index"), tuple(own_maps.shape[-2:])
            )
            terms["distill"] = map_distance(own_maps, teacher_maps, self.hparams.distill_distance)
            terms["loss"] = terms["loss"] + self.hparams.distill_weight * terms["distill"]
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        self.log("train/masked_accuracy", step["masked_correct"].mean(), prog_bar=True)
        self.log("train/map_area", step["own_maps"].mean())
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        step = self._step(batch)
        self.log_dict({f"{stage}/{k}": v for k, v in step["terms"].items()}, sync_dist=True)
        self.masked_accuracy.update(step["masked_correct"])
        self.mask_area.update(step["own_maps"].mean(dim=(1, 2)))
        self.log(f"{stage}/masked_accuracy", self.masked_accuracy, prog_bar=True)
        self.log(f"{stage}/map_area", self.mask_area)
        if "mask" in batch:
            maps = normalise_maps(
                upsample_maps(step["predicted_maps"], tuple(batch["mask"].shape[-2:]))
            )
            self.in_mask_share.update(in_mask_energy(maps, batch["mask"]))
            self.log(f"{stage}/in_mask_energy", self.in_mask_share, prog_bar=True)
        if stage == "val" and batch_idx == 0 and self._overlay_images is None:
            self._overlay_images = batch["image"][: self.hparams.num_overlays].detach()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")
        if self.comparison is None:
            return
        images = batch["image"]
        self.comparison.update(images, batch.get("label"), batch.get("mask"), batch.get("boxes"))
        if self.units is not None and "mask" in batch:
            features = self.backbone.grid(self.backbone.body(images)[0])
            self.units.update(features, batch["mask"], batch["label"])
        kept = sum(len(chunk) for chunk in self._sanity_batches)
        if kept < self.evaluation["sanity_images"]:
            self._sanity_batches.append(images[: self.evaluation["sanity_images"] - kept].detach())

    def _compared_methods(self) -> dict[str, Explainer]:
        options = self.evaluation["method_options"]
        unknown = sorted(set(options) - set(self.evaluation["methods"]))
        if unknown:
            raise ValueError(f"method_options for methods not in methods: {unknown}")
        return {
            name: self.explainer
            if name == "lcam"
            else get_explainer(name, self.backbone, **options.get(name, {}))
            for name in self.evaluation["methods"]
        }

    def on_test_start(self) -> None:
        """Build the method comparison for ``test`` runs that name ``methods``."""
        if not self.evaluation["methods"]:
            return
        methods = self._compared_methods()
        self.comparison = MethodComparison(
            self.backbone, methods, **(self.evaluation["comparison"])
        ).to(self.device)
        if self.evaluation["unit_alignment"]:
            self.units = UnitAlignment(
                self.backbone.feature_channels, self.backbone.num_classes
            ).to(self.device)
        self._sanity_batches = []

    def on_test_epoch_end(self) -> None:
        """Compute the comparison on every rank, then write the report and log the table."""
        if self.comparison is None:
            return
        results = self.comparison.results()
        units = None
        if self.units is not None and self.units.update_called:
            units = alignment_rows(self.units.compute(), None, self.backbone.class_names)
        for row in results["rows"]:
            for column, value in row.items():
                if isinstance(value, int | float) and column != "images":
                    self.log(f"test/{row['method']}/{column}", float(value), rank_zero_only=True)
        if not self.trainer.is_global_zero:
            return
        sanity = None
        if self._sanity_batches:
            methods = self._compared_methods()
            chosen = self.evaluation["sanity_methods"] or [
                name for name, method in methods.items() if method.forward_passes <= 1
            ]
            sanity = model_randomisation(
                self.backbone,
                {name: methods[name] for name in chosen},
                torch.cat(self._sanity_batches),
            )
        directory = Path(
            self.evaluation["report_dir"] or Path(self.trainer.default_root_dir) / "comparison"
        )
        paths = write_report(run_dir=directory, unit_alignment=units, sanity=sanity, **results)
        log_to_wandb(self.loggers, results["rows"])
        print(f"method comparison written to {paths['html']}")

    def on_validation_epoch_end(self) -> None:
        if self._overlay_images is None or self.trainer.sanity_checking:
            return
        images = self._overlay_images
        with torch.no_grad():
            explanation = self.explainer.explain(images)
        pairs = torch.stack([images, overlay(images, explanation.maps)], dim=1).flatten(0, 1)
        grid = to_uint8(torchvision.utils.make_grid(pairs, nrow=2, padding=2))
        if self.trainer.is_global_zero:
            directory = Path(self.trainer.default_root_dir) / "overlays"
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid.numpy()).save(directory / f"epoch_{self.current_epoch:03d}.png")
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/overlays", images=[grid.numpy()], step=self.global_step)

    def on_fit_start(self) -> None:
        """Build or load the teacher cache over the training set, in dataset order."""
        if self.teacher is None or self.teacher.cache_path is None:
            return
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "train_augment", False):
            raise ValueError(
                "teacher_cache needs the same training images every epoch: set "
                "data.init_args.train_augment=false"
            )
        dataset = datamodule.train_dataloader().dataset
        labels_for = lambda batch: self._labels(batch, self.backbone(batch["image"]))  # noqa: E731
        settings = (dataset, labels_for, self.hparams.labels, self.backbone.feature_size)
        if self.trainer.is_global_zero:
            self.teacher.prepare(*settings)
        self.trainer.strategy.barrier()
        if not self.trainer.is_global_zero:
            self.teacher.prepare(*settings, is_builder=False)

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        keywords = getattr(self.scheduler_factory, "keywords", {})
        if keywords.get("total_steps", 0) is None and keywords.get("epochs") is None:
            # One-cycle schedules need the run's length, which only the trainer knows.
            total = int(self.trainer.estimated_stepping_batches)
            return self.scheduler_factory(optimizer, total_steps=total)
        return self.scheduler_factory(optimizer)

    def configure_optimizers(self) -> Any:
        head = self.explainer.head
        weights = [p for name, p in head.named_parameters() if not name.endswith("bias")]
        biases = [p for name, p in head.named_parameters() if name.endswith("bias")]
        optimizer = self.optimizer_factory([{"params": weights}, {"params": biases}])
        optimizer.param_groups[1]["lr"] *= self.hparams.bias_lr_multiplier
        if not self.hparams.bias_weight_decay:
            optimizer.param_groups[1]["weight_decay"] = 0.0
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self._build_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }

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
