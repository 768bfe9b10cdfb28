"""Finding target layers: the default layer of a model and the layers multi-layer heads read.

The rule, for every family: the default target layer is the output of the last stage, and the
default multi-layer (TAME) layers are the last three stages, where

- a model that describes its stages (timm ``feature_info``, Hugging Face stages: the
  ``stage_layers`` of its description) is taken at its word;
- otherwise one forward with hooks on every module call surveys the outputs that hold a grid
  (``(B, C, h, w)``, ``(B, h, w, C)`` or tokens, see :mod:`.layout`), leaving out pooled maps,
  1x1 maps, LayerNorm outputs and anything inside an attention module. The default layer is the
  one that completes last (for VGG the ReLU after conv5_3, ``features.29``; for ResNet
  ``layer4``); the stages are the last module at each of the last resolutions (ResNet
  ``layer2/3/4``), or, for transformers whose blocks all share one resolution, the last blocks
  of the block container.

VGG keeps the TAME paper's layers (its last three max-pools), torchvision ``VisionTransformer``
its last encoder layers. Modules called more than once are named by call site (``"_swish#1"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from lcam.backbone.layout import Layout, infer_layout
from lcam.backbone.targets import run_hooked, site_name

__all__ = [
    "LayerSurvey",
    "default_layers",
    "detect_target_layer",
    "survey_layers",
    "vit_encoder_layers",
]

_POOLING_TYPES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)


_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


@dataclass(frozen=True)
class LayerSurvey:
    """One module call whose output holds a grid: its target name, layout and grid size;
    ``channels`` its channel count and ``class_scores`` whether its global mean or max is the
    logits (a class-score map, SqueezeNet's last convolution)."""

    name: str
    layout: Layout
    size: tuple[int, int]
    channels: int = 0
    class_scores: bool = False


def _is_pooling(module: nn.Module) -> bool:
    return (
        isinstance(module, _POOLING_TYPES)
        or "pool" in type(module).__name__.lower()
        and (
            "pooling"
            not in type(module).__name__.lower()  # PoolFormer's token mixer is a block part
        )
    )


def _attention_names(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if name
        and ("attention" in type(module).__name__.lower() or name.rsplit(".", 1)[-1] == "attn")
    ]


def _record_calls(
    model: nn.Module, example: Tensor
) -> tuple[list[tuple[str, int, Tensor, nn.Module]], dict[str, int], Any]:
    """One forward of ``example`` with hooks on every module: the tensor outputs as
    ``(name, call index, output, producing module)`` in completion order, the call counts
    and the model's output."""
    names = {module: name for name, module in model.named_modules() if name}
    producer: dict[int, nn.Module] = {}
    records: list[tuple[str, int, Tensor, nn.Module]] = []
    calls: dict[str, int] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = names[module]
        index = calls.get(name, 0)
        calls[name] = index + 1
        if isinstance(output, Tensor):
            producer.setdefault(id(output), module)  # a container returns its child's tensor
            records.append((name, index, output, producer[id(output)]))

    handles = [module.register_forward_hook(record) for module in names]
    return records, calls, run_hooked(model, example, handles)


def _pools_to_logits(output: Tensor, layout: Layout, logits: Any) -> bool:
    """Whether a map's global mean or max over its grid is the ``(1, K)`` logits."""
    if layout.kind == "tokens" or not isinstance(logits, Tensor) or logits.dim() != 2:
        return False
    grid = output if layout.kind == "nchw" else output.permute(0, 3, 1, 2)
    if grid.shape[:2] != logits.shape:
        return False
    pooled = (grid.mean(dim=(2, 3)), grid.amax(dim=(2, 3)))
    return any(torch.allclose(p, logits, rtol=1e-4, atol=1e-5) for p in pooled)


def survey_layers(
    model: nn.Module,
    example: Tensor,
    *,
    others: Sequence[Tensor] = (),
    **token_hints: Any,
) -> list[LayerSurvey]:
    """Every module call of one forward of normalised ``example`` ``(1, 3, H, W)`` whose output
    holds a grid larger than 1x1, in the order the calls complete (see the module docstring).

    Args:
        others: more normalised inputs; a call that does not also run on each of them (a
            module one route of a data-dependent model takes) is left out.
        token_hints: ``num_prefix_tokens``, ``patch_size``, ``declared_prefix_tokens``,
            ``patch_grid`` (see :func:`~lcam.backbone.layout.infer_layout`).
    """
    attention = _attention_names(model)
    records, calls, logits = _record_calls(model, example)
    everywhere = None
    for other in others:
        _, other_calls, _ = _record_calls(model, other)
        ran = {(n, i) for n, c in other_calls.items() for i in range(c) if c == calls.get(n)}
        everywhere = ran if everywhere is None else everywhere & ran
    image = (int(example.shape[-2]), int(example.shape[-1]))
    found = []
    for name, index, output, made_by in records:
        if _is_pooling(made_by) or isinstance(made_by, nn.LayerNorm):
            continue
        if any(name == a or name.startswith(a + ".") for a in attention):
            continue
        if everywhere is not None and (name, index) not in everywhere:
            continue
        if isinstance(model.get_submodule(name), _PASS_THROUGH):
            continue  # another module's output, unchanged in eval mode
        try:
            layout = infer_layout(output.shape, image, **token_hints)
        except ValueError:
            if output.dim() != 4 or output.shape[-1] < 2 or output.shape[-2] < 2:
                continue
            layout = Layout("nchw")  # both map readings fit: settled later for the chosen layer
        size = layout.grid if layout.kind == "tokens" else _map_size(output, layout)
        if size is not None and size[0] > 1 and size[1] > 1:
            channels = int(output.shape[1 if layout.kind == "nchw" else -1])
            scores = _pools_to_logits(output, layout, logits)
            name = site_name(name, index, calls[name])
            found.append(LayerSurvey(name, layout, size, channels, scores))
    return _without_class_scores(found)


def _without_class_scores(found: list[LayerSurvey]) -> list[LayerSurvey]:
    """``found`` without a trailing class-score map and the layers of the same class count
    that lead to it (SqueezeNet's final 1x1 convolution and its ReLU): they are scores of the
    ``K`` classes, not features."""
    marked = [i for i, layer in enumerate(found) if layer.class_scores]
    if not marked:
        return found
    start = marked[-1]
    while start > 0 and found[start - 1].channels == found[marked[-1]].channels:
        start -= 1
    return found[:start] if start > 0 else found


def _map_size(output: Tensor, layout: Layout) -> tuple[int, int]:
    dims = (2, 3) if layout.kind == "nchw" else (1, 2)
    return int(output.shape[dims[0]]), int(output.shape[dims[1]])


def detect_target_layer(model: nn.Module, example: Tensor, **hints: int | None) -> str:
    """Name of the last module (call) whose output is a grid not produced by pooling.

    For VGG this is the ReLU after conv5_3 (``features.29`` in VGG-16), for ResNet ``layer4``.
    ``hints``: ``num_prefix_tokens``, ``patch_size`` (see :func:`survey_layers`).
    """
    return default_layers(model, example, 1, **hints)[0]


def vit_encoder_layers(model: nn.Module, count: int) -> list[str]:
    """Names of the last ``count`` encoder layers of a torchvision ``VisionTransformer``."""
    names = [name for name, _ in model.encoder.layers.named_children()]
    return [f"encoder.layers.{name}" for name in names[-count:]]


def _paper_layers(model: nn.Module, count: int) -> list[str] | None:
    """TAME's paper layers: VGG's last max-pools, ResNet's last ``layerN``; ViT's last layers."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return vit_encoder_layers(model, count)
    if count == 1:
        return None
    features = getattr(model, "features", None)
    if isinstance(model, torchvision.models.VGG) and isinstance(features, nn.Sequential):
        pools = [f"features.{i}" for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) >= count:
            return pools[-count:]
    stages = ["layer1", "layer2", "layer3", "layer4"]
    if count <= 4 and all(hasattr(model, name) for name in stages):
        return stages[-count:]
    return None


def _last_blocks(model: nn.Module, name: str, count: int) -> list[str] | None:
    """The last ``count`` blocks of the container ``name`` is (or is the last child of)."""
    modules = dict(model.named_modules())
    module_name = name.partition("#")[0]
    containers = (nn.Sequential, nn.ModuleList)
    if isinstance(modules.get(module_name), containers) and len(modules[module_name]) >= count:
        children = [f"{module_name}.{child}" for child, _ in modules[module_name].named_children()]
        return children[-count:]
    parent, _, child = module_name.rpartition(".")
    if parent and isinstance(modules.get(parent), containers):
        children = [f"{parent}.{c}" for c, _ in modules[parent].named_children()]
        if child in [c.rpartition(".")[2] for c in children]:
            upto = children[: [c.rpartition(".")[2] for c in children].index(child) + 1]
            if len(upto) >= count:
                return upto[-count:]
    return None


def _is_within(name: str, ancestor: str) -> bool:
    return name.startswith(ancestor + ".")


def _last_per_resolution(
    model: nn.Module, found: list[LayerSurvey], count: int
) -> list[str] | None:
    """The last output at each of the last ``count`` resolutions, leaving out outputs inside a
    block (a module other than a plain container) that ends at another resolution (the
    expansion convolution of a downsampling block belongs to the next stage, not this one) and
    containers of a layer already chosen (their output is that of their last child)."""
    modules = dict(model.named_modules())
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    block_sizes = {
        layer.name.partition("#")[0]: layer.size
        for layer in found
        if not isinstance(modules.get(layer.name.partition("#")[0]), containers)
    }
    kept = [
        layer
        for layer in found
        if not any(
            _is_within(layer.name, block) and size != layer.size
            for block, size in block_sizes.items()
        )
    ]
    last_at: dict[tuple[int, int], int] = {}
    for position, layer in enumerate(kept):
        last_at[layer.size] = position
    if len(last_at) < count:
        return None
    chosen: list[str] = []
    for size in sorted(last_at, key=last_at.__getitem__)[-count:]:
        at_size = [layer.name for layer in kept if layer.size == size]
        outer = [n for n in at_size if not any(_is_within(c, n.partition("#")[0]) for c in chosen)]
        chosen.append(outer[-1])
    return chosen


def _tensor_outputs(model: nn.Module, example: Tensor, layers: Sequence[str]) -> bool:
    """Whether every module in ``layers`` returns a tensor (not a list or tuple)."""
    kinds: list[bool] = []
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, output: kinds.append(isinstance(output, Tensor))
        )
        for name in layers
    ]
    run_hooked(model, example, hooks)
    return all(kinds)


def default_layers(
    model: nn.Module,
    example: Tensor,
    count: int,
    *,
    stage_layers: Sequence[str] | None = None,
    others: Sequence[Tensor] = (),
    **token_hints: Any,
) -> list[str]:
    """The last ``count`` stage outputs of ``model``, shallow to deep (see the module docstring).

    Args:
        model: the network; ``example`` a normalised ``(1, 3, H, W)`` input it accepts.
        count: 1 for the default target layer, 3 for TAME.
        stage_layers: the model's own stage outputs, when it describes them; not used when
            a stage returns a list or tuple (HRNet's branches, PiT's ``(x, cls_tokens)``):
            the survey then finds the tensors (HRNet's own fusion layer).
        others: more inputs for the survey (see :func:`survey_layers`).
        token_hints: token hints for the survey (see :func:`survey_layers`).

    Raises:
        ValueError: when no rule applies, asking for ``target_layer`` explicitly.
    """
    if stage_layers is not None and len(stage_layers) >= count:
        if _tensor_outputs(model, example, stage_layers[-count:]):
            return list(stage_layers[-count:])
    paper = _paper_layers(model, count)
    if paper is not None:
        return paper
    found = survey_layers(model, example, others=others, **token_hints)
    if not found:
        raise ValueError(
            f"could not find a target layer of {type(model).__name__} automatically (no module "
            "output holds a spatial grid); pass target_layer= with a module name"
        )
    if count == 1:
        return [found[-1].name]
    chosen = _last_per_resolution(model, found, count)
    if chosen is not None:
        return chosen
    blocks = _last_blocks(model, found[-1].name, count)
    if blocks is not None:
        return blocks
    raise ValueError(
        f"no default layers for {count} stages of {type(model).__name__}: its grid outputs have "
        f"fewer resolutions and no block container; pass target_layer as a list of "
        "module names (e.g. three stages from fine to coarse)"
    )
