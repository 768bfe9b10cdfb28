"""Speed and memory of lcam's one-pass explainer against classic explainers and peer libraries.

Usage::

    python benchmarks/run.py [--models quickstart resnet50 vgg16] [--methods ...]
        [--batch-size 8] [--repeats 5] [--threads 2] [--quick] [--json out.json]
    python benchmarks/run.py --single MODEL METHOD [same options]   # one measurement, in-process

Every (model, method) pair runs in its own subprocess (``--single``), so the peak resident memory
reported for a row belongs to that measurement alone. Each measurement is warmed up, then timed
``--repeats`` times with ``time.perf_counter``; the row gives the median time per image, its ratio
to a plain forward of the same batch measured in the same process, the forward and backward passes
per image *counted* with hooks on the network's first and last layers, and the peak RSS.
``benchmarks/README.md`` explains every column and the caveats.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from lcam.backbone import FrozenBackbone

# --------------------------------------------------------------------------------------------
# What can be measured
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build its ``FrozenBackbone``."""

    model: str
    input_size: int
    num_classes: int | None = None
    weights: str | None = None  # "shapes": the TinyResNet weights shipped with lcam
    large: bool = True  # 224 px ImageNet-size network: slow methods get --quick reductions

    def describe(self) -> str:
        weights = {None: "random weights", "shapes": "shipped weights"}.get(self.weights, "")
        return f"{self.model}, {self.input_size} px, {weights}"


MODELS: dict[str, ModelSpec] = {
    "quickstart": ModelSpec(
        "lcam.models.TinyResNet", 64, num_classes=6, weights="shapes", large=False
    ),
    "resnet50": ModelSpec("resnet50", 224),
    "vgg16": ModelSpec("vgg16", 224),
}

REFERENCE = ["forward", "forward_unsplit"]
LEARNED = [
    "lcam_fm",
    "lcam_img",
    "tame",
    "lcam_fm.class_maps",
    "lcam_img.class_maps",
    "tame.class_maps",
]
CLASSIC = [
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
TRAINING = ["train.lcam_fm", "train.lcam_img", "train.tame"]
PIPELINE = ["infer.lcam_fm"]
PEERS = [
    "grad-cam.GradCAM",
    "grad-cam.GradCAMPlusPlus",
    "grad-cam.ScoreCAM",
    "captum.LayerGradCam",
    "captum.Lime",
    "lime.LimeImageExplainer",
]
GROUPS: dict[str, list[str]] = {
    "reference": REFERENCE,
    "lcam": LEARNED,
    "classic": CLASSIC,
    "train": TRAINING,
    "peers": PEERS,
    "pipeline": PIPELINE,
    "all": REFERENCE + LEARNED + CLASSIC + TRAINING + PEERS + PIPELINE,
}
METHODS = GROUPS["all"]

# Methods that cost hundreds of forward passes per image: one image per call, a cheap warm-up.
SLOW = {
    "scorecam",
    "ablationcam",
    "rise",
    "lime",
    "kernel_shap",
    "occlusion",
    "grad-cam.ScoreCAM",
    "captum.Lime",
    "lime.LimeImageExplainer",
}
# Reduced settings of --quick on the large models (the cost is linear in the passes they set).
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "rise": {"num_masks": 500},
    "lime": {"num_samples": 200},
    "kernel_shap": {"num_samples": 200},
    "occlusion": {"stride": 16},
}
PEER_SAMPLES, PEER_QUICK_SAMPLES = 1000, 200  # LIME samples of the peers (lcam's default: 1000)
# Skipped by --quick on the large models: no setting reduces their C + 1 passes per image.
QUICK_SKIPPED = {"scorecam", "grad-cam.ScoreCAM"}
# infer.py end to end: JPEG files of this side (larger than the model's input, as photos are),
# this many per model (enough batches of infer.py's default 16 for the loader to run ahead).
PIPELINE_SIDE = 320
PIPELINE_IMAGES = {"quickstart": 256, "resnet50": 64, "vgg16": 64}
PEER_PACKAGES = {"grad-cam": "pytorch_grad_cam", "captum": "captum", "lime": "lime"}
# Options shown in the table's settings column (the JSON has every option).
KEY_OPTIONS: dict[str, tuple[str, ...]] = {
    "rise": ("num_masks", "s", "p", "batch_size"),
    "lime": ("num_samples", "segmentation", "batch_size"),
    "kernel_shap": ("num_samples", "segmentation", "batch_size"),
    "occlusion": ("patch_size", "stride", "batch_size"),
    "scorecam": ("batch_size",),
    "ablationcam": ("batch_size",),
}


def expand_methods(names: Sequence[str]) -> list[str]:
    """Method names with groups (``lcam``, ``classic``, ``peers``, ...) expanded, in order."""
    methods: list[str] = []
    for name in names:
        for method in GROUPS.get(name, [name]):
            if method not in METHODS:
                raise ValueError(
                    f"unknown method {method!r}; choose from {', '.join(METHODS)} or a group "
                    f"({', '.join(GROUPS)})"
                )
            if method not in methods:
                methods.append(method)
    return methods


def skip_reason(model: str, method: str, quick: bool) -> str | None:
    """Why ``method`` is not measured on ``model`` (``None``: it is)."""
    peer = method.split(".")[0] if method in PEERS else None
    if peer is not None and importlib.util.find_spec(PEER_PACKAGES[peer]) is None:
        return f"{peer} is not installed (pip install {peer})"
    if quick and MODELS[model].large and method in QUICK_SKIPPED:
        return "skipped by --quick: C + 1 full forward passes per image; run without --quick"
    return None


# --------------------------------------------------------------------------------------------
# One row of the results
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One (model, method) measurement; the JSON file holds these fields as they are.

    Pass counts are per image, counted with hooks on the first and last layer of the network:
    ``forward_passes`` ran the whole network, ``forward_tail_passes`` only the layers after the
    target layer; ``backward_passes`` reached the first layer, ``backward_tail_passes`` stopped
    earlier. ``reported_*`` are what the lcam ``Explanation`` says, when there is one.
    """

    model: str
    method: str
    status: str = "ok"  # ok | skipped | n/a | error
    settings: str = ""
    ms_per_image: float | None = None
    ratio: float | None = None
    forward_passes: float | None = None
    forward_tail_passes: float | None = None
    backward_passes: float | None = None
    backward_tail_passes: float | None = None
    peak_rss_mb: float | None = None
    peak_tensor_mb: float | None = None
    memory_ratio: float | None = None
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    images_per_call: int | None = None
    runs: int | None = None
    calls_per_run: int | None = None
    run_ms_per_image: list[float] = field(default_factory=list)
    reference_forward_ms_per_image: float | None = None
    reference_peak_tensor_mb: float | None = None
    scaled_ms_per_image: float | None = None
    reported_forward_passes: float | None = None
    reported_backward_passes: float | None = None
    baseline_rss_mb: float | None = None
    seconds: float | None = None


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else _number(value)


def _passes(full: float | None, tail: float | None) -> str:
    if full is None:
        return ""
    parts = [_count(full)] if full or not tail else []
    if tail:
        parts.append(f"{_count(tail)} tail")
    return " + ".join(parts)


def _rss(peak: float | None, baseline: float | None) -> str:
    if not peak:
        return ""
    if baseline is None:
        return f"{peak:,.0f}"
    return f"{peak:,.0f} (+{max(0.0, peak - baseline):,.0f})"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    header = [
        "model",
        "method",
        "settings",
        "ms/image",
        "ratio to forward",
        "fwd passes/image",
        "bwd passes/image",
        "peak tensor MB",
        "memory ratio",
        "peak RSS MB",
        "note",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        note = row.note if row.status in ("ok", "") else f"{row.status}: {row.note}"
        cells = [
            row.model,
            row.method,
            row.settings,
            _number(row.ms_per_image),
            _number(row.ratio),
            _passes(row.forward_passes, row.forward_tail_passes),
            _passes(row.backward_passes, row.backward_tail_passes),
            _number(row.peak_tensor_mb),
            _number(row.memory_ratio),
            _rss(row.peak_rss_mb, row.baseline_rss_mb),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Machine information
# --------------------------------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, thread count, load and library versions of this machine."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "lcam": _version("lcam"),
        "lcam_commit": commit or None,
        "grad-cam": _version("grad-cam"),
        "captum": _version("captum"),
        "lime": _version("lime"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# Timing and pass counting (child side; torch is imported lazily)
# --------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Timing:
    """Per-image times of the timed runs and how they were taken."""

    ms_per_image: list[float]
    calls_per_run: int

    @property
    def median(self) -> float:
        return statistics.median(self.ms_per_image)


def time_call(
    call: Callable[[], Any],
    images: int,
    *,
    repeats: int,
    warmup: Callable[[], Any] | None = None,
    first: Callable[[], AbstractContextManager[Any]] | None = None,
    min_run_seconds: float = 0.2,
    max_seconds: float | None = None,
) -> Timing:
    """Warm up, then time ``repeats`` runs of ``call`` and return per-image milliseconds.

    Args:
        call: one call that explains ``images`` images.
        images: images per call.
        repeats: timed runs (at least one is always made).
        warmup: a cheap stand-in for the warm-up; ``None`` warms up with ``call`` itself (twice,
            the second call sets how many calls one run makes so that a run lasts at least
            ``min_run_seconds``).
        first: wrapper context for the first call (pass counting); ``None`` for none.
        max_seconds: stop repeating once the timed runs have taken this long (``None``: never).
    """
    number = 1
    counted = False

    def counted_call() -> None:
        nonlocal counted
        if first is not None and not counted:
            with first():
                call()
            counted = True
        else:
            call()

    if warmup is None:
        counted_call()
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        number = max(1, min(1000, math.ceil(min_run_seconds / max(elapsed, 1e-9))))
    else:
        warmup()
    runs: list[float] = []
    spent = 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for _ in range(number):
            counted_call()
        elapsed = time.perf_counter() - start
        spent += elapsed
        runs.append(elapsed / number / images * 1000)
        if max_seconds is not None and max_seconds > 0 and spent > max_seconds:
            break
    return Timing(runs, number)


def peak_tensor_mb(call: Callable[[], Any]) -> float:
    """Peak memory of the tensors that one ``call`` allocates and holds at once, in MiB.

    Every operator the call dispatches is followed (forward, backward and optimiser alike, on any
    device): a new output storage adds its size while a tensor refers to it; memory that existed
    before the call (weights, input images) is not counted. Unlike the process's RSS this is
    exact and independent of the allocator; it leaves out the operators' private scratch
    buffers (e.g. oneDNN workspaces). Untimed: following every operator slows the call down.
    """
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TensorMemory(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.references: dict[int, int] = {}  # storage -> live tensors referring to it
            self.sizes: dict[int, int] = {}
            self.current = self.peak = 0

        def _release(self, storage: int) -> None:
            self.references[storage] -= 1
            if self.references[storage] == 0:
                del self.references[storage]
                self.current -= self.sizes.pop(storage)

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            output = func(*args, **(kwargs or {}))
            aliasing = any(r.alias_info is not None for r in func._schema.returns)
            for tensor in tree_leaves(output):
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()._cdata
                if storage not in self.references:
                    if aliasing:  # a view of (or in-place write to) memory from before the call
                        continue
                    self.references[storage] = 0
                    self.sizes[storage] = tensor.untyped_storage().nbytes()
                    self.current += self.sizes[storage]
                    self.peak = max(self.peak, self.current)
                self.references[storage] += 1
                weakref.finalize(tensor, self._release, storage)
            return output

    with TensorMemory() as memory:
        call()
    return memory.peak / 2**20


class PassCounter:
    """Counts images through the first and last layer of a network, forward and backward.

    A pass that reaches the first layer ran the whole network; one that reaches only the last
    layer ran the tail (the layers after the target layer). Backward passes are counted with a
    gradient hook on those layers' outputs. Counting is only active inside :meth:`counting`.
    """

    def __init__(self, network: nn.Module, example: Tensor) -> None:
        import torch

        first, last = _end_layers(network, example)
        self.names = (first[0], last[0])
        self.counts = {"first_fwd": 0, "last_fwd": 0, "first_bwd": 0, "last_bwd": 0}
        self.active = False
        self._torch = torch
        self.handles = [
            first[1].register_forward_hook(self._hook("first")),
            last[1].register_forward_hook(self._hook("last")),
        ]

    def _hook(self, end: str) -> Callable[..., None]:
        def count_backward(grad: Tensor) -> None:
            self.counts[f"{end}_bwd"] += int(grad.shape[0])

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self.active or not isinstance(output, self._torch.Tensor):
                return
            self.counts[f"{end}_fwd"] += int(output.shape[0])
            if output.requires_grad:
                output.register_hook(count_backward)

        return hook

    def counting(self) -> _Counting:
        return _Counting(self)

    def per_image(self, images: int) -> dict[str, float]:
        """``forward_passes``, ``forward_tail_passes``, ``backward_passes``,
        ``backward_tail_passes`` per image."""
        c = {key: value / images for key, value in self.counts.items()}
        return {
            "forward_passes": c["first_fwd"],
            "forward_tail_passes": max(0.0, c["last_fwd"] - c["first_fwd"]),
            "backward_passes": c["first_bwd"],
            "backward_tail_passes": max(0.0, c["last_bwd"] - c["first_bwd"]),
        }

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Counting:
    def __init__(self, counter: PassCounter) -> None:
        self.counter = counter

    def __enter__(self) -> None:
        self.counter.active = True

    def __exit__(self, *_exc: object) -> None:
        self.counter.active = False


def _end_layers(network: nn.Module, example: Tensor) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """The first and last leaf modules a forward of ``network`` calls exactly once."""
    import torch

    leaves = {m: n for n, m in network.named_modules() if n and not list(m.children())}
    order: list[Any] = []
    handles = [
        module.register_forward_hook(lambda module, _i, _o: order.append(module))
        for module in leaves
    ]
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    once = [module for module in order if order.count(module) == 1]
    if not once:
        raise ValueError(f"{type(network).__name__}: no layer runs exactly once per forward")
    return (leaves[once[0]], once[0]), (leaves[once[-1]], once[-1])


# --------------------------------------------------------------------------------------------
# Cases: what one (model, method) measurement calls
# --------------------------------------------------------------------------------------------


class NotApplicableError(Exception):
    """The method does not apply to this model (e.g. CAM on VGG-16)."""


@dataclass
class Case:
    """One measurement, ready to time."""

    call: Callable[[], Any]
    images: Tensor
    network: nn.Module  # the network whose passes are counted
    options: dict[str, Any] = field(default_factory=dict)
    settings: str = ""
    notes: list[str] = field(default_factory=list)
    slow: bool = False
    # The reference of the ratio (default: a plain forward of ``images``) and what it is.
    reference: Callable[[], Any] | None = None
    memory: bool = True  # measure the call's peak tensor memory (not for the slow methods)
    reported: tuple[float, float] | None = None  # lcam's (forward, backward) passes per image
    result: Callable[[], Any] | None = None  # returns the last Explanation (for reported passes)
    # Scaling of a reduced setting to its default: (what, factor on the part that scales with the
    # passes, fixed part of a call that does not scale (e.g. segmentation) or None).
    scale: tuple[str, float, Callable[[], Any] | None] | None = None


@dataclass
class Context:
    """What every case is built from."""

    name: str
    spec: ModelSpec
    backbone: FrozenBackbone
    images: Tensor  # (B, 3, H, W) in [0, 1]
    labels: Tensor  # (B,)
    quick: bool

    @property
    def slow_images(self) -> Tensor:
        return self.images[:1]


def _spec_weights(spec: ModelSpec) -> str | None:
    if spec.weights == "shapes":
        from lcam.models.tiny import SHAPES_WEIGHTS

        return str(SHAPES_WEIGHTS)
    return spec.weights


def build_backbone(spec: ModelSpec) -> FrozenBackbone:
    import torch

    import lcam

    torch.manual_seed(0)
    return lcam.FrozenBackbone(
        spec.model,
        num_classes=spec.num_classes,
        weights=_spec_weights(spec),
        input_size=spec.input_size,
    )


def make_images(spec: ModelSpec, count: int) -> tuple[Tensor, Tensor]:
    """``count`` synthetic-shapes images at the model's size and their labels (deterministic)."""
    import torch

    from lcam.data import SyntheticShapes

    data = SyntheticShapes(count, image_size=spec.input_size, seed=0)
    items = [data[i] for i in range(count)]
    # The renderer returns channels-last strides; use the usual contiguous NCHW batch of a loader.
    images = torch.stack([i["image"] for i in items]).contiguous()
    return images, torch.stack([i["label"] for i in items])


def _options(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every constructor option of an explainer class with its value (defaults + overrides)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, backbone
    options = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**options, **overrides}


def _settings(
    images: int, options: dict[str, Any], defaults: dict[str, Any], keys: Sequence[str]
) -> str:
    parts = [f"{images} img/call"]
    for key in keys:
        value = options[key]
        text = f"{key}={value}"
        if key in defaults and defaults[key] != value:
            text += f" (default {defaults[key]})"
        parts.append(text)
    return ", ".join(parts)


def _no_grad(function: Callable[[], Any]) -> Callable[[], Any]:
    import torch

    def call() -> Any:
        with torch.no_grad():
            return function()

    return call


def _reference_case(ctx: Context, method: str) -> Case:
    backbone, images = ctx.backbone, ctx.images
    if method == "forward":
        call = _no_grad(lambda: backbone(images))
        note = "FrozenBackbone forward under torch.no_grad (the reference)"
    else:
        call = _no_grad(lambda: backbone.model(backbone.normalise(images)))
        note = "the wrapped nn.Module itself, not split by torch.fx"
    return Case(call, images, backbone.model, settings=f"{len(images)} img/call", notes=[note])


def _learned_case(ctx: Context, method: str) -> Case:
    import lcam

    head, _, part = method.partition(".")
    explainer = lcam.build_explainer(ctx.backbone, head=head).eval()
    images = ctx.images
    parameters = sum(p.numel() for p in explainer.head.parameters())
    layers = "/".join(ctx.backbone.target_layers)
    notes = [f"untrained head (same cost as a trained one): {parameters:,} parameters on {layers}"]
    if part == "class_maps":
        return Case(
            _no_grad(lambda: explainer.class_maps(images)),
            images,
            ctx.backbone.model,
            settings=f"{len(images)} img/call",
            notes=[*notes, f"logits + all {ctx.backbone.num_classes} class maps"],
        )
    return _explain_case(explainer, images, ctx, {}, {}, (), notes)


def _explain_case(
    explainer: Any,
    images: Tensor,
    ctx: Context,
    options: dict[str, Any],
    defaults: dict[str, Any],
    keys: Sequence[str],
    notes: list[str],
) -> Case:
    """A case that times ``explainer.explain(images)`` and keeps its last Explanation."""
    last: dict[str, Any] = {}

    def call() -> None:
        last["explanation"] = explainer.explain(images)

    return Case(
        call,
        images,
        ctx.backbone.model,
        options=options,
        settings=_settings(len(images), options, defaults, keys),
        notes=list(notes),
        result=lambda: last.get("explanation"),
    )


def _planned_passes(explainer: Any, size: tuple[int, int]) -> float:
    """Forward passes per image an explainer will make on images of ``size``."""
    from lcam.explainers.perturbation import Occlusion

    if isinstance(explainer, Occlusion):
        rows, cols = explainer.windows(size)
        return float(len(rows) * len(cols) + 1)
    return float(explainer.forward_passes)


def _classic_case(ctx: Context, method: str) -> Case:
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
    defaults = _options(cls, {})
    options = _options(cls, overrides)
    case = _explain_case(explainer, images, ctx, options, defaults, KEY_OPTIONS.get(name, ()), [])
    case.slow = slow
    if method == "gradcam.full_backward":

        def full() -> None:
            explainer.compute_maps_full_backward(images, None)

        case.call, case.result = full, None
        case.notes.append("backward through the whole network, as most libraries do")
    if overrides:
        size = (images.shape[-2], images.shape[-1])
        default_passes = _planned_passes(get_explainer(name, ctx.backbone), size)
        used_passes = _planned_passes(explainer, size)
        fixed = None
        if isinstance(explainer, SuperpixelSurrogate):

            def fixed() -> None:
                explainer.segment(images)

        what = ", ".join(f"{k}={defaults[k]}" for k in overrides)
        case.scale = (what, default_passes / used_passes, fixed)
    return case


def _training_case(ctx: Context, method: str, module: Any) -> Case:
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


def _pipeline_case(ctx: Context, method: str) -> Case:
    """``infer.py``'s :func:`~lcam.inference.run_inference` on a folder of JPEG files, end to
    end (decoding in loader workers, model, maps and overlays written), with its defaults;
    the reference is the model alone on the same decoded images in batches of the same size."""
    import torch
    from PIL import Image

    import lcam
    from lcam.data import SyntheticShapes
    from lcam.inference import ImageFiles, collect_images, run_inference

    defaults = inspect.signature(run_inference).parameters
    batch_size = defaults["batch_size"].default
    workers = defaults["num_workers"].default
    explainer = lcam.build_explainer(ctx.backbone, head=method.partition(".")[2]).eval()
    folder = Path(tempfile.mkdtemp(prefix="lcam-benchmark-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    count = PIPELINE_IMAGES[ctx.name]
    shapes = SyntheticShapes(count, image_size=PIPELINE_SIDE, seed=0)
    (folder / "images").mkdir()
    for index in range(count):
        pixels = (shapes[index]["image"] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / "images" / f"{index:05d}.jpg", quality=90)
    files = collect_images([folder / "images"])
    decoded = ImageFiles(files, ctx.spec.input_size)
    images = torch.stack([decoded[i]["image"] for i in range(count)])

    def end_to_end() -> None:
        run_inference(explainer, files, folder / "maps", overwrite=True, progress=False)

    def model_only() -> None:
        with torch.no_grad():
            for batch in images.split(batch_size):
                explainer.explain(batch)

    return Case(
        end_to_end,
        images,
        ctx.backbone.model,
        options={
            "images": count,
            "side": PIPELINE_SIDE,
            "batch_size": batch_size,
            "num_workers": workers,
        },
        settings=(
            f"{count} JPEG files {PIPELINE_SIDE}x{PIPELINE_SIDE}, infer.py defaults "
            f"(batch {batch_size}, {workers} workers)"
        ),
        notes=[
            "ratio = end to end / the model alone (explain() on the decoded images, same "
            "batches); images/s end to end = 1 / ratio of the model's"
        ],
        reference=model_only,
        memory=False,
    )


def _peer_case(ctx: Context, method: str) -> Case:
    import torch

    backbone = ctx.backbone
    model = backbone.model.requires_grad_(True)  # as a model is usually loaded
    layer = model.get_submodule(backbone.target_layer)
    library, _, cls_name = method.partition(".")
    slow = method in SLOW
    images = ctx.slow_images if slow else ctx.images
    notes: list[str] = []

    os.environ.setdefault("TQDM_DISABLE", "1")  # grad-cam's Score-CAM and lime show progress bars
    if library == "grad-cam":
        import pytorch_grad_cam

        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[layer])

        def call() -> None:
            cam(input_tensor=backbone.normalise(images), targets=None)

        options = {"target_layers": [backbone.target_layer]}
        if cls_name == "ScoreCAM":
            options["batch_size"] = getattr(cam, "batch_size", 16)
        else:
            notes.append("model parameters require grad, as usually loaded")
        settings = ", ".join([f"{len(images)} img/call"] + [f"{k}={v}" for k, v in options.items()])
        return Case(call, images, model, options, settings, notes, slow=slow)

    samples = PEER_QUICK_SAMPLES if ctx.quick and ctx.spec.large else PEER_SAMPLES
    shown = f"{samples}" + (f" (default {PEER_SAMPLES})" if samples != PEER_SAMPLES else "")

    @torch.no_grad()
    def probabilities(x: Tensor) -> Tensor:
        return model(backbone.normalise(x)).softmax(dim=1)

    if method == "captum.LayerGradCam":
        from captum.attr import LayerAttribution, LayerGradCam

        gradcam = LayerGradCam(lambda x: model(backbone.normalise(x)), layer)

        def call() -> None:
            target = probabilities(images).argmax(dim=1)
            maps = gradcam.attribute(images, target=target, relu_attributions=True)
            LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), "bilinear")

        notes.append(
            "includes the forward that picks the predicted class (captum needs it first); "
            "model parameters require grad, as usually loaded"
        )
        options = {"relu_attributions": True, "interpolate": "bilinear"}
        settings = f"{len(images)} img/call, relu_attributions=True, bilinear upsampling"
        return Case(call, images, model, options, settings, notes)

    if method == "captum.Lime":
        from captum.attr import Lime

        lime = Lime(probabilities)
        batch = 64

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
                    perturbations_per_eval=batch,
                )

        options = {"n_samples": samples, "perturbations_per_eval": batch, "baselines": 0.0}
        settings = (
            f"{len(images)} img/call, n_samples={shown}, perturbations_per_eval={batch}, "
            "quickshift superpixels as lime's"
        )
        notes.append("default surrogate (Lasso) and kernel; includes segmentation + target pass")
    else:  # lime.LimeImageExplainer
        from lime.lime_image import LimeImageExplainer

        explainer = LimeImageExplainer(random_state=0)
        batch = 64

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
                    batch_size=batch,
                    random_seed=0,
                )

        options = {"num_samples": samples, "batch_size": batch, "top_labels": 1, "hide_color": 0}
        settings = f"{len(images)} img/call, num_samples={shown}, batch_size={batch}, top_labels=1"
        notes.append("default quickshift segmentation and ridge surrogate")
    case = Case(call, images, model, options, settings, notes, slow=slow)
    if samples != PEER_SAMPLES:

        def fixed() -> None:
            for image in images:
                _quickshift(image[None])

        case.scale = (f"{PEER_SAMPLES} samples", PEER_SAMPLES / samples, fixed)
    return case


def _quickshift(x: Tensor) -> Any:
    """lime's default superpixels of one ``(1, 3, H, W)`` image."""
    from skimage.segmentation import quickshift

    array = x[0].permute(1, 2, 0).double().numpy()
    return quickshift(array, kernel_size=4, max_dist=200, ratio=0.2, rng=0)


# --------------------------------------------------------------------------------------------
# One measurement (the child process)
# --------------------------------------------------------------------------------------------


def measure(
    model: str,
    method: str,
    *,
    batch_size: int,
    repeats: int,
    threads: int,
    quick: bool,
    max_seconds: float | None,
) -> Row:
    """Build the model and the case, time it and return its row (in this process)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (it reads it once)
    import torch

    started = time.perf_counter()
    torch.set_num_threads(threads)
    spec = MODELS[model]
    row = Row(model, method)
    images, labels = make_images(spec, batch_size)
    module = None
    if method in TRAINING:
        from lcam.module import LCAMModule

        torch.manual_seed(0)
        module = LCAMModule(
            backbone=spec.model,
            weights=_spec_weights(spec),
            num_classes=spec.num_classes,
            input_size=spec.input_size,
            head=method.partition(".")[2],
        )
        backbone = module.backbone  # time the reference on the module's own backbone
    else:
        backbone = build_backbone(spec)
    ctx = Context(model, spec, backbone, images, labels, quick)
    try:
        if method in REFERENCE:
            case = _reference_case(ctx, method)
        elif method in LEARNED:
            case = _learned_case(ctx, method)
        elif method in CLASSIC:
            case = _classic_case(ctx, method)
        elif method in TRAINING:
            case = _training_case(ctx, method, module)
        elif method in PIPELINE:
            case = _pipeline_case(ctx, method)
        else:
            case = _peer_case(ctx, method)
    except NotApplicableError as reason:
        row.status, row.note = "n/a", str(reason)
        row.seconds = time.perf_counter() - started
        return row

    count = len(case.images)
    row.settings, row.options, row.images_per_call = case.settings, case.options, count
    row.baseline_rss_mb = _current_rss_mb()
    timing_options = {"repeats": repeats, "max_seconds": max_seconds}

    reference_call = case.reference or _no_grad(lambda: backbone(case.images))
    if method == "forward":
        reference = None
    else:
        # Cheap, so always at least 5 runs: a stall in the reference skews the whole row's ratio.
        reference = time_call(reference_call, count, repeats=max(5, repeats)).median
        row.reference_forward_ms_per_image = reference

    counter = PassCounter(case.network, backbone.normalise(case.images[:1]))
    warmup = None
    if case.slow:
        # A full warm-up would double the cost; a forward of the same shape warms the kernels,
        # and each run is hundreds of batched passes, which amortise first-call effects.
        warmup = _no_grad(lambda: [backbone(case.images) for _ in range(2)])
    timing = time_call(case.call, count, warmup=warmup, first=counter.counting, **timing_options)
    counter.remove()

    row.ms_per_image = timing.median
    row.run_ms_per_image = timing.ms_per_image
    row.runs, row.calls_per_run = len(timing.ms_per_image), timing.calls_per_run
    row.ratio = 1.0 if reference is None else timing.median / reference
    for key, value in counter.per_image(count).items():
        setattr(row, key, value)
    notes = list(case.notes)
    explanation = case.result() if case.result is not None else None
    if explanation is not None:
        row.reported_forward_passes = float(explanation.forward_passes)
        row.reported_backward_passes = float(explanation.backward_passes)
        counted = (
            row.forward_passes + row.forward_tail_passes,
            row.backward_passes + row.backward_tail_passes,
        )
        if not all(
            math.isclose(a, b)
            for a, b in zip(
                counted, (row.reported_forward_passes, row.reported_backward_passes), strict=True
            )
        ):
            notes.append(
                f"Explanation reports {row.reported_forward_passes:g} fwd / "
                f"{row.reported_backward_passes:g} bwd per image"
            )
    if case.scale is not None:
        what, factor, fixed_call = case.scale
        fixed = 0.0
        if fixed_call is not None:
            fixed = time_call(
                fixed_call, count, repeats=min(3, repeats), warmup=lambda: None
            ).median
        row.scaled_ms_per_image = fixed + (row.ms_per_image - fixed) * factor
        kept = f"; {_number(fixed)} ms of segmentation kept fixed" if fixed_call else ""
        notes.append(
            f"scaled to {what}: {_number(row.scaled_ms_per_image)} ms/image (cost linear in the "
            f"passes, x{factor:.3g}{kept})"
        )
    if len(timing.ms_per_image) < repeats:
        notes.append(f"{len(timing.ms_per_image)} of {repeats} runs (--max-seconds)")
    if case.memory and not case.slow:
        row.peak_tensor_mb = peak_tensor_mb(case.call)
        row.reference_peak_tensor_mb = (
            row.peak_tensor_mb if method == "forward" else peak_tensor_mb(reference_call)
        )
        row.memory_ratio = row.peak_tensor_mb / row.reference_peak_tensor_mb
    row.note = "; ".join(notes)
    row.peak_rss_mb = _peak_rss_mb()
    row.seconds = time.perf_counter() - started
    return row


# --------------------------------------------------------------------------------------------
# The suite (the parent process)
# --------------------------------------------------------------------------------------------


def _child_command(model: str, method: str, args: argparse.Namespace, out: Path) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--single",
        model,
        method,
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--json",
        str(out),
    ]
    if args.max_seconds is not None:
        command += ["--max-seconds", str(args.max_seconds)]
    if args.quick:
        command.append("--quick")
    return command


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[variable] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env.setdefault("WANDB_MODE", "offline")
    return env


def run_child(model: str, method: str, args: argparse.Namespace) -> Row:
    """Measure one pair in a fresh subprocess and return its row (an error row on failure)."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "row.json"
        command = _child_command(model, method, args, out)
        try:
            process = subprocess.run(
                command,
                env=_child_env(args.threads),
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Row(model, method, status="error", note=f"timed out after {args.timeout} s")
        if process.returncode == 0 and out.exists():
            return Row(**json.loads(out.read_text())["rows"][0])
    if process.returncode < 0:
        reason = f"killed by signal {-process.returncode}"
        if -process.returncode == 9:
            reason += " (out of memory?)"
    else:
        lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {process.returncode}"
    return Row(model, method, status="error", note=reason)


def _progress(index: int, total: int, row: Row, seconds: float) -> None:
    if row.status == "ok":
        result = f"{_number(row.ms_per_image)} ms/image, x{_number(row.ratio)}"
    else:
        result = f"{row.status}: {row.note}"
    print(
        f"[{index}/{total}] {row.model} {row.method}: {result} ({seconds:.0f} s)", file=sys.stderr
    )


def write_json(path: Path, machine: dict[str, Any], rows: Sequence[Row], settings: dict) -> None:
    payload = {
        "machine": machine,
        "settings": settings,
        "rows": [dataclasses.asdict(row) for row in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help=f"methods or groups ({', '.join(GROUPS)}); methods: {', '.join(METHODS)}",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="on the 224 px models: fewer masks/samples/patches for the slow methods; skip "
        "Score-CAM",
    )
    parser.add_argument("--json", type=Path, help="write the rows and machine info here")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop repeating a measurement once its timed runs took this long (0: never; "
        "default 120)",
    )
    parser.add_argument(
        "--timeout", type=float, help="kill a measurement's subprocess after this many seconds"
    )
    parser.add_argument(
        "--single",
        nargs=2,
        metavar=("MODEL", "METHOD"),
        help="measure one pair in this process (what the suite runs in each subprocess)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch-size, --repeats and --threads must be >= 1")
    try:
        args.methods = expand_methods(args.methods)
        if args.single:
            expand_methods([args.single[1]])
    except ValueError as error:
        parser.error(str(error))
    if args.single and args.single[0] not in MODELS:
        parser.error(f"unknown model {args.single[0]!r}; choose from {', '.join(MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "quick": args.quick,
        "max_seconds": args.max_seconds,
    }
    if args.single:
        model, method = args.single
        reason = skip_reason(model, method, args.quick)
        if reason is not None:
            row = Row(model, method, status="skipped", note=reason)
        else:
            row = measure(
                model,
                method,
                batch_size=args.batch_size,
                repeats=args.repeats,
                threads=args.threads,
                quick=args.quick,
                max_seconds=args.max_seconds or None,
            )
        if args.json:
            write_json(args.json, machine_info(args.threads), [row], settings)
        else:
            print(markdown_table([row]))
        return 0

    machine = machine_info(args.threads)
    pairs = [(model, method) for model in args.models for method in args.methods]
    rows: list[Row] = []
    for index, (model, method) in enumerate(pairs, 1):
        start = time.perf_counter()
        reason = skip_reason(model, method, args.quick)
        if reason is not None:
            row = Row(model, method, status="skipped", note=reason)
        else:
            row = run_child(model, method, args)
        rows.append(row)
        _progress(index, len(pairs), row, time.perf_counter() - start)
        if args.json:  # keep what is done if a long suite is interrupted
            write_json(args.json, machine, rows, settings)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    load = ", ".join(f"{value:.2f}" for value in machine["load_average"] or [])
    print(
        f"CPU: {machine['cpu_model']} ({machine['usable_cpus']} usable); {args.threads} threads; "
        f"torch {machine['torch']}; batch {args.batch_size}; median of {args.repeats} runs"
        + ("; --quick" if args.quick else "")
        + (f"; load average at start {load}" if load else "")
    )
    print()
    print(markdown_table(rows))
    if args.json:
        write_json(args.json, machine, rows, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
