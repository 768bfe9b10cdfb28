"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

An explanation that describes the model must change when the model's weights are destroyed.
The layers of a **deep copy** of the classifier are re-initialised

- *cascading*: from the top (the layer that runs last) down, more and more layers at each step;
- *independent*: one layer at a time, the others keeping their trained weights;

and, per method and step, the Spearman rank correlation between each image's map of the trained
model and of the randomised one is averaged over the images. The explained class is the one the
trained model predicts, for both. The original backbone is never modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers import Explainer
from lcam.metrics.common import in_chunks, predict_in_chunks

__all__ = [
    "average_ranks",
    "model_randomisation",
    "randomisable_layers",
    "reinitialise",
    "spearman",
]

ExplainerLike = Explainer | Callable[[FrozenBackbone], Explainer]
"""An explainer (re-bound to the randomised copy by a deep copy) or a factory ``backbone ->
explainer``."""

_DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0..N-1`` of each row of ``(B, N)`` values, ties sharing their average rank.

    Fully batched: one sort, then the first and last sorted position of every run of equal
    values (via ``scatter_reduce``) gives the run's average rank.
    """
    batch, count = values.shape
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    run = new_run.long().cumsum(dim=1) - 1  # (B, N) run id within the row
    run = run + torch.arange(batch, device=values.device)[:, None] * count  # unique per row
    positions = torch.arange(count, device=values.device, dtype=torch.float64).expand(batch, -1)
    first = torch.full((batch * count,), float(count), dtype=torch.float64, device=values.device)
    last = torch.full((batch * count,), -1.0, dtype=torch.float64, device=values.device)
    first = first.scatter_reduce(0, run.flatten(), positions.flatten(), "amin")
    last = last.scatter_reduce(0, run.flatten(), positions.flatten(), "amax")
    sorted_ranks = ((first + last) / 2)[run]  # (B, N) average rank of each sorted position
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps, ``(B,)`` in [-1, 1].

    The Pearson correlation of the average ranks (:func:`average_ranks`) of the flattened
    ``(B, ...)`` maps. A constant map has no ranking: its correlation is defined as 0.
    """
    if first.shape != second.shape:
        raise ValueError(f"shapes differ: {tuple(first.shape)} and {tuple(second.shape)}")
    a = average_ranks(first.flatten(1).double())
    b = average_ranks(second.flatten(1).double())
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return ((a * b).sum(dim=1) / denominator).float()


def randomisable_layers(
    backbone: FrozenBackbone, types: tuple[type[nn.Module], ...] = _DEFAULT_TYPES
) -> list[str]:
    """Names of the modules of ``types`` (default: convolutions and linear layers) of the
    backbone's network, in the order they run in a forward pass (top layer last).

    Modules that do not run are left out; a module that runs several times counts at its first
    call.
    """
    candidates = {
        module: name
        for name, module in backbone.model.named_modules()
        if name and isinstance(module, types) and any(True for _ in module.parameters(False))
    }
    order: list[str] = []

    def record(module: nn.Module, _inputs: Any, _output: Any) -> None:
        name = candidates[module]
        if name not in order:
            order.append(name)

    handles = [module.register_forward_hook(record) for module in candidates]
    try:
        size = backbone.input_size
        generator = torch.Generator().manual_seed(0)  # the global RNG stays untouched
        example = torch.rand(1, 3, size, size, generator=generator).to(backbone.mean.device)
        with torch.no_grad():
            backbone(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


@torch.no_grad()
def reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw the parameters of one layer (in place) from ``generator``.

    Weights of two or more dimensions: PyTorch's default initialisation of convolutions and
    linear layers, ``kaiming_uniform_(a=sqrt(5))``; a bias next to such a weight:
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Other (1-D) parameters, e.g. of a normalisation
    layer chosen explicitly: normal with the parameter's own mean and standard deviation (unit
    standard deviation when it is constant).
    """
    weight = getattr(module, "weight", None)
    fan_in = None
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        fan_in = weight[0].numel()
    for name, parameter in module.named_parameters(recurse=False):
        drawn = torch.empty(parameter.shape, dtype=torch.float32)
        if parameter.dim() >= 2:
            nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)
        elif name == "bias" and fan_in:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(drawn, -bound, bound, generator=generator)
        else:
            mean = float(parameter.float().mean())
            std = float(parameter.float().std()) if parameter.numel() > 1 else 0.0
            nn.init.normal_(drawn, mean, std if std > 0 else 1.0, generator=generator)
        parameter.copy_(drawn.to(parameter))


def _bind(method: ExplainerLike, original: FrozenBackbone, randomised: FrozenBackbone) -> Explainer:
    """The method's explainer on the randomised copy of the backbone.

    An explainer is deep-copied with every reference to ``original`` replaced by ``randomised``
    (its options, head weights and any other state are copied as they are); a factory is called
    with the randomised backbone.
    """
    if isinstance(method, Explainer):
        return copy.deepcopy(method, memo={id(original): randomised})
    if callable(method):
        return method(randomised)
    raise TypeError(f"expected an Explainer or a factory backbone -> Explainer, got {method}")


def _maps(explainer: Explainer, images: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """``(N, H, W)`` maps of ``targets`` ``(N,)``, explained ``batch_size`` images at a time."""
    with torch.no_grad():
        return in_chunks(
            lambda index: explainer.explain(images[index], targets=targets[index]).maps.float(),
            len(images),
            batch_size,
            images.device,
        )


def model_randomisation(
    backbone: FrozenBackbone,
    methods: Mapping[str, ExplainerLike],
    images: Tensor,
    *,
    modes: Sequence[str] = ("cascading", "independent"),
    layers: Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run the model-randomisation sanity check.

    Args:
        backbone: the trained frozen classifier; it is never modified (a deep copy is
            randomised).
        methods: ``{name: explainer or factory}``. An explainer bound to ``backbone`` is
            deep-copied onto the randomised copy (a learned head keeps its trained weights, only
            the backbone is randomised); a factory ``backbone -> explainer`` is called instead.
        images: ``(N, 3, H, W)`` in [0, 1].
        modes: ``"cascading"`` and/or ``"independent"``.
        layers: module names of ``backbone.model`` to randomise, in forward order (the top layer
            last). Default: every convolution and linear layer, see
            :func:`randomisable_layers`.
        batch_size: images per explanation call.
        seed: seed of the re-initialisation (step ``s`` of a mode draws from ``seed + s``).

    Returns:
        Rows ``{"mode", "step", "layer", "method", "spearman", "spearman_std", "images"}``, one
        per mode, step and method. Step ``s`` (1-based) randomised, cascading: the ``s`` top
        layers (``layer`` names the lowest of them); independent: only ``layer``, the ``s``-th
        from the top.
    """
    unknown = sorted(set(modes) - {"cascading", "independent"})
    if unknown:
        raise ValueError(f"unknown modes {unknown}; use 'cascading' and/or 'independent'")
    if not methods:
        raise ValueError("methods must name at least one explainer")
    # Callers may be in inference mode (Lightning's test loop): the copied weights and the
    # inputs must be ordinary tensors for the gradient explainers.
    with torch.inference_mode(False):
        return _model_randomisation(
            backbone, methods, images.clone(), modes, layers, batch_size, seed
        )


def _model_randomisation(
    backbone: FrozenBackbone,
    methods: Mapping[str, ExplainerLike],
    images: Tensor,
    modes: Sequence[str],
    layers: Sequence[str] | None,
    batch_size: int,
    seed: int,
) -> list[dict[str, Any]]:
    names = list(layers) if layers is not None else randomisable_layers(backbone)
    available = dict(backbone.model.named_modules())
    missing = [name for name in names if name not in available or not name]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the backbone's network")
    device = backbone.mean.device
    images = images.to(device)
    targets = predict_in_chunks(
        backbone, images.__getitem__, len(images), batch_size, lambda z, _: z.argmax(1), device
    )
    originals: dict[str, Tensor] = {}
    for name, method in methods.items():
        explainer = method if isinstance(method, Explainer) else method(backbone)
        originals[name] = _maps(explainer, images, targets, batch_size)

    top_down = names[::-1]

    rows: list[dict[str, Any]] = []
    for mode in modes:
        randomised = copy.deepcopy(backbone)  # shares nothing with the original
        explainers = {name: _bind(method, backbone, randomised) for name, method in methods.items()}
        modules = dict(randomised.model.named_modules())
        for step, layer in enumerate(top_down, start=1):
            module = modules[layer]
            saved = (
                {k: p.detach().clone() for k, p in module.named_parameters(recurse=False)}
                if mode == "independent"
                else {}
            )
            reinitialise(module, torch.Generator().manual_seed(seed + step))
            for name, explainer in explainers.items():
                maps = _maps(explainer, images, targets, batch_size)
                correlation = spearman(originals[name], maps)
                rows.append(
                    {
                        "mode": mode,
                        "step": step,
                        "layer": layer,
                        "method": name,
                        "spearman": float(correlation.mean()),
                        "spearman_std": float(correlation.std()) if len(correlation) > 1 else 0.0,
                        "images": len(images),
                    }
                )
            if mode == "independent":
                with torch.no_grad():
                    for key, parameter in module.named_parameters(recurse=False):
                        parameter.copy_(saved[key])
        del randomised, explainers
    return rows
