"""Hugging Face ``transformers`` image classifiers: instances and local ``save_pretrained`` folders.

A model is wrapped in :class:`HFImageClassifier` so that it maps ``pixel_values`` to a ``(B, K)``
logits tensor; the wrapper adopts the model's submodules, so module names (``vit.layers.11``,
``convnext.encoder.stages.3``) and state_dict keys are the model's own. Class names come from
``config.id2label``, input size from the config and the folder's ``preprocessor_config.json``
(read as JSON, nothing downloaded), stage layers from the architecture. Remote code is never run:
``trust_remote_code`` stays ``False`` and a config that asks for custom code is refused.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lcam.backbone.sources.description import ModelDescription
from lcam.backbone.sources.weights import file_digest, load_weights_into

__all__ = ["PREFIX", "HFImageClassifier", "build_hf", "describe_hf", "is_hf_model"]

PREFIX = "hf/"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_hf_model(network: nn.Module) -> bool:
    """Whether ``network`` is a ``transformers`` model or wraps one (never imports transformers)."""
    if isinstance(network, HFImageClassifier):
        return True
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(network, transformers.PreTrainedModel)


class HFImageClassifier(nn.Module):
    """``(B, 3, H, W)`` pixel values -> ``(B, K)`` logits of a ``transformers`` classifier.

    The model's children become the wrapper's children (same module objects), so target layers
    are named as in the model and its state_dict loads into the wrapper unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        direct = [*model._parameters, *model._buffers]
        if direct:  # would not follow .to()/.half() through the wrapper
            raise ValueError(
                f"{type(model).__name__} holds tensors {direct} outside its submodules; wrap it "
                "in a module whose forward returns the logits tensor instead"
            )
        for name, child in model.named_children():
            self.add_module(name, child)
        self.__dict__["hf_model"] = model  # not a child: its modules are registered once
        self.config = model.config

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised pixel values -> ``(B, K)`` logits."""
        # The root's forward is called directly: the root is not a registered submodule.
        output = self.hf_model.forward(pixel_values=pixel_values)
        logits = getattr(output, "logits", None)
        if not isinstance(logits, Tensor):
            raise ValueError(
                f"{type(self.hf_model).__name__} returns {type(output).__name__} without a "
                "logits tensor: load it with AutoModelForImageClassification"
            )
        return logits

    def train(self, mode: bool = True) -> HFImageClassifier:
        """Set the mode of the wrapper, its children and the wrapped root module."""
        super().train(mode)
        self.hf_model.training = mode
        return self


def _token_blocks(network: nn.Module) -> list[str] | None:
    """The encoder blocks of a ViT-like model: the children of its ``layers``/``layer`` list."""
    for name, module in network.named_modules():
        if isinstance(module, nn.ModuleList) and re.search(r"(^|\.)(layers?)$", name):
            return [f"{name}.{child}" for child, _ in module.named_children()]
    return None


def _prefix_tokens(network: nn.Module) -> int:
    embeddings = next(
        (module for name, module in network.named_modules() if name.endswith("embeddings")),
        None,
    )
    count = sum(
        isinstance(getattr(embeddings, attribute, None), nn.Parameter)
        for attribute in ("cls_token", "distillation_token")
    )
    registers = getattr(embeddings, "register_tokens", None)
    return count + (int(registers.shape[1]) if isinstance(registers, Tensor) else 0)


def _stages(network: nn.Module, config: Any) -> tuple[list[str] | None, list[int] | None, int]:
    """Stage layers, their channels and the prefix token count by architecture."""
    names = [name for name, _ in network.named_modules()]
    if getattr(config, "model_type", "") in ("swin", "swinv2", "donut-swin"):
        # A Swin stage returns a tuple; its tensor outputs are its patch merging (the next,
        # coarser grid) and, after the last stage, the final norm: (B, N, C) tokens, no prefix.
        base = config.model_type.replace("-", "_").split("_")[-1]
        depth = len(config.depths)
        layers = [f"{base}.encoder.layers.{i}.downsample" for i in range(depth - 1)]
        layers.append(f"{base}.layernorm")
        channels = [config.embed_dim * 2 ** (i + 1) for i in range(depth - 1)]
        channels.append(config.embed_dim * 2 ** (depth - 1))
        if all(layer in names for layer in layers):
            return layers, channels, 0
        return None, None, 0
    stages = [name for name in names if re.search(r"\.encoder\.stages\.\d+$", name)]
    hidden_sizes = getattr(config, "hidden_sizes", None)
    if stages:  # ConvNeXt, ResNet, RegNet, ...: (B, C, h, w) maps
        channels = list(hidden_sizes) if hidden_sizes and len(hidden_sizes) == len(stages) else None
        return stages, channels, 0
    blocks = _token_blocks(network)
    if blocks and hasattr(config, "hidden_size"):
        return blocks, [int(config.hidden_size)] * len(blocks), _prefix_tokens(network)
    return None, None, 0


def _class_names(config: Any) -> list[str] | None:
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels.get(index, labels.get(str(index), ""))) for index in range(len(labels))]
    if not names or names == [f"LABEL_{index}" for index in range(len(names))]:
        return None  # transformers' placeholders, not names
    return names


def _pair(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    return None


def describe_hf(network: nn.Module) -> ModelDescription:
    """Describe a ``transformers`` classifier (wrapping it in :class:`HFImageClassifier`)."""
    wrapper = network if isinstance(network, HFImageClassifier) else HFImageClassifier(network)
    config = wrapper.config
    layers, channels, prefix = _stages(wrapper, config)
    embeddings = [module for name, module in wrapper.named_modules() if name.endswith("embeddings")]
    positions = getattr(embeddings[0], "position_embeddings", None) if embeddings else None
    return ModelDescription(
        network=wrapper,
        input_size=_pair(getattr(config, "image_size", None)),
        class_names=_class_names(config),
        stage_layers=layers,
        stage_channels=channels,
        num_prefix_tokens=prefix if layers else None,
        # Absolute position embeddings fix the grid (the model raises at another size).
        fixed_input_size=isinstance(positions, nn.Parameter),
    )


def _read_preprocessor(folder: Path, description: ModelDescription) -> None:
    """Mean, std and input size from ``preprocessor_config.json`` when the folder has one."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("image_mean") and config.get("image_std"):
        description.mean = tuple(float(v) for v in config["image_mean"])
        description.std = tuple(float(v) for v in config["image_std"])
    size = _pair(config.get("crop_size")) if config.get("do_center_crop") else None
    size = size or _pair(config.get("size"))
    if size is not None and not description.fixed_input_size:
        description.input_size = size


def build_hf(
    model: str, *, num_classes: int | None = None, weights: str | None = None
) -> tuple[ModelDescription, str]:
    """``hf/<folder>``: a classifier from a local ``save_pretrained`` folder (no download).

    Args:
        model: ``"hf/path/to/folder"``; the folder holds ``config.json`` and the weights.
        num_classes: a different class count gives a new, randomly initialised classifier.
        weights: optionally a state_dict file loaded over the folder's weights.

    Returns:
        The description and the weights' identity string.
    """
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            'Hugging Face models need transformers: pip install -e ".[hf]"'
        ) from error
    folder = Path(model[len(PREFIX) :] if model.startswith(PREFIX) else model)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{model!r}: {str(folder)!r} is not a local save_pretrained folder (no config.json); "
            "lcam loads Hugging Face models from local folders only, never from the hub"
        )
    config = json.loads((folder / "config.json").read_text())
    if config.get("auto_map"):
        raise ValueError(
            f"{model!r} asks for custom model code (auto_map in config.json); lcam never runs "
            "remote code: build the model yourself and pass the module instance"
        )
    files = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not files:
        raise ValueError(f"{model!r} has no weights ({' or '.join(_WEIGHT_FILES)})")
    kwargs: dict[str, Any] = {}
    if num_classes is not None and num_classes != len(config.get("id2label") or {}):
        kwargs = {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    network = transformers.AutoModelForImageClassification.from_pretrained(
        str(folder), local_files_only=True, trust_remote_code=False, **kwargs
    )
    description = describe_hf(network.eval())
    _read_preprocessor(folder, description)
    weights_id = f"hf:{folder.name}:sha256={file_digest(files[0])}"
    if weights is not None:
        weights_id = load_weights_into(description.network, weights, model)
    return description, weights_id
