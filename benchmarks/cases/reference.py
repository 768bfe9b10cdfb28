"""The reference of every ratio: a plain forward of the network, split by torch.fx or not."""

from __future__ import annotations

from benchmarks.cases.base import Case, Context, no_grad

METHODS = ["forward", "forward_unsplit"]


def build(ctx: Context, method: str) -> Case:
    """``forward``: ``FrozenBackbone(images)``; ``forward_unsplit``: the wrapped ``nn.Module``
    on normalised images (checks that the fx split into body and tail costs nothing)."""
    backbone, images = ctx.backbone, ctx.images
    if method == "forward":
        call = no_grad(lambda: backbone(images))
        note = "FrozenBackbone forward under torch.no_grad (the reference)"
    else:
        call = no_grad(lambda: backbone.model(backbone.normalise(images)))
        note = "the wrapped nn.Module itself, not split by torch.fx"
    return Case(call, images, backbone.model, settings=f"{len(images)} img/call", notes=[note])
