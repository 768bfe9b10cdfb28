"""lcam's one-pass learned explainers: ``explain()`` and ``class_maps()`` of an untrained head."""

from __future__ import annotations

from benchmarks.cases.base import Case, Context, explain_case, no_grad

METHODS = [
    "lcam_fm",
    "lcam_img",
    "tame",
    "tame_lite",
    "lcam_fm.class_maps",
    "lcam_img.class_maps",
    "tame.class_maps",
    "tame_lite.class_maps",
]


def build(ctx: Context, method: str) -> Case:
    """``HEAD``: the maps of the predicted classes; ``HEAD.class_maps``: logits plus all K maps."""
    import lcam

    head, _, part = method.partition(".")
    explainer = lcam.build_explainer(ctx.backbone, head=head).eval()
    images = ctx.images
    parameters = sum(p.numel() for p in explainer.head.parameters())
    layers = "/".join(ctx.backbone.target_layers)
    notes = [f"untrained head (same cost as a trained one): {parameters:,} parameters on {layers}"]
    if part == "class_maps":
        return Case(
            no_grad(lambda: explainer.class_maps(images)),
            images,
            ctx.backbone.model,
            settings=f"{len(images)} img/call",
            notes=[*notes, f"logits + all {ctx.backbone.num_classes} class maps"],
        )
    return explain_case(explainer, images, ctx, {}, {}, (), notes)
