"""The frozen classifier wrapper: one pass gives target-layer features and logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torchvision
from torch import Tensor, nn

from lcam.backbone.build import IMAGENET_MEAN, IMAGENET_STD, build_model
from lcam.backbone.layers import detect_target_layer, vit_encoder_layers
from lcam.backbone.split import split_graph

__all__ = ["BackboneOutput", "FrozenBackbone"]


@dataclass
class BackboneOutput:
    """Everything one pass of the frozen network yields.

    Attributes:
        features: target-layer activations ``F``, shape ``(B, C, h, w)``.
        logits: class scores of the clean image, shape ``(B, K)``.
        skips: other body activations the tail reads (empty for VGG/ResNet at their default
            layers); pass them back to :meth:`FrozenBackbone.tail`.
        layers: activations of every target layer as ``(B, C_i, h_i, w_i)`` maps, in the order
            they were named (heads read these); token sequences of vision transformers appear
            here as grids (see :meth:`FrozenBackbone.grid`).
    """

    features: Tensor
    logits: Tensor
    skips: tuple[Tensor, ...] = ()
    layers: tuple[Tensor, ...] = ()


class FrozenBackbone(nn.Module):
    """A frozen classifier that yields target-layer features and logits in one pass.

    Images go in as ``(B, 3, H, W)`` in ``[0, 1]``; normalisation ``(x - mean) / std`` happens
    inside, so a mask multiplied into an image turns masked pixels black. All parameters are frozen
    and the wrapped network stays in eval mode (BatchNorm statistics, Dropout off) even when a
    trainer calls ``.train()``.

    Args:
        model: torchvision model name (``"vgg16"``), class path (``"pkg.module.Class"``) or module.
        num_classes: number of classes for a model built by name; ``None`` keeps its default.
        weights: ``None``, a torchvision weights name or a local state_dict file (see
            :func:`build_model`). Only for models given by name.
        target_layer: module name to split at, or a list of module names (multi-layer heads):
            the network is split after the one that runs last, and all of their outputs are
            returned as ``BackboneOutput.layers``. Default: the last spatial, non-pooling module
            (VGG: ReLU after conv5_3, ``features.29``; ResNet: ``layer4``).
            Vision transformers (torchvision ``VisionTransformer``) default to the last encoder
            layer; their token outputs ``(B, 1 + N, D)`` become ``(B, D, sqrt(N), sqrt(N))``
            grids (class token dropped).
        input_size: side of the square training/inference images; used to probe shapes.
        mean, std: normalisation constants (ImageNet's by default).
        class_names: names of the ``K`` classes, if known (torchvision weights supply them).
        token_weighting: for token layers, multiply every patch token by the class token
            channel-wise before the grid goes to a head (T-TAME's class-token weighting).
    """

    def __init__(
        self,
        model: str | nn.Module,
        *,
        num_classes: int | None = None,
        weights: str | None = None,
        target_layer: str | Sequence[str] | None = None,
        input_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        class_names: Sequence[str] | None = None,
        token_weighting: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            if weights is not None or num_classes is not None:
                raise ValueError("weights and num_classes apply only to a model given by name")
            network, weights_id, known_names = model, None, None
            model_name = f"{type(model).__module__}.{type(model).__qualname__}"
        else:
            network, weights_id, known_names = build_model(
                model, num_classes=num_classes, weights=weights
            )
            model_name = model
        self.model = network.eval().requires_grad_(False)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.input_size = input_size
        self.model_name = model_name
        self.token_weighting = token_weighting
        self.retarget(target_layer)
        self.class_names = list(class_names or known_names or []) or None
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        self.spec: dict[str, Any] = {
            "model": model_name,
            "num_classes": self.num_classes,
            "weights": weights_id,
            "target_layer": self._target_spec(),
            "input_size": input_size,
            "mean": list(mean),
            "std": list(std),
            "token_weighting": token_weighting,
        }

    def retarget(self, target_layer: str | Sequence[str] | None) -> None:
        """Split at other target layer(s) (see the class docstring) and probe their shapes."""
        example = torch.rand(1, 3, self.input_size, self.input_size, device=self.mean.device)
        if target_layer is None and isinstance(self.model, torchvision.models.VisionTransformer):
            target_layer = vit_encoder_layers(self.model, 1)[0]
        elif target_layer is None:
            target_layer = detect_target_layer(self.model, self.normalise(example))
        layers = (target_layer,) if isinstance(target_layer, str) else tuple(target_layer)
        modules = dict(self.model.named_modules())
        for layer in layers:
            if layer not in modules or not layer:
                raise ValueError(f"target layer {layer!r} is not a module of {self.model_name}")
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"target layers must be distinct module names, got {list(layers)}")
        self.target_layers = layers
        self._split()
        with torch.no_grad():
            probe = self.run(example)
        shapes = [tuple(layer.shape) for layer in probe.layers]
        if probe.logits.dim() != 2:
            shape = tuple(probe.logits.shape)
            raise ValueError(f"the model gives logits of shape {shape}, not (B, K)")
        grid = self.grid(probe.features)
        self.feature_channels = int(grid.shape[1])
        self.feature_size = (int(grid.shape[-2]), int(grid.shape[-1]))
        self.layer_channels = tuple(shape[1] for shape in shapes)
        self.layer_sizes = tuple((shape[2], shape[3]) for shape in shapes)
        self.num_classes = int(probe.logits.shape[1])
        if hasattr(self, "spec"):
            self.spec["target_layer"] = self._target_spec()

    def _target_spec(self) -> str | list[str]:
        return self.target_layers[0] if len(self.target_layers) == 1 else list(self.target_layers)

    def _split(self) -> None:
        # Held outside the module tree so parameters are registered (and saved) once, via `model`.
        split = split_graph(self.model, self.target_layers)
        self.__dict__["_body"], self.__dict__["_tail"] = split.body, split.tail
        self.target_layer = split.split_layer
        self._num_skips = split.num_skips

    @property
    def body_graph(self) -> fx.Graph | None:
        """The traced graph from the input to the target layer(s); ``None`` when not traced."""
        return getattr(self._body, "graph", None)

    @property
    def tail_graph(self) -> fx.Graph | None:
        """The traced graph from the split layer to the logits; ``None`` when not traced."""
        return getattr(self._tail, "graph", None)

    def compile_graphs(self, **options: Any) -> None:
        """``torch.compile`` the body and tail graphs (again after any later ``.to()``)."""
        self.__dict__["_body"] = torch.compile(self._body, **options)
        self.__dict__["_tail"] = torch.compile(self._tail, **options)

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenBackbone:
        super()._apply(fn, recurse)
        self._split()  # the graph modules must see tensors converted by .to()/.half()
        return self

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Set the wrapper's mode; the frozen network itself always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def normalise(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> normalised network input of the same shape."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _run_body(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        features, *rest = self._body(self.normalise(images))
        return features, tuple(rest[: self._num_skips]), tuple(rest[self._num_skips :])

    def body(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run the layers up to the target layer: features ``(B, C, h, w)`` and skips."""
        features, skips, _ = self._run_body(images)
        return features, skips

    def tail(self, features: Tensor, skips: tuple[Tensor, ...] = ()) -> Tensor:
        """Resume the forward from (possibly modified) features ``(B, C, h, w)`` -> ``(B, K)``."""
        return self._tail(features, *skips)

    def run(self, images: Tensor) -> BackboneOutput:
        """One pass on ``(B, 3, H, W)`` images in [0, 1]: features, logits, skips, layers."""
        features, skips, layers = self._run_body(images)
        grids = tuple(self.grid(layer, self.token_weighting) for layer in layers)
        return BackboneOutput(features, self.tail(features, skips), skips, grids)

    def grid(self, activations: Tensor, token_weighting: bool = False) -> Tensor:
        """A layer's output as a ``(B, C, h, w)`` map.

        Maps pass through. Token sequences ``(B, T, D)`` of a vision transformer become
        ``(B, D, g, g)``: with ``T = 1 + g^2`` the first (class) token is dropped, or, with
        ``token_weighting``, multiplies every patch token channel-wise first.
        """
        if activations.dim() == 4:
            return activations
        if activations.dim() == 3:
            tokens = activations.shape[1]
            side = math.isqrt(tokens - 1)
            if side * side == tokens - 1:
                patches = activations[:, 1:]
                if token_weighting:
                    patches = patches * activations[:, :1]
                return patches.transpose(1, 2).reshape(len(activations), -1, side, side)
        raise ValueError(
            f"a target layer gives activations of shape {tuple(activations.shape)}: expected "
            "(B, C, h, w) maps or (B, 1 + g*g, D) transformer tokens"
        )

    def mask_features(self, features: Tensor, attention: Tensor) -> Tensor:
        """Multiply target-layer features by ``(B, h, w)`` maps (tokens: the patch tokens)."""
        if features.dim() == 4:
            return features * attention[:, None]
        token_scale = attention.flatten(1)[..., None]
        return torch.cat([features[:, :1], features[:, 1:] * token_scale], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``(B, 3, H, W)`` images in [0, 1]."""
        return self.run(images).logits
