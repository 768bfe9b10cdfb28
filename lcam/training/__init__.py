"""Training a one-pass head on a frozen classifier (layer 6: above evaluation, beside inference).

- :mod:`~lcam.training.module`: :class:`LCAMModule`, the LightningModule ``train.py`` drives.
- :mod:`~lcam.training.losses`: the L-CAM loss (cross-entropy on masked logits, area, TV).
- :mod:`~lcam.training.global_batch`: the labels of the global batch under DDP.
- :mod:`~lcam.training.distillation`: imitating a classic explainer (teacher maps and cache).
- :mod:`~lcam.training.recipe`: optimizer, schedule and parameter groups (the papers' recipe).
- :mod:`~lcam.training.validation`: AD/IC on a fixed validation subset, for model selection.
- :mod:`~lcam.training.overlays`: the validation overlay grid.
- :mod:`~lcam.training.evaluation_run`: the method comparison, sanity check and report of ``test``.
- :mod:`~lcam.training.masked_response`: the amortized masked-response objective.
- :mod:`~lcam.training.kept_fraction`: the class must survive the map's top 100/50/15 % alone.
- :mod:`~lcam.training.removed_fraction`: the class must fall once the map's top pixels are removed.
"""

from lcam.training.distillation import Distance, TeacherMaps, map_distance
from lcam.training.kept_fraction import KeptFractionLoss, relaxed_keep_masks
from lcam.training.losses import (
    LCAMLoss,
    MapSelection,
    area_loss,
    select_maps,
    total_variation_loss,
)
from lcam.training.module import LCAMModule
from lcam.training.recipe import paper_optimizer, paper_scheduler
from lcam.training.removed_fraction import RemovedFractionLoss

__all__ = [
    "RemovedFractionLoss",
    "Distance",
    "KeptFractionLoss",
    "LCAMLoss",
    "LCAMModule",
    "MapSelection",
    "TeacherMaps",
    "area_loss",
    "map_distance",
    "paper_optimizer",
    "paper_scheduler",
    "relaxed_keep_masks",
    "select_maps",
    "total_variation_loss",
]
