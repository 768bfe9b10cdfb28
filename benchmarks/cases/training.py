"""One training step of the L-CAM head (``LCAMModule``, default loss and SGD optimizer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.cases.base import Case, Context
from benchmarks.models import ModelSpec, spec_weights

if TYPE_CHECKING:
    from lcam.backbone import FrozenBackbone

METHODS = ["train.lcam_fm", "train.lcam_img", "train.tame"]


def setup(spec: ModelSpec, method: str) -> tuple[FrozenBackbone, Any]:
    """The ``LCAMModule`` of ``method``'s head and its own backbone (the reference forward is
    timed on it)."""
    import torch

    from lcam.training import LCAMModule

    torch.manual_seed(0)
    module = LCAMModule(
        backbone=spec.model,
        weights=spec_weights(spec),
        num_classes=spec.num_classes,
        input_size=spec.input_size,
        head=method.partition(".")[2],
    )
    return module.backbone, module


def build(ctx: Context, method: str) -> Case:
    """``module._step(batch)``, ``loss.backward()``, ``optimizer.step()`` on ``ctx.images``."""
    module = ctx.owner
    batch = {"image": ctx.images, "label": ctx.labels}
    module.train()
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = module._step(batch)["terms"]["loss"]
        loss.backward()
        optimizer.step()

    head = method.partition(".")[2]
    hp = module.hparams
    return Case(
        step,
        ctx.images,
        module.backbone.model,
        options={"head": head, "map_selection": hp.map_selection, "labels": hp.labels},
        settings=f"{len(ctx.images)} img/step, default loss and SGD optimizer",
        notes=["LCAMModule._step + backward + optimizer step; ratio = step / forward of batch"],
    )
