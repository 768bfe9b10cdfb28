"""A frozen classifier split at a target layer.

:class:`FrozenBackbone` wraps any image classifier (a torchvision model name, an importable
``nn.Module`` class path, or a module instance), freezes it, moves the input normalisation inside
it and splits its computation graph at a *target layer* with :mod:`torch.fx`::

    logits = tail(body(normalise(x)))        features = body(normalise(x))

so one pass yields the target-layer features ``F`` of shape ``(B, C, h, w)`` together with the
logits ``(B, K)``, and the forward can be *resumed* from a modified feature map (``tail(F * A)``)
without running any layer before the target layer again.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import operator
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torchvision
from torch import Tensor, nn

__all__ = [
    "BackboneOutput",
    "FrozenBackbone",
    "WeightsUnavailableError",
    "build_model",
    "vit_encoder_layers",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_POOLING_TYPES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)


class WeightsUnavailableError(RuntimeError):
    """Raised when requested backbone weights cannot be obtained (e.g. no network)."""


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


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps the target layers as opaque calls."""

    def __init__(self, leaf_names: Sequence[str]) -> None:
        super().__init__()
        self.leaf_names = set(leaf_names)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaf_names or super().is_leaf_module(module, qualified_name)


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


def _detect_target_layer(model: nn.Module, example: Tensor) -> str:
    """Name of the last module whose output is a spatial map not produced by pooling.

    For VGG this is the ReLU after conv5_3 (``features.29`` in VGG-16), for ResNet ``layer4``.
    """
    names = {module: name for name, module in model.named_modules() if name}
    producer: dict[int, nn.Module] = {}
    outputs: list[Tensor] = []  # kept alive so that ids are not reused within the pass
    candidates: list[str] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        outputs.append(output)
        producer.setdefault(id(output), module)
        spatial = output.dim() == 4 and output.shape[-1] > 1 and output.shape[-2] > 1
        if spatial and not isinstance(producer[id(output)], _POOLING_TYPES):
            candidates.append(names[module])

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not candidates:
        raise ValueError(
            "could not find a convolutional target layer automatically; pass target_layer= "
            "with a module name"
        )
    return candidates[-1]


def vit_encoder_layers(model: nn.Module, count: int) -> list[str]:
    """Names of the last ``count`` encoder layers of a torchvision ``VisionTransformer``."""
    names = [name for name, _ in model.encoder.layers.named_children()]
    return [f"encoder.layers.{name}" for name in names[-count:]]


# Modules whose backward does not read their output: adding into that output in place is safe.
_OUTPUT_NOT_SAVED = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


def add_into_first(first: Tensor, second: Tensor) -> Tensor:
    """``first + second``, written into ``first`` when the sum has its shape and dtype.

    What a traced ``out += identity`` (a residual add) becomes in the split graphs: torch.fx
    records ``+=`` as an out-of-place add, which would allocate a new tensor per block.
    """
    if torch.jit.is_tracing():  # an exported graph (ONNX) gains nothing from it
        return first + second
    if first.shape == torch.broadcast_shapes(first.shape, second.shape) and (
        torch.result_type(first, second) == first.dtype
    ):
        return first.add_(second)
    return first + second


def _writes_into_input(model: nn.Module, node: fx.Node) -> bool:
    """Whether ``node`` may write into its first argument (an in-place op)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(model.get_submodule(str(node.target)), "inplace", False) is True
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    return node.op == "call_function" and node.target is add_into_first


def _protect(model: nn.Module, graph: fx.Graph, protected: Sequence[fx.Node]) -> None:
    """Give in-place consumers of ``protected`` nodes a copy to write into.

    The features, skips and layer outputs of a split are returned to the caller and reused (the
    tail may be re-run on them); an in-place op reading one of them would corrupt it. Every other
    in-place op stays in place, as in the model itself (the model is not modified).
    """
    for node in protected:
        for user in list(node.users):
            if user.args and user.args[0] is node and _writes_into_input(model, user):
                with graph.inserting_before(user):
                    copy = graph.call_method("clone", (node,))
                user.replace_input_with(node, copy)


def _residual_adds_in_place(model: nn.Module, graph: fx.Graph, protected: set[fx.Node]) -> None:
    """Turn ``a + b`` into :func:`add_into_first` where ``a`` is the fresh output of a
    convolution, linear or batch-norm layer that nothing else reads (a residual add)."""
    for node in graph.nodes:
        if node.op != "call_function" or node.target is not operator.add or node.kwargs:
            continue
        first = node.args[0]
        if (
            isinstance(first, fx.Node)
            and isinstance(node.args[1], fx.Node)
            and first.op == "call_module"
            and isinstance(model.get_submodule(str(first.target)), _OUTPUT_NOT_SAVED)
            and len(first.users) == 1
            and first not in protected
        ):
            node.target = add_into_first


@dataclass
class _Split:
    body: fx.GraphModule  # x -> (F, *skips, *layers)
    tail: fx.GraphModule  # (F, *skips) -> logits
    split_layer: str
    num_skips: int


def _split_graph(model: nn.Module, target_layers: Sequence[str]) -> _Split:
    """Split ``model`` after the deepest of ``target_layers``.

    ``body: x -> (F, *skips, *layers)`` and ``tail: (F, *skips) -> logits``, where ``F`` is the
    output of the target layer that runs last and ``layers`` the outputs of all target layers.
    """
    try:
        graph = _LeafTracer(target_layers).trace(model)
    except Exception as error:  # fx raises many types; name the cause and the way out
        raise ValueError(
            f"cannot split {type(model).__name__} at {list(target_layers)}: torch.fx could not "
            f"trace it ({error})"
        ) from error
    nodes = list(graph.nodes)
    layer_nodes = []
    for layer in target_layers:
        calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
        if len(calls) != 1:
            raise ValueError(
                f"target layer {layer!r} is called {len(calls)} times in the forward; "
                "choose a module that runs exactly once"
            )
        layer_nodes.append(calls[0])
    split_node = max(layer_nodes, key=nodes.index)

    def split_at_target() -> tuple[list[fx.Node], list[fx.Node], list[fx.Node]]:
        """Nodes up to the split node, nodes after it, and the skips (before, used after)."""
        nodes = list(graph.nodes)
        split = nodes.index(split_node) + 1
        before, after = nodes[:split], nodes[split:]
        users_after = set(after)
        skips = [n for n in before[:-1] if any(user in users_after for user in n.users)]
        return before, after, skips

    protected = {*layer_nodes, *split_at_target()[2]}
    _residual_adds_in_place(model, graph, protected)
    _protect(model, graph, list(protected))
    before, after, skips = split_at_target()

    body = fx.Graph()
    body_env: dict[fx.Node, fx.Node] = {}
    for node in before:
        body_env[node] = body.node_copy(node, lambda n: body_env[n])
    body.output(tuple(body_env[n] for n in (split_node, *skips, *layer_nodes)))

    tail = fx.Graph()
    tail_env: dict[fx.Node, fx.Node] = {split_node: tail.placeholder("features")}
    for index, node in enumerate(skips):
        tail_env[node] = tail.placeholder(f"skip_{index}")
    for node in after:
        tail_env[node] = tail.node_copy(node, lambda n: tail_env[n])
    return _Split(
        fx.GraphModule(model, body), fx.GraphModule(model, tail), str(split_node.target), len(skips)
    )


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
            target_layer = _detect_target_layer(self.model, self.normalise(example))
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
        split = _split_graph(self.model, self.target_layers)
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
