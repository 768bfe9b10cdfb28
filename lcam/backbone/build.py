"""Building a classifier from a name, a class path or a weights file.

Weights files are data: state_dicts load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import urllib.error
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WeightsUnavailableError",
    "build_model",
    "load_state_dict_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class WeightsUnavailableError(RuntimeError):
    """Raised when requested backbone weights cannot be obtained (e.g. no network)."""


def _import_class(path: str) -> type[nn.Module]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import model class {path!r}: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path!r} is not an nn.Module class")
    return cls


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _is_weights_file(weights: str) -> bool:
    return Path(weights).suffix in _STATE_DICT_SUFFIXES or Path(weights).exists()


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a state_dict saved with ``torch.save`` without executing any code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or file corrupt: say which file and why
        raise ValueError(
            f"{str(path)!r} is not a loadable state_dict (loaded with weights_only=True): {error}"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state_dict (a dict of tensors)")
    return state


def _torchvision_weights(name: str, weights: str) -> Any:
    try:
        weights_enum = torchvision.models.get_model_weights(name)
    except ValueError as error:
        raise ValueError(f"torchvision has no weights for model {name!r}") from error
    member = weights.rpartition(".")[2]
    try:
        return weights_enum[member]
    except KeyError:
        known = ", ".join(["DEFAULT", *weights_enum.__members__])
        raise ValueError(
            f"unknown weights {weights!r} for {name!r}: expected a local state_dict file or one "
            f"of {known}"
        ) from None


def build_model(
    model: str, *, num_classes: int | None = None, weights: str | None = None
) -> tuple[nn.Module, str | None, list[str] | None]:
    """Instantiate a classifier by torchvision name or ``package.module.Class`` path.

    Args:
        model: a torchvision classification model name (``"resnet50"``) or a class path.
        num_classes: number of outputs; ``None`` keeps the model's default.
        weights: ``None`` (random init), a torchvision weights name (``"IMAGENET1K_V1"``,
            ``"DEFAULT"``, ``"ResNet50_Weights.IMAGENET1K_V1"``) or a local state_dict file.

    Returns:
        The model, an identity string for the weights (``None`` for random init) and the class
        names the weights carry (``None`` when unknown).
    """
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    use_torchvision = "." not in model
    if use_torchvision and model not in torchvision.models.list_models():
        raise ValueError(
            f"unknown model {model!r}: not a torchvision model name and not a class path "
            "(package.module.Class)"
        )
    weights_file = weights is not None and _is_weights_file(weights)
    if weights is not None and not weights_file:
        if not use_torchvision:
            raise ValueError(
                f"weights {weights!r} must be a local state_dict file for model class {model!r}"
            )
        weights_entry = _torchvision_weights(model, weights)
        categories = weights_entry.meta.get("categories")
        if num_classes is not None and categories is not None and num_classes != len(categories):
            raise ValueError(
                f"weights {weights_entry} have {len(categories)} classes but num_classes="
                f"{num_classes}; train on top of them with their own classes or drop weights"
            )
        try:
            network = torchvision.models.get_model(model, weights=weights_entry)
        except (urllib.error.URLError, OSError) as error:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise WeightsUnavailableError(
                f"cannot download torchvision weights {weights_entry} for {model!r} ({error}). "
                f"The machine seems offline: fetch them once on a connected machine (torchvision "
                f"caches them in {cache}) or pass a local state_dict file as weights=PATH."
            ) from error
        return network, str(weights_entry), list(categories) if categories else None
    if use_torchvision:
        network = torchvision.models.get_model(model, **kwargs)
    else:
        network = _import_class(model)(**kwargs)
    if weights is None:
        return network, None, None
    path = Path(weights)
    state = load_state_dict_file(path)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"weights file {str(path)!r} does not fit model {model!r}: {error}"
        ) from error
    return network, f"file:{path.name}:sha256={_file_digest(path)}", None
