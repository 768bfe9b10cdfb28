"""Every registered classic explainer of ``lcam.explainers``, with its default options."""

from __future__ import annotations

from typing import Any

from benchmarks.cases.base import Case, Context, NotApplicableError, explain_case, options

METHODS = [
    "cam",
    "gradcam",
    "gradcam.full_backward",
    "gradcampp",
    "xgradcam",
    "gradient",
    "guided_backprop",
    "deconvnet",
    "guided_gradcam",
    "ablationcam",
    "occlusion",
    "lime",
    "kernel_shap",
    "rise",
    "scorecam",
]
# Hundreds of forward passes per image: one image per call, a cheap warm-up.
SLOW = {"scorecam", "ablationcam", "rise", "lime", "kernel_shap", "occlusion"}
# Skipped by --quick on the large models: no setting reduces their C + 1 passes per image.
QUICK_SKIPPED = {"scorecam"}
# Reduced settings of --quick on the large models (the cost is linear in the passes they set).
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "rise": {"num_masks": 500},
    "lime": {"num_samples": 200},
    "kernel_shap": {"num_samples": 200},
    "occlusion": {"stride": 16},
}
# Options shown in the table's settings column (the JSON has every option).
KEY_OPTIONS: dict[str, tuple[str, ...]] = {
    "rise": ("num_masks", "s", "p", "batch_size"),
    "lime": ("num_samples", "segmentation", "batch_size"),
    "kernel_shap": ("num_samples", "segmentation", "batch_size"),
    "occlusion": ("patch_size", "stride", "batch_size"),
    "scorecam": ("batch_size",),
    "ablationcam": ("batch_size",),
}


def planned_passes(explainer: Any, size: tuple[int, int]) -> float:
    """Forward passes per image an explainer will make on images of ``size`` ``(H, W)``."""
    from lcam.explainers.perturbation import Occlusion

    if isinstance(explainer, Occlusion):
        rows, cols = explainer.windows(size)
        return float(len(rows) * len(cols) + 1)
    return float(explainer.forward_passes)


def build(ctx: Context, method: str) -> Case:
    """``lcam.get_explainer(name, backbone).explain(images)``; ``gradcam.full_backward``: the
    same maps with the backward through the whole network. A ``--quick`` reduction is scaled
    back to the default in the note."""
    from lcam.explainers import EXPLAINERS, get_explainer
    from lcam.explainers.surrogate import SuperpixelSurrogate

    name = method.partition(".")[0]
    cls = EXPLAINERS[name]
    slow = method in SLOW
    overrides = dict(QUICK_OPTIONS.get(name, {})) if ctx.quick and ctx.spec.large else {}
    images = ctx.slow_images if slow else ctx.images
    try:
        explainer = get_explainer(name, ctx.backbone, **overrides)
    except ValueError as error:
        raise NotApplicableError(str(error).split(". ")[0]) from error
    defaults = options(cls, {})
    used = options(cls, overrides)
    case = explain_case(explainer, images, ctx, used, defaults, KEY_OPTIONS.get(name, ()), [])
    case.slow = slow
    if method == "gradcam.full_backward":

        def full() -> None:
            explainer.compute_maps_full_backward(images, None)

        case.call, case.result = full, None
        case.notes.append("backward through the whole network, as most libraries do")
    if overrides:
        size = (images.shape[-2], images.shape[-1])
        default_passes = planned_passes(get_explainer(name, ctx.backbone), size)
        used_passes = planned_passes(explainer, size)
        fixed = None
        if isinstance(explainer, SuperpixelSurrogate):

            def fixed() -> None:
                explainer.segment(images)

        what = ", ".join(f"{k}={defaults[k]}" for k in overrides)
        case.scale = (what, default_passes / used_passes, fixed)
    return case
