"""The methods and metrics of issue 33 side by side with their peers, on the same settings.

Methods (each lcam explainer next to the peer it is tested against for parity):

- ``layercam``, ``hirescam``, ``eigencam``, ``fullgrad`` vs ``grad-cam.LayerCAM``,
  ``grad-cam.HiResCAM``, ``grad-cam.EigenCAM``, ``grad-cam.FullGrad`` (grad-cam's defaults);
- ``integrated_gradients`` vs ``captum.IntegratedGradients`` (32 Gauss-Legendre steps, black
  baseline, all steps in one batch), ``smoothgrad`` vs ``captum.NoiseTunnel`` (SmoothGrad of the
  vanilla gradient, 16 draws, sigma 0.15, all draws in one batch), ``gradient_shap`` vs
  ``captum.GradientShap`` (16 samples, black and white baselines).

Metrics, on Grad-CAM maps of the same images computed once before timing (lcam's metrics with
their default ``batch_size=64``, which caps their forwards at the batch's own size; Quantus
forwards one run of the batch at a time, captum's infidelity all perturbations at once):

- ``metric.faithfulness_correlation`` vs ``quantus.FaithfulnessCorrelation`` (100 runs, subsets
  of 224), ``metric.sparseness`` vs ``quantus.Sparseness``, ``metric.infidelity`` vs
  ``captum.infidelity`` (10 Gaussian perturbations, sigma 0.1, normalised),
  ``metric.random_logit`` vs ``quantus.RandomLogit`` (Pearson similarity, Grad-CAM explains the
  random class; both are given the explained class's map);
  ``metric.monotonicity`` alone (Quantus 0.6.0's ``Monotonicity`` never restores a pixel, see
  ``tests/metrics/test_metrics_monotonicity.py``; its parity test gives Quantus a restoring
  perturbation, which is not Quantus's own metric to time).

On a loaded machine two rows of the suite may be measured minutes apart under different loads;
``python -m benchmarks.cases.attribution_peers [rounds]`` (:func:`interleaved`) times each pair
alternately in one process and reports the median of the per-round ``lcam / peer`` ratios.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from benchmarks.cases.base import Case, Context, explain_case, options

if TYPE_CHECKING:
    from torch import Tensor, nn

LCAM_METHODS = [
    "layercam",
    "hirescam",
    "eigencam",
    "fullgrad",
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
]
PEER_METHODS = {
    "grad-cam.LayerCAM": "layercam",
    "grad-cam.HiResCAM": "hirescam",
    "grad-cam.EigenCAM": "eigencam",
    "grad-cam.FullGrad": "fullgrad",
    "captum.IntegratedGradients": "integrated_gradients",
    "captum.NoiseTunnel": "smoothgrad",
    "captum.GradientShap": "gradient_shap",
}
METRICS = ["faithfulness_correlation", "sparseness", "infidelity", "random_logit", "monotonicity"]
PEER_METRICS = {
    "quantus.FaithfulnessCorrelation": "faithfulness_correlation",
    "quantus.Sparseness": "sparseness",
    "captum.infidelity": "infidelity",
    "quantus.RandomLogit": "random_logit",
}
METHODS: list[str] = []  # each lcam method or metric followed by its peer, in table order
for _lcam in LCAM_METHODS:
    METHODS += [_lcam, *(peer for peer, ours in PEER_METHODS.items() if ours == _lcam)]
for _metric in METRICS:
    METHODS += [f"metric.{_metric}", *(p for p, m in PEER_METRICS.items() if m == _metric)]
PACKAGES = {"grad-cam": "pytorch_grad_cam", "captum": "captum", "quantus": "quantus"}
# the same settings on both sides
STEPS, SAMPLES, NOISE, RUNS, SUBSET = 32, 16, 0.15, 100, 224
INFIDELITY_SAMPLES, INFIDELITY_STD = 10, 0.1
LCAM_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": STEPS, "batch_size": 1024},
    "smoothgrad": {"num_samples": SAMPLES, "stdev": NOISE, "batch_size": 1024},
    "gradient_shap": {"num_samples": SAMPLES, "batch_size": 1024},
}


def unavailable(method: str) -> str | None:
    """Why ``method`` cannot run here (its peer library is not installed), or ``None``."""
    peer = method.split(".")[0]
    if peer in PACKAGES and importlib.util.find_spec(PACKAGES[peer]) is None:
        return f"{peer} is not installed (pip install {peer})"
    return None


def build(ctx: Context, method: str) -> Case:
    """The call to time for ``method`` (see the module docstring for the settings)."""
    if method in LCAM_METHODS:
        from lcam.explainers import EXPLAINERS, get_explainer

        used = options(EXPLAINERS[method], LCAM_OPTIONS.get(method, {}))
        explainer = get_explainer(method, ctx.backbone, **LCAM_OPTIONS.get(method, {}))
        keys = tuple(LCAM_OPTIONS.get(method, {}))
        return explain_case(explainer, ctx.images, ctx, used, used, keys, [])
    if method in PEER_METHODS:
        return _peer_method(ctx, method)
    return _metric(ctx, method)


def _wrapped(ctx: Context) -> nn.Module:
    """The network as the peers see it: ``[0, 1]`` images in, logits out, in eval mode."""
    from torch import nn

    backbone = ctx.backbone

    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = backbone.model

        def forward(self, images: Tensor) -> Tensor:
            return self.model(backbone.normalise(images))

    return Normalised().eval()


def _targets(ctx: Context) -> Tensor:
    import torch

    with torch.no_grad():
        return ctx.backbone(ctx.images).argmax(dim=1)


def _peer_method(ctx: Context, method: str) -> Case:
    import torch

    model, images, targets = _wrapped(ctx), ctx.images, _targets(ctx)
    name = method.partition(".")[2]
    if method.startswith("grad-cam."):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = ctx.backbone.model.get_submodule(ctx.backbone.target_layer)
        layers = [] if name == "FullGrad" else [layer]
        cam = getattr(pytorch_grad_cam, name)(model=model, target_layers=layers)
        classes = [ClassifierOutputTarget(int(c)) for c in targets]

        def call() -> None:
            cam(input_tensor=images.clone().requires_grad_(True), targets=classes)

        settings = f"{len(images)} img/call, grad-cam defaults"
        return Case(call, images, ctx.backbone.model, {}, settings, ["targets given"])
    from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Saliency

    if name == "IntegratedGradients":
        method_ig = IntegratedGradients(model)

        def call() -> None:
            method_ig.attribute(images, baselines=0.0, target=targets, n_steps=STEPS)

        settings = f"{len(images)} img/call, n_steps={STEPS}, gausslegendre, baseline 0"
    elif name == "NoiseTunnel":
        tunnel = NoiseTunnel(Saliency(model))

        def call() -> None:
            tunnel.attribute(images, nt_samples=SAMPLES, stdevs=NOISE, target=targets, abs=False)

        settings = f"{len(images)} img/call, smoothgrad of Saliency, {SAMPLES} samples, {NOISE}"
    else:
        shap = GradientShap(model)
        references = torch.stack([torch.zeros_like(images[0]), torch.ones_like(images[0])])

        def call() -> None:
            shap.attribute(images, baselines=references, n_samples=SAMPLES, target=targets)

        settings = f"{len(images)} img/call, n_samples={SAMPLES}, black + white baselines"
    notes = ["targets given (lcam's time includes the forward that picks them)"]
    return Case(call, images, ctx.backbone.model, {}, settings, notes)


def _metric(ctx: Context, method: str) -> Case:
    import lcam.metrics as metrics
    from lcam.explainers import get_explainer

    images, targets, backbone = ctx.images, _targets(ctx), ctx.backbone
    gradcam = get_explainer("gradcam", backbone)
    maps = gradcam.explain(images, targets).maps
    name = method.partition(".")[2]
    if method.startswith("metric."):
        builders = {
            "faithfulness_correlation": lambda: metrics.FaithfulnessCorrelation(
                backbone, RUNS, SUBSET
            ),
            "sparseness": metrics.Sparseness,
            "infidelity": lambda: metrics.Infidelity(backbone, INFIDELITY_SAMPLES, INFIDELITY_STD),
            "monotonicity": lambda: metrics.Monotonicity(backbone, 20),
        }
        if name == "random_logit":
            explain = _explain_fn(gradcam)

            def call() -> None:
                metrics.RandomLogit(explain, backbone.num_classes).update(images, maps, targets)
        else:

            def call() -> None:
                builders[name]().update(images, maps, targets)

        return Case(call, images, backbone.model, {}, f"{len(images)} img/call", [])
    return _peer_metric(ctx, name, maps, targets, gradcam)


def _explain_fn(explainer: Any) -> Any:
    def explain(images: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor]:
        explanation = explainer.explain(images, classes)
        return explanation.maps, explanation.targets

    return explain


def _peer_metric(ctx: Context, name: str, maps: Tensor, targets: Tensor, gradcam: Any) -> Case:
    import torch

    model, images = _wrapped(ctx), ctx.images
    x, y, a = images.numpy(), targets.numpy(), maps[:, None].numpy()
    if name == "infidelity":
        from captum.metrics import infidelity

        def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
            noise = torch.randn_like(inputs) * INFIDELITY_STD
            return noise, inputs - noise

        attributions = maps[:, None].expand_as(images)

        def call() -> None:
            infidelity(
                model, perturb, images, attributions, target=targets,
                n_perturb_samples=INFIDELITY_SAMPLES, normalize=True,
            )  # fmt: skip

        return Case(call, images, ctx.backbone.model, {}, f"{len(images)} img/call", [])
    import quantus
    from quantus.functions.similarity_func import correlation_pearson

    device = str(images.device)
    if name == "FaithfulnessCorrelation":
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=RUNS, subset_size=SUBSET, disable_warnings=True
        )
        extra: dict[str, Any] = {}
    elif name == "Sparseness":
        metric, extra = quantus.Sparseness(disable_warnings=True), {}
    else:
        metric = quantus.RandomLogit(
            num_classes=ctx.backbone.num_classes,
            similarity_func=correlation_pearson,
            disable_warnings=True,
        )

        def explain(model: Any, inputs: Any, targets: Any, **_: Any) -> Any:
            classes = torch.from_numpy(targets)
            return gradcam.explain(torch.from_numpy(inputs), classes).maps[:, None].numpy()

        extra = {"explain_func": explain}

    def call() -> None:
        metric(model=model, x_batch=x, y_batch=y, a_batch=a, device=device, **extra)

    notes = ["numpy round trip as Quantus does it"]
    return Case(call, images, ctx.backbone.model, {}, f"{len(images)} img/call", notes)


PAIRS = [(ours, peer) for peer, ours in PEER_METHODS.items()] + [
    (f"metric.{ours}", peer) for peer, ours in PEER_METRICS.items()
]


def interleaved(model: str = "quickstart", batch_size: int = 8, rounds: int = 3) -> str:
    """A Markdown table of every lcam/peer pair timed alternately in this process.

    Each round times a plain forward, then every case one after the other, so the two sides of
    a pair run seconds apart and a load change moves both: the median of the per-round
    ``lcam / peer`` time ratios is steadier on a shared machine than two separate rows of the
    suite. One warm-up call of each case first; no pass counting or memory measurement.
    """
    import statistics
    import time

    import torch

    from benchmarks.machine import load_average
    from benchmarks.models import MODELS, build_backbone, make_images

    spec = MODELS[model]
    images, labels = make_images(spec, batch_size)
    ctx = Context(model, spec, build_backbone(spec), images, labels, False)
    cases = {name: build(ctx, name).call for pair in PAIRS for name in pair}

    def forward() -> None:
        with torch.no_grad():
            ctx.backbone(images)

    calls = {"forward": forward, **cases}
    for call in calls.values():
        call()
    started = load_average()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 / batch_size for name, t in times.items()}
    lines = [
        f"{model}, {batch_size} img/call, {torch.get_num_threads()} threads, {rounds} rounds; "
        f"load average {started} at start, {load_average()} at end",
        "",
        "| lcam | peer | lcam ms/image | peer ms/image | lcam / peer (median of rounds) "
        "| per-round ratios | forward ms/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for ours, peer in PAIRS:
        ratios = [a / b for a, b in zip(times[ours], times[peer], strict=True)]
        lines.append(
            f"| {ours} | {peer} | {ms[ours]:.3g} | {ms[peer]:.3g} "
            f"| {statistics.median(ratios):.2f} | {', '.join(f'{r:.2f}' for r in ratios)} "
            f"| {ms['forward']:.3g} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python -m benchmarks.cases.attribution_peers [rounds] [threads]
    import os
    import sys

    threads = sys.argv[2] if len(sys.argv) > 2 else "1"
    # As run.py does, before NumPy loads: its BLAS (grad-cam's SVD) reads these only then, and
    # on a loaded machine an unlimited BLAS made grad-cam's EigenCAM 200x slower.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = threads
    import torch

    torch.set_num_threads(int(threads))
    print(interleaved(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 3))
