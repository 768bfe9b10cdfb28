"""The frozen classifier wrapper: one pass gives target-layer features and logits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from lcam.backbone.build import build_model, describe_model
from lcam.backbone.fallback import HookSplit, warn_fallback
from lcam.backbone.hints import model_hints
from lcam.backbone.layers import default_layers
from lcam.backbone.layout import Layout, from_grid, infer_layout, mask_layout, to_grid
from lcam.backbone.outputs import LogitsModel, OutputSelector, select_logits
from lcam.backbone.ownership import frozen_copy
from lcam.backbone.split import TraceError, split_graph
from lcam.backbone.targets import call_hooks, parse_target
from lcam.backbone.views import BackboneViews

__all__ = ["BackboneOutput", "FrozenBackbone"]


@dataclass
class BackboneOutput:
    """Everything one pass of the frozen network yields.

    Attributes:
        features: target-layer activations ``F`` in the layer's own layout (``(B, C, h, w)``,
            ``(B, h, w, C)`` or tokens ``(B, N, C)``; :meth:`FrozenBackbone.grid` makes them
            ``(B, C, h, w)``).
        logits: class scores of the clean image, shape ``(B, K)``.
        skips: other body activations the tail reads (empty for VGG/ResNet at their default
            layers); pass them back to :meth:`FrozenBackbone.tail`.
        layers: activations of every target layer as ``(B, C_i, h_i, w_i)`` maps, in the order
            they were named (heads read these); channels-last maps and token sequences appear
            here as grids (see :meth:`FrozenBackbone.grid`).
    """

    features: Tensor
    logits: Tensor
    skips: tuple[Tensor, ...] = ()
    layers: tuple[Tensor, ...] = ()


class FrozenBackbone(BackboneViews, nn.Module):
    """A frozen classifier that yields target-layer features and logits in one pass.

    Images go in as ``(B, 3, H, W)`` in ``[0, 1]``; normalisation ``(x - mean) / std`` happens
    inside, so a mask multiplied into an image turns masked pixels black. All parameters are frozen
    and the wrapped network stays in eval mode (BatchNorm statistics, Dropout off) even when a
    trainer calls ``.train()``. A module you pass is left as it is: the backbone runs a copy of
    its structure over the same weights (:mod:`lcam.backbone.ownership`). Logits may come as a
    tensor, ``ModelOutput``, dict or tuple (:mod:`lcam.backbone.outputs`); a stage returning a
    list/tuple is split at its finest-grid element; :meth:`view` gives another split of the
    same network (weights shared), so explainers on one backbone keep their own layers.

    The network is split with torch.fx; a model fx cannot trace (data-dependent control flow)
    falls back to forward hooks (:mod:`lcam.backbone.fallback`, with a warning): same outputs,
    but ``tail`` then re-runs the whole network and ``body_graph``/``tail_graph`` are ``None``.

    Args:
        model: torchvision model name (``"vgg16"``), class path (``"pkg.module.Class"``), another
            name :func:`lcam.backbone.build.build_model` knows, or a module.
        num_classes: number of classes for a model built by name; ``None`` keeps its default.
        weights: ``None``, a weights name or a local state_dict file (see ``build_model``). Only
            for models given by name.
        target_layer: where to split: a module name, a call site ``"module#k"`` (the ``k``-th
            call, from 0, of a module the forward calls several times) or a torch.fx node name;
            or a list of them (multi-layer heads): the network is split after the one that runs
            last, and all of their outputs are returned as ``BackboneOutput.layers``. Default:
            the output of the last stage (:mod:`lcam.backbone.layers`; VGG: the ReLU after
            conv5_3, ``features.29``; ResNet: ``layer4``; transformers: the last block).
        input_size: ``(H, W)`` or the side of square images, used to probe shapes; default the
            model's own (torchvision ViT ``image_size``, timm/HF configs), else 224.
        mean, std: normalisation constants; default the model's own, else ImageNet's.
        class_names: names of the ``K`` classes, if known (weights often supply them).
        token_weighting: for token layers, multiply every patch token by the class token
            channel-wise before the grid goes to a head (T-TAME's class-token weighting).
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"`` (one for all target layers or one per
            layer), when it cannot be inferred (see :mod:`lcam.backbone.layout`).
        num_prefix_tokens: class/distillation/register tokens in front of the patch tokens.
        grid: ``(h, w)`` patch grid of token layers at ``input_size``.
        output: where the logits are in what the model returns, when the rules above do not
            find them: a key or attribute name, an index or a callable ``output -> logits``.
    """

    def __init__(
        self,
        model: str | nn.Module,
        *,
        num_classes: int | None = None,
        weights: str | None = None,
        target_layer: str | Sequence[str] | None = None,
        input_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        token_weighting: bool = False,
        layout: str | Sequence[str] | None = None,
        num_prefix_tokens: int | None = None,
        grid: Sequence[int] | None = None,
        output: OutputSelector | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            if weights is not None or num_classes is not None:
                raise ValueError("weights and num_classes apply only to a model given by name")
            description, weights_id = describe_model(frozen_copy(model)), None
            model_name = f"{type(model).__module__}.{type(model).__qualname__}"
        else:
            description, weights_id = build_model(model, num_classes=num_classes, weights=weights)
            model_name = model
        self._requested_classes = num_classes
        hints = model_hints(description, input_size, mean, std, num_prefix_tokens)
        network = description.network.eval().requires_grad_(False)
        with torch.no_grad():
            returned = network(torch.zeros(1, 3, *hints.input_size))
        if output is not None or not isinstance(returned, Tensor):
            select_logits(returned, output)  # refuses an output without logits, naming output=
            network = LogitsModel(network, output)
        self.model = network
        self.register_buffer(
            "mean",
            torch.tensor(hints.mean, dtype=torch.float32).view(1, -1, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std", torch.tensor(hints.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.input_hw = hints.input_size
        height, width = hints.input_size
        # An int for square images, as before (image loaders and exports read it as a side).
        self.input_size: int | tuple[int, int] = height if height == width else (height, width)
        self.model_name = model_name
        self.token_weighting = token_weighting
        self.__dict__["_description"], self.__dict__["_hints"] = description, hints
        self._layout_option, self._grid_option = layout, tuple(grid) if grid else None
        self.retarget(target_layer)
        self.class_names = list(class_names or description.class_names or []) or None
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        self.spec: dict[str, Any] = {
            "model": model_name,
            "num_classes": self.num_classes,
            "weights": weights_id,
            "target_layer": self._target_spec(),
            "input_size": self.input_size if height == width else [height, width],
            "mean": list(hints.mean),
            "std": list(hints.std),
            "token_weighting": token_weighting,
            "layout": layout if layout is None or isinstance(layout, str) else list(layout),
            "num_prefix_tokens": num_prefix_tokens,
            "grid": list(grid) if grid else None,
            "output": output if isinstance(output, str | int) else None,
        }

    def _probe_input(self, scale: int = 1) -> Tensor:
        """A fixed random normalised probe image ``(1, 3, scale * H, scale * W)``."""
        size = (1, 3, scale * self.input_hw[0], scale * self.input_hw[1])
        generator = torch.Generator().manual_seed(0)
        return self.normalise(torch.rand(size, generator=generator).to(self.mean))

    def default_layers(self, count: int) -> list[str]:
        """The last ``count`` stage outputs, shallow to deep (:func:`~lcam.backbone.layers.
        default_layers`): ``count=1`` is the default target layer, ``count=3`` TAME's layers."""
        return default_layers(
            self.model,
            self._probe_input(),
            count,
            stage_layers=self._description.stage_layers,
            others=self._other_probes(),
            **self._token_hints(),
        )

    def retarget(
        self, target_layer: str | Sequence[str] | None, *, default: bool | None = None
    ) -> None:
        """Split at other target layer(s) and probe their shapes; ``default``: the layers are
        the default ones (``None``: ``target_layer is None``; :meth:`gradient_view` needs it)."""
        example = self._probe_input()  # seeded: building a backbone leaves the global RNG alone
        self._default_target = target_layer is None if default is None else default
        self.__dict__.pop("_evidence_layer", None)
        if target_layer is None:
            target_layer = self.default_layers(1)[0]
        layers = (target_layer,) if isinstance(target_layer, str) else tuple(target_layer)
        if not layers or len(set(layers)) != len(layers) or not all(layers):
            raise ValueError(f"target layers must be distinct, non-empty names, got {list(layers)}")
        self.target_layers = layers
        self._elements: tuple[int | None, ...] | None = None
        self._split()
        with torch.no_grad():
            _, _, raw, logits = self._forward(self.normalise(example))
        if any(not isinstance(layer, Tensor) for layer in raw):
            self._elements = tuple(
                None if isinstance(out, Tensor) else self._grid_element(i, out)
                for i, out in enumerate(raw)
            )
            self._split()
            with torch.no_grad():
                _, _, raw, logits = self._forward(self.normalise(example))
        if logits.dim() != 2:
            raise ValueError(f"the model gives logits of shape {tuple(logits.shape)}, not (B, K)")
        self.layouts = tuple(self._infer_layout(i, layer) for i, layer in enumerate(raw))
        grids = [to_grid(layer, layout) for layer, layout in zip(raw, self.layouts, strict=True)]
        self._split_index = self.target_layers.index(self.target_layer)
        self.feature_channels = int(grids[self._split_index].shape[1])
        self.feature_size = tuple(int(s) for s in grids[self._split_index].shape[-2:])
        self.layer_channels = tuple(int(grid.shape[1]) for grid in grids)
        self.layer_sizes = tuple((int(g.shape[2]), int(g.shape[3])) for g in grids)
        self.num_classes = int(logits.shape[1])
        requested = self._requested_classes
        if requested is not None and requested != self.num_classes:
            raise ValueError(
                f"num_classes={requested} was asked for, but {self.model_name!r} gives "
                f"{self.num_classes} logits (its class takes no num_classes, or ignores it)"
            )
        if hasattr(self, "spec"):
            self.spec["target_layer"] = self._target_spec()

    def _infer_layout(self, index: int, activations: Tensor, element: int | None = None) -> Layout:
        """The layout of target layer ``index`` from its probe output (see ``layout.py``);
        ``element``: its position in the layer's list/tuple output."""
        layer, option, described = self.target_layers[index], self._layout_option, self._description
        channels = None
        if described.stage_layers and described.stage_channels and layer in described.stage_layers:
            channels = described.stage_channels[described.stage_layers.index(layer)]
        options = {
            "channels": channels,
            "kind": option if option is None or isinstance(option, str) else option[index],
            "num_prefix_tokens": self._hints.num_prefix_tokens,
            "grid": self._grid_option,
            **self._token_hints(),
        }
        try:
            return infer_layout(activations.shape, self.input_hw, **options)
        except ValueError as error:
            if self._hints.fixed_input_size:
                raise ValueError(f"target layer {layer!r}: {error}") from None
            try:  # a second probe at twice the size: the dimensions that grow are spatial
                with torch.no_grad():
                    larger = self._forward(self._probe_input(2))[2][index]
                larger = (larger if isinstance(larger, Tensor) else larger[element]).shape
            except Exception:  # the model does not run at another size: the first error stands
                raise ValueError(f"target layer {layer!r}: {error}") from None
            size = (2 * self.input_hw[0], 2 * self.input_hw[1])
            try:
                return infer_layout(
                    activations.shape, self.input_hw, second=(larger, size), **options
                )
            except ValueError as again:
                raise ValueError(f"target layer {layer!r}: {again}") from None

    def _target_spec(self) -> str | list[str]:
        return self.target_layers[0] if len(self.target_layers) == 1 else list(self.target_layers)

    def _split(self) -> None:
        # Held outside the module tree so parameters are registered (and saved) once, via `model`.
        try:
            split = split_graph(self.model, self.target_layers, self._elements)
        except TraceError as error:
            fallback = HookSplit(
                self.model,
                self.target_layers,
                self._probe_input(),
                self._other_probes(),
                self._elements,
            )
            warn_fallback(self.model, str(error.__cause__ or error))
            self.__dict__.update(_fallback=fallback, _body=None, _tail=None)
            self.target_layer, self._num_skips = fallback.split_layer, 1
            return
        self.__dict__.update(_fallback=None, _body=split.body, _tail=split.tail)
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

    @property
    def uses_fallback(self) -> bool:
        """Whether the split runs through hooks (torch.fx could not trace the model)."""
        return self._fallback is not None

    def compile_graphs(self, **options: Any) -> None:
        """``torch.compile`` the body and tail graphs (again after any later ``.to()``);
        nothing to compile under the hook fallback."""
        if self._fallback is None:
            self.__dict__["_body"] = torch.compile(self._body, **options)
            self.__dict__["_tail"] = torch.compile(self._tail, **options)

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenBackbone:
        super()._apply(fn, recurse)
        if self.__dict__.get("_fallback") is None:
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

    def _forward(
        self, x: Tensor, logits: bool = True
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...], Tensor | None]:
        """Normalised ``x`` -> features, skips, raw target-layer outputs and (if asked) logits."""
        if self._fallback is not None:
            features, layers, scores = self._fallback.run(x)
            return features, (x,), layers, scores
        features, *rest = self._body(x)
        skips, layers = tuple(rest[: self._num_skips]), tuple(rest[self._num_skips :])
        return features, skips, layers, self._tail(features, *skips) if logits else None

    def body(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run the layers up to the target layer: features (in the layer's layout) and skips."""
        features, skips, _, _ = self._forward(self.normalise(images), logits=False)
        return features, skips

    def tail(self, features: Tensor, skips: tuple[Tensor, ...] = ()) -> Tensor:
        """Resume the forward from (possibly modified) features -> logits ``(B, K)``.

        ``features`` are in the target layer's own layout (see :meth:`from_grid`); ``skips``
        are those :meth:`body`/:meth:`run` returned (always needed under the hook fallback).
        """
        if self._fallback is None:
            return self._tail(features, *skips)
        if len(skips) != 1:
            raise ValueError(
                "under the hook fallback tail() re-runs the network: pass the skips that "
                "body()/run() returned (they hold the normalised input)"
            )
        return self._fallback.tail(features, skips[0])

    def run(self, images: Tensor) -> BackboneOutput:
        """One pass on ``(B, 3, H, W)`` images in [0, 1]: features, logits, skips, layers."""
        features, skips, layers, logits = self._forward(self.normalise(images))
        grids = tuple(
            to_grid(layer, layout, self.token_weighting)
            for layer, layout in zip(layers, self.layouts, strict=True)
        )
        return BackboneOutput(features, logits, skips, grids)

    def grid(
        self, activations: Tensor, token_weighting: bool = False, layer: int | None = None
    ) -> Tensor:
        """A target layer's output as a ``(B, C, h, w)`` map.

        Maps pass through, channels-last maps are permuted, token sequences ``(B, P + h*w, D)``
        lose their ``P`` prefix tokens and become ``(B, D, h, w)`` (with ``token_weighting``,
        every patch token is multiplied channel-wise by the class token first).

        Args:
            activations: an output of target layer ``layer`` (default: the split layer, whose
                output is ``BackboneOutput.features``), or its gradient.
        """
        return to_grid(activations, self._layout(layer), token_weighting)

    def from_grid(self, grid: Tensor, like: Tensor, layer: int | None = None) -> Tensor:
        """Inverse of :meth:`grid`: ``(B, C, h, w)`` -> the layer's layout; prefix tokens come
        from ``like`` (an output of the same layer), e.g. to resume :meth:`tail` from a grid."""
        return from_grid(grid, self._layout(layer), like)

    def mask_features(self, features: Tensor, attention: Tensor) -> Tensor:
        """Multiply target-layer features by ``(B, h, w)`` maps in their own layout (tokens:
        the patch tokens; prefix tokens are kept)."""
        return mask_layout(features, attention, self._layout(None))

    @contextmanager
    def capture_split_output(self) -> Iterator[list[Tensor]]:
        """Collect the split layer's output (raw layout) when ``self.model`` runs once inside
        the block, through a forward hook that knows call sites (``"_swish#1"``); for checks
        that backpropagate through the whole network. Graph-node targets have no hook."""
        site = parse_target(self.target_layer, dict(self.model.named_modules()))
        if site is None:
            raise ValueError(
                f"target layer {self.target_layer!r} is a graph node, not a module: no hook"
            )
        outputs: list[Tensor] = []
        with call_hooks(self.model, [site], lambda _index, output: outputs.append(output)):
            yield outputs

    def _layout(self, layer: int | None) -> Layout:
        return self.layouts[self._split_index if layer is None else layer]

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``(B, 3, H, W)`` images in [0, 1]."""
        return self.run(images).logits
