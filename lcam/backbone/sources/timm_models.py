"""timm classifiers: ``timm/<model name>`` with a local weights file or timm's pretrained tag.

timm models describe themselves well: ``feature_info`` names the stage outputs and their
channels, ``pretrained_cfg`` gives input size, mean and std, ``num_prefix_tokens`` counts the
class/distillation/register tokens of a transformer, and timm ships the ImageNet class names.
timm is imported only when one of its models is asked for (``pip install -e ".[timm]"``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from torch import nn

from lcam.backbone.sources.description import ModelDescription
from lcam.backbone.sources.weights import (
    WeightsUnavailableError,
    is_weights_file,
    load_weights_into,
)

__all__ = ["PREFIX", "build_timm", "describe_timm", "is_timm_model"]

PREFIX = "timm/"
PRETRAINED = "pretrained"


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            'timm models need the timm package: pip install -e ".[timm]" (or pip install timm)'
        ) from error
    return timm


def is_timm_model(network: nn.Module) -> bool:
    """Whether ``network`` is a timm model (checked without importing timm)."""
    return type(network).__module__.startswith("timm.")


def _class_names(network: nn.Module, config: dict[str, Any]) -> list[str] | None:
    """timm's bundled ImageNet class names when the classifier is the pretrained config's own."""
    num_classes = getattr(network, "num_classes", None)
    if not num_classes or num_classes != config.get("num_classes"):
        return None
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(config)  # from the config's class count, read no file
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(index) for index in range(num_classes)]


def _input_size(network: nn.Module, config: dict[str, Any]) -> tuple[int, int] | None:
    # A patch embedding knows the size the model was built for (``img_size=`` overrides the
    # pretrained config, which keeps saying 224).
    built = getattr(getattr(network, "patch_embed", None), "img_size", None)
    if built is not None:
        return (int(built[0]), int(built[1]))
    size = config.get("input_size")
    return (int(size[-2]), int(size[-1])) if size else None


def _fixed_input_size(network: nn.Module, config: dict[str, Any]) -> bool:
    strict = getattr(getattr(network, "patch_embed", None), "strict_img_size", None)
    if strict is not None:
        return bool(strict) and not getattr(network, "dynamic_img_size", False)
    return bool(config.get("fixed_input_size", False))


def describe_timm(network: nn.Module) -> ModelDescription:
    """What a timm model instance says about itself (``feature_info``, ``pretrained_cfg``)."""
    config = dict(getattr(network, "pretrained_cfg", None) or {})
    stages = [dict(info) for info in getattr(network, "feature_info", None) or []]
    modules = dict(network.named_modules())
    stages = [info for info in stages if info.get("module") in modules]
    mean, std = config.get("mean"), config.get("std")
    prefix = getattr(network, "num_prefix_tokens", None)
    return ModelDescription(
        network=network,
        input_size=_input_size(network, config),
        mean=tuple(float(v) for v in mean) if mean else None,
        std=tuple(float(v) for v in std) if std else None,
        class_names=_class_names(network, config),
        stage_layers=[info["module"] for info in stages] or None,
        stage_channels=[int(info["num_chs"]) for info in stages] or None,
        num_prefix_tokens=int(prefix) if prefix is not None else None,
        fixed_input_size=_fixed_input_size(network, config),
    )


def _pretrained(name: str, weights: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    """timm's own pretrained weights (downloaded by timm; a clear error offline)."""
    timm = _timm()
    arch, _, tag = name.partition(".")
    full = name if weights == PRETRAINED else f"{arch}.{weights}"
    available = timm.list_pretrained(f"{arch}.*")
    if weights == PRETRAINED and not tag:
        if not available:
            raise ValueError(f"timm has no pretrained weights for {arch!r}")
        full = available[0]  # timm's default tag comes first
    elif full not in available:
        raise ValueError(
            f"unknown weights {weights!r} for timm/{name}: expected a local .safetensors/.pth/"
            f".bin file, {PRETRAINED!r} or a tag of {', '.join(available) or '(none)'}"
        )
    try:
        return timm.create_model(full, pretrained=True, **kwargs), f"timm:{full}"
    except Exception as error:  # hub/HTTP/file errors differ by version; all mean "not here"
        raise WeightsUnavailableError(
            f"cannot download timm weights {full!r} ({type(error).__name__}: {error}). The "
            "machine seems offline: fetch them once on a connected machine (they are cached by "
            "huggingface_hub) or pass a local .safetensors/.pth state_dict file as weights=PATH."
        ) from error


def build_timm(
    model: str, *, num_classes: int | None = None, weights: str | None = None
) -> tuple[ModelDescription, str | None]:
    """``timm/<model name>`` built by timm (random init, weights file or pretrained tag).

    Args:
        model: ``"timm/resnet50"``, ``"timm/vit_small_patch16_224.augreg_in21k_ft_in1k"``, ...
        num_classes: classifier outputs; ``None`` keeps the model's default.
        weights: ``None`` (random init), a local ``.safetensors``/``.pth``/``.bin`` state_dict,
            ``"pretrained"`` (timm's default tag, or the tag in the name) or a tag name.

    Returns:
        The description and the weights' identity string (``None`` for random init).
    """
    timm = _timm()
    name = model[len(PREFIX) :] if model.startswith(PREFIX) else model
    if not timm.is_model(name):
        raise ValueError(f"unknown model {model!r}: timm has no model {name!r}")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    weights_id = None
    if weights is not None and not is_weights_file(weights):
        network, weights_id = _pretrained(name, weights, kwargs)
    else:
        network = timm.create_model(name, pretrained=False, **kwargs)
        if weights is not None:
            weights_id = load_weights_into(network, weights, model)
    return describe_timm(network), weights_id
