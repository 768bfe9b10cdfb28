"""The same methods in peer libraries: grad-cam, captum and lime (skipped when not installed)."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from benchmarks.cases.base import Case, Context

if TYPE_CHECKING:
    from torch import Tensor

METHODS = [
    "grad-cam.GradCAM",
    "grad-cam.GradCAMPlusPlus",
    "grad-cam.ScoreCAM",
    "captum.LayerGradCam",
    "captum.Lime",
    "lime.LimeImageExplainer",
]
# Hundreds of forward passes per image: one image per call, a cheap warm-up.
SLOW = {"grad-cam.ScoreCAM", "captum.Lime", "lime.LimeImageExplainer"}
# Skipped by --quick on the large models: no setting reduces their C + 1 passes per image.
QUICK_SKIPPED = {"grad-cam.ScoreCAM"}
PEER_SAMPLES, PEER_QUICK_SAMPLES = 1000, 200  # LIME samples of the peers (lcam's default: 1000)
PEER_PACKAGES = {"grad-cam": "pytorch_grad_cam", "captum": "captum", "lime": "lime"}
LIME_BATCH = 64  # images per forward of both LIMEs


def unavailable(method: str) -> str | None:
    """Why ``method`` cannot run here (its library is not installed), or ``None``."""
    peer = method.split(".")[0]
    if importlib.util.find_spec(PEER_PACKAGES[peer]) is None:
        return f"{peer} is not installed (pip install {peer})"
    return None


def build(ctx: Context, method: str) -> Case:
    """The peer's method with its library defaults on the model as usually loaded (parameters
    requiring grad); the LIMEs get the same number of samples as lcam's LIME."""
    backbone = ctx.backbone
    backbone.model.requires_grad_(True)  # as a model is usually loaded
    os.environ.setdefault("TQDM_DISABLE", "1")  # grad-cam's Score-CAM and lime show progress bars
    library = method.partition(".")[0]
    images = ctx.slow_images if method in SLOW else ctx.images
    if library == "grad-cam":
        return _grad_cam(ctx, method, images)
    if method == "captum.LayerGradCam":
        return _captum_gradcam(ctx, images)
    samples = PEER_QUICK_SAMPLES if ctx.quick and ctx.spec.large else PEER_SAMPLES
    shown = f"{samples}" + (f" (default {PEER_SAMPLES})" if samples != PEER_SAMPLES else "")
    if method == "captum.Lime":
        case = _captum_lime(ctx, images, samples, shown)
    else:
        case = _lime_image(ctx, images, samples, shown)
    case.slow = method in SLOW
    if samples != PEER_SAMPLES:

        def fixed() -> None:
            for image in images:
                _quickshift(image[None])

        case.scale = (f"{PEER_SAMPLES} samples", PEER_SAMPLES / samples, fixed)
    return case


def _probabilities(ctx: Context) -> Any:
    """``(N, 3, H, W)`` images in [0, 1] -> ``(N, K)`` softmax probabilities, without grad."""
    import torch

    model, normalise = ctx.backbone.model, ctx.backbone.normalise

    @torch.no_grad()
    def probabilities(x: Tensor) -> Tensor:
        return model(normalise(x)).softmax(dim=1)

    return probabilities


def _grad_cam(ctx: Context, method: str, images: Tensor) -> Case:
    import pytorch_grad_cam

    backbone = ctx.backbone
    layer = backbone.model.get_submodule(backbone.target_layer)
    cls_name = method.partition(".")[2]
    cam = getattr(pytorch_grad_cam, cls_name)(model=backbone.model, target_layers=[layer])

    def call() -> None:
        cam(input_tensor=backbone.normalise(images), targets=None)

    options: dict[str, Any] = {"target_layers": [backbone.target_layer]}
    notes = []
    if cls_name == "ScoreCAM":
        options["batch_size"] = getattr(cam, "batch_size", 16)
    else:
        notes.append("model parameters require grad, as usually loaded")
    settings = ", ".join([f"{len(images)} img/call"] + [f"{k}={v}" for k, v in options.items()])
    return Case(call, images, backbone.model, options, settings, notes, slow=method in SLOW)


def _captum_gradcam(ctx: Context, images: Tensor) -> Case:
    from captum.attr import LayerAttribution, LayerGradCam

    model, normalise = ctx.backbone.model, ctx.backbone.normalise
    gradcam = LayerGradCam(
        lambda x: model(normalise(x)), model.get_submodule(ctx.backbone.target_layer)
    )
    probabilities = _probabilities(ctx)

    def call() -> None:
        target = probabilities(images).argmax(dim=1)
        maps = gradcam.attribute(images, target=target, relu_attributions=True)
        LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), "bilinear")

    notes = [
        "includes the forward that picks the predicted class (captum needs it first); "
        "model parameters require grad, as usually loaded"
    ]
    options = {"relu_attributions": True, "interpolate": "bilinear"}
    settings = f"{len(images)} img/call, relu_attributions=True, bilinear upsampling"
    return Case(call, images, model, options, settings, notes)


def _captum_lime(ctx: Context, images: Tensor, samples: int, shown: str) -> Case:
    import torch
    from captum.attr import Lime

    probabilities = _probabilities(ctx)
    lime = Lime(probabilities)

    def call() -> None:
        for image in images:
            x = image[None]
            mask = torch.from_numpy(_quickshift(x)).long()[None, None]
            target = int(probabilities(x).argmax(dim=1))
            lime.attribute(
                x,
                baselines=0.0,
                target=target,
                feature_mask=mask,
                n_samples=samples,
                perturbations_per_eval=LIME_BATCH,
            )

    options = {"n_samples": samples, "perturbations_per_eval": LIME_BATCH, "baselines": 0.0}
    settings = (
        f"{len(images)} img/call, n_samples={shown}, perturbations_per_eval={LIME_BATCH}, "
        "quickshift superpixels as lime's"
    )
    notes = ["default surrogate (Lasso) and kernel; includes segmentation + target pass"]
    return Case(call, images, ctx.backbone.model, options, settings, notes)


def _lime_image(ctx: Context, images: Tensor, samples: int, shown: str) -> Case:
    import torch
    from lime.lime_image import LimeImageExplainer

    probabilities = _probabilities(ctx)
    explainer = LimeImageExplainer(random_state=0)

    def classify(array: Any) -> Any:
        x = torch.from_numpy(array).permute(0, 3, 1, 2).float()
        return probabilities(x).numpy()

    def call() -> None:
        for image in images:
            explainer.explain_instance(
                image.permute(1, 2, 0).double().numpy(),
                classify,
                top_labels=1,
                hide_color=0,
                num_samples=samples,
                batch_size=LIME_BATCH,
                random_seed=0,
            )

    options = {"num_samples": samples, "batch_size": LIME_BATCH, "top_labels": 1, "hide_color": 0}
    settings = f"{len(images)} img/call, num_samples={shown}, batch_size={LIME_BATCH}, top_labels=1"
    notes = ["default quickshift segmentation and ridge surrogate"]
    return Case(call, images, ctx.backbone.model, options, settings, notes)


def _quickshift(x: Tensor) -> Any:
    """lime's default superpixels ``(H, W)`` (int) of one ``(1, 3, H, W)`` image."""
    from skimage.segmentation import quickshift

    array = x[0].permute(1, 2, 0).double().numpy()
    return quickshift(array, kernel_size=4, max_dist=200, ratio=0.2, rng=0)
