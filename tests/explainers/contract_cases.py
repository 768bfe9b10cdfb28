"""What the explainer contract runs on: every explainer and head, on each backbone path.

Three tiny TinyResNets with the same weights (non-trivial BatchNorm statistics):

* ``fx``: the plain network, split by torch.fx (its ReLUs are not in-place);
* ``fx_inplace``: every ReLU in-place, still split by torch.fx;
* ``fallback``: in-place ReLUs *and* data-dependent control flow in ``forward``, which torch.fx
  cannot trace, so the backbone runs through the hook fallback (every tail re-runs the whole
  network).

Explainers that read every layer of the network, not only the target layer (FullGrad), also run
on a two-block token transformer (:class:`TinyTokenNet`, class token + 4 x 4 patch tokens), split
by torch.fx (``tokens``) and through the hook fallback (``tokens_fallback``): :data:`TOKEN_CASES`.

:class:`PassHooks` counts passes independently of the library: images reaching the network's
first layer (``stem.0``) and its classifier (``fc``), and gradient batches arriving at either.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from helpers import tiny_backbone
from torch import nn

import lcam
from lcam.backbone import FrozenBackbone
from lcam.explainers import EXPLAINERS, Explainer, get_explainer
from lcam.heads import HEADS
from lcam.models import TinyResNet

SIZE, BATCH, CLASSES = 32, 2, 5
MODELS = ("fx", "fx_inplace", "fallback")
TOKEN_CASES = [("fullgrad", "tokens"), ("fullgrad", "tokens_fallback")]
# Explainers that need something a model kind does not give, with the error they must raise.
REFUSED = {("cam", "fallback"): "torch.fx"}


def grid_segments(image: np.ndarray) -> np.ndarray:
    """Nine 3 x 3 blocks as superpixels (fast and the same on every image)."""
    rows = np.arange(image.shape[0]) * 3 // image.shape[0]
    cols = np.arange(image.shape[1]) * 3 // image.shape[1]
    return rows[:, None] * 3 + cols[None, :]


# Small settings so the whole contract runs in seconds; any option left out keeps its default.
OPTIONS: dict[str, dict[str, object]] = {
    "rise": {"num_masks": 6, "s": 4, "batch_size": 5},
    "occlusion": {"patch_size": 16, "stride": 8, "batch_size": 5},
    "lime": {"num_samples": 7, "segmentation": grid_segments, "batch_size": 4},
    "kernel_shap": {"num_samples": 7, "segmentation": grid_segments, "batch_size": 4},
    "scorecam": {"batch_size": 24},
    "ablationcam": {"batch_size": 24},
}


class UntraceableResNet(TinyResNet):
    """TinyResNet whose forward branches on the data (always the same way): fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.sum() >= 0:  # always true after the stem's ReLU; torch.fx cannot know it
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TokenBlock(nn.Module):
    """A pre-norm transformer block: one-head softmax attention and a GELU MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.mlp(self.norm2(x))


class TinyTokenNet(nn.Module):
    """A ViT in miniature with the contract's layer names: patch embedding ``stem.0``, a class
    token, two blocks, a final norm and the classifier ``fc`` on the class token."""

    def __init__(self, untraceable: bool = False, dim: int = 16, patch: int = SIZE // 4) -> None:
        super().__init__()
        self.untraceable = untraceable
        self.stem = nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch))
        self.cls_token = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(TokenBlock(dim), TokenBlock(dim))
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, CLASSES)
        with torch.no_grad():  # layer norms that add a bias (fresh ones add none)
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if not self.untraceable or x.abs().sum() >= 0:  # always true; fx cannot know it
            x = self.norm(self.blocks(x))
        return self.fc(x[:, 0])


def token_backbone(kind: str) -> FrozenBackbone:
    """``tokens`` (fx split) or ``tokens_fallback`` (hook fallback), same weights for both."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyTokenNet(untraceable=kind == "tokens_fallback")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.fx cannot trace", RuntimeWarning)
        built = FrozenBackbone(
            model, input_size=SIZE, target_layer="blocks.1", layout="tokens",
            num_prefix_tokens=1, grid=(4, 4),
        )  # fmt: skip
    assert built.uses_fallback == (kind == "tokens_fallback")
    return built


def backbone(kind: str) -> FrozenBackbone:
    """A tiny backbone of the given kind (see the module docstring), same weights for all."""
    if kind.startswith("tokens"):
        return token_backbone(kind)
    reference = tiny_backbone(num_classes=CLASSES, input_size=SIZE).model
    if kind == "fx":
        return FrozenBackbone(reference, input_size=SIZE)
    model = UntraceableResNet(num_classes=CLASSES, width=8) if kind == "fallback" else reference
    model.load_state_dict(reference.state_dict())
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.fx cannot trace", RuntimeWarning)
        built = FrozenBackbone(model, input_size=SIZE)
    assert built.uses_fallback == (kind == "fallback")
    return built


def build(name: str, kind: str) -> Explainer:
    """Explainer (or learned head) ``name`` on a fresh backbone of ``kind``."""
    if name in HEADS:
        return lcam.build_explainer(backbone(kind), head=name)
    return get_explainer(name, backbone(kind), **OPTIONS.get(name, {}))


def names() -> list[str]:
    """Every registered explainer and every registered head."""
    return sorted(EXPLAINERS) + sorted(HEADS)


def cases() -> list[tuple[str, str]]:
    return [(name, kind) for name in names() for kind in MODELS] + TOKEN_CASES


class PassHooks:
    """Counts images through the first layer and the classifier, and gradient batches at both,
    while the explainer's method (``compute_maps``) runs: not what ``explain`` may run around it
    (the one-time degenerate-map warning may probe the backbone for a better layer)."""

    def __init__(self, explainer: Explainer) -> None:
        self.full = self.logits = self.backward = self.backward_to_input = 0
        self.active = False
        self.explainer, method = explainer, explainer.compute_maps

        def counted(*args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            self.active = True
            try:
                return method(*args)
            finally:
                self.active = False

        explainer.compute_maps = counted
        model = explainer.backbone.model
        self.handles = [
            model.get_submodule("stem.0").register_forward_hook(self._first),
            model.get_submodule("fc").register_forward_hook(self._last),
        ]

    def _first(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not self.active:
            return
        self.full += output.shape[0]
        if output.requires_grad:  # a backward from here on reaches the image
            output.register_hook(lambda grad: self._add("backward_to_input", grad))

    def _last(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not self.active:
            return
        self.logits += output.shape[0]
        if output.requires_grad:
            output.register_hook(lambda grad: self._add("backward", grad))

    def _add(self, name: str, grad: torch.Tensor) -> None:
        setattr(self, name, getattr(self, name) + grad.shape[0])

    def per_image(self, batch: int) -> tuple[float, float, float, float]:
        """(forward, tail, backward, backward to the input) passes per image."""
        counts = (self.logits, self.logits - self.full, self.backward, self.backward_to_input)
        return tuple(count / batch for count in counts)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        del self.explainer.compute_maps  # the class's method again


def state(explainer: Explainer) -> dict[str, object]:
    """Everything an explainer must leave as it found it on the network."""
    model = explainer.backbone.model
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for key in ("requires_grad", "training", "inplace"):
        assert before[key] == after[key], key
    old, new = before["tensors"], after["tensors"]
    assert old.keys() == new.keys()
    for name in old:
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=0, msg=name)


def hooks_left(explainer: Explainer) -> list[str]:
    """Modules of the network and of the explainer that still carry a hook."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    modules: list[tuple[str, nn.Module]] = [*explainer.named_modules(remove_duplicate=False)]
    # the torch.fx body and tail are held outside the module tree
    graphs = {"<body>": explainer.backbone.body_graph, "<tail>": explainer.backbone.tail_graph}
    modules += [(name, g.owning_module) for name, g in graphs.items() if g is not None]
    return [
        f"{name or '<root>'}.{kind}" for name, m in modules for kind in kinds if getattr(m, kind)
    ]
