r"""Teacher distillation: train a one-pass head to imitate a classic explainer.

The L-CAM loss gains a term ``lambda * distance(A_y, T_y)`` between the head's attention map of
the training label ``A_y`` ``(B, h, w)`` and the teacher's map ``T_y`` (any registered explainer:
Grad-CAM, LIME, ...), min-max normalised to [0, 1] and average-pooled to the head's resolution.
Teacher maps are computed on the fly, or read from a cache built once per dataset (the sensible
choice for slow teachers such as LIME or RISE).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning import Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lcam._io import atomic_write, load_data
from lcam.backbone import FrozenBackbone
from lcam.explainers import Explainer, get_explainer

__all__ = ["Distance", "TeacherMaps", "map_distance"]

Distance = Literal["mse", "l1"]
CACHE_FORMAT = 1


def map_distance(student: Tensor, teacher: Tensor, distance: Distance = "mse") -> Tensor:
    """Mean ``(s - t)^2`` (``"mse"``) or ``|s - t|`` (``"l1"``) of ``(B, h, w)`` maps."""
    if distance == "mse":
        return F.mse_loss(student, teacher)
    if distance == "l1":
        return F.l1_loss(student, teacher)
    raise ValueError(f"distance must be 'mse' or 'l1', got {distance!r}")


class TeacherMaps:
    """Teacher maps at the head's resolution, on the fly or from a per-dataset cache.

    Args:
        name: registry name of the teacher explainer (``"gradcam"``, ``"lime"``, ...).
        backbone: the frozen classifier the head is trained on.
        options: keyword options of the teacher.
        cache: file holding the maps of every training image; built on first use.
    """

    def __init__(
        self,
        name: str,
        backbone: FrozenBackbone,
        options: dict[str, Any] | None = None,
        cache: str | Path | None = None,
    ) -> None:
        self.name, self.options = name, dict(options or {})
        self.explainer: Explainer = get_explainer(name, backbone, **self.options)
        self.cache_path = Path(cache) if cache is not None else None
        self.cached: Tensor | None = None

    def compute(self, images: Tensor, labels: Tensor, size: tuple[int, int]) -> Tensor:
        """Teacher maps ``(B, *size)`` in [0, 1] for ``labels`` ``(B,)`` of ``images``."""
        maps = self.explainer.explain(images, labels).maps
        return F.adaptive_avg_pool2d(maps[:, None], size)[:, 0]

    def lookup(
        self, images: Tensor, labels: Tensor, indices: Tensor | None, size: tuple[int, int]
    ) -> Tensor:
        """Maps for a batch: from the cache by dataset ``indices``, else computed now."""
        if self.cached is None:
            return self.compute(images, labels, size)
        if indices is None:
            raise ValueError("a teacher cache needs batches with an 'index' entry per image")
        return self.cached[indices.cpu()].to(images.device, images.dtype)

    def _metadata(self, dataset: Dataset, labels_mode: str, size: tuple[int, int]) -> dict:
        return {
            "format": CACHE_FORMAT,
            "teacher": self.name,
            "options": {key: repr(value) for key, value in sorted(self.options.items())},
            "dataset_size": len(dataset),  # type: ignore[arg-type]
            "labels": labels_mode,
            "size": list(size),
            "backbone": dict(self.explainer.backbone.spec),
        }

    def prepare(
        self,
        dataset: Dataset,
        labels_for: Callable[[dict[str, Tensor]], Tensor],
        labels_mode: str,
        size: tuple[int, int],
        batch_size: int = 32,
        is_builder: bool = True,
    ) -> None:
        """Load the cache, building it over ``dataset`` (in order) if the file does not exist.

        Raises:
            ValueError: the file was built for another teacher, dataset, labels or backbone.
        """
        if self.cache_path is None:
            return
        expected = self._metadata(dataset, labels_mode, size)
        if not self.cache_path.exists() and is_builder:
            self._build(dataset, labels_for, size, batch_size, expected)
        if not self.cache_path.exists():
            raise FileNotFoundError(f"teacher cache {str(self.cache_path)!r} was not built")
        stored = load_data(self.cache_path, what="a teacher cache")
        if stored.get("meta") != expected:
            mismatched = sorted(
                key for key in expected if stored.get("meta", {}).get(key) != expected[key]
            )
            raise ValueError(
                f"teacher cache {str(self.cache_path)!r} was built for other settings "
                f"({', '.join(mismatched)} differ); delete it or choose another teacher_cache path"
            )
        self.cached = stored["maps"].float()

    def prepare_for_fit(
        self,
        trainer: Trainer,
        labels_for: Callable[[dict[str, Tensor]], Tensor],
        labels_mode: str,
        size: tuple[int, int],
    ) -> None:
        """At the start of a fit: load the cache, the first process building it over the
        datamodule's training set (in dataset order) while the others wait for it."""
        if self.cache_path is None:
            return
        datamodule = trainer.datamodule
        if getattr(datamodule, "train_augment", False):
            raise ValueError(
                "teacher_cache needs the same training images every epoch: set "
                "data.init_args.train_augment=false"
            )
        dataset = datamodule.train_dataloader().dataset
        if trainer.is_global_zero:
            self.prepare(dataset, labels_for, labels_mode, size)
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            self.prepare(dataset, labels_for, labels_mode, size, is_builder=False)

    def _build(
        self,
        dataset: Dataset,
        labels_for: Callable[[dict[str, Tensor]], Tensor],
        size: tuple[int, int],
        batch_size: int,
        meta: dict,
    ) -> None:
        device = self.explainer.device
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        chunks: list[Tensor] = []
        for batch in tqdm(loader, desc=f"teacher cache ({self.name})", unit="batch"):
            images = batch["image"].to(device)
            batch = {**batch, "image": images}
            chunks.append(self.compute(images, labels_for(batch), size).half().cpu())
        stored = {"meta": meta, "maps": torch.cat(chunks)}
        atomic_write(self.cache_path, lambda temporary: torch.save(stored, temporary))
