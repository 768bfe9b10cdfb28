"""Small shared builders for tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning import Trainer
from torch import nn

import lcam
from lcam.backbone import FrozenBackbone
from lcam.models import TinyResNet
from lcam.models.tiny import SHAPES_WEIGHTS
from lcam.training import LCAMModule


def tiny_backbone(num_classes: int = 5, width: int = 8, input_size: int = 32) -> FrozenBackbone:
    """A randomly initialised TinyResNet with non-trivial BatchNorm statistics."""
    model = TinyResNet(num_classes=num_classes, width=width)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return FrozenBackbone(model, input_size=input_size)


def shapes_module(head: str = "lcam_fm", lr: float = 1e-2, **options: object) -> LCAMModule:
    """An LCAMModule on the shipped TinyResNet (64 px), Adam at a constant ``lr``."""
    return LCAMModule(
        backbone="lcam.models.TinyResNet",
        weights=str(SHAPES_WEIGHTS),
        num_classes=6,
        input_size=64,
        head=head,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        lr_scheduler=None,
        **options,
    )


def quiet_trainer(**options: object) -> Trainer:
    """A CPU trainer with no logger, checkpoints, progress bar or summary."""
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of two ``(B, ...)`` tensors -> ``(B,)``."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)


class PlantedRegion(nn.Module):
    """Class-0 logit = gain * (mean grey level of the top-left quadrant) - offset; class 1 = 0."""

    def __init__(self, size: int = 32, gain: float = 10.0, offset: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 3)
        region = torch.zeros(1, 1, size, size)
        region[..., : size // 2, : size // 2] = 1 / (size // 2) ** 2
        self.register_buffer("region", region)
        self.gain, self.offset = gain, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = self.conv(x)
        mean = (grey * self.region).flatten(1).sum(dim=1, keepdim=True)
        return torch.cat([self.gain * mean - self.offset, torch.zeros_like(mean)], dim=1)


def planted_backbone(images: torch.Tensor, gain: float = 10.0) -> FrozenBackbone:
    """:class:`PlantedRegion` on ``images``' size, offset so the clean class-0 logit is about 1."""
    size = images.shape[-1]
    top_left = images[0, :, : size // 2, : size // 2].mean().item()
    model = PlantedRegion(size, gain=gain, offset=gain * top_left - 1.0)
    return FrozenBackbone(
        model, input_size=size, target_layer="conv", mean=(0, 0, 0), std=(1, 1, 1)
    )


class PassCounter:
    """Images seen by the first layer (full forwards) and by the classifier layer (tails)."""

    def __init__(self, first: nn.Module, last: nn.Module) -> None:
        self.full = self.tail = 0
        self.handles = [
            first.register_forward_hook(lambda m, i, o: self._add("full", o)),
            last.register_forward_hook(lambda m, i, o: self._add("tail", o)),
        ]

    def _add(self, name: str, output: torch.Tensor) -> None:
        setattr(self, name, getattr(self, name) + output.shape[0])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def write_marker_module(folder: Path, name: str) -> Path:
    """Write ``<folder>/<name>.py``, a module whose import writes ``<folder>/imported.marker``
    (it stands for any code run at import) and defines ``Net``, a TinyResNet subclass.

    Returns:
        The marker file's path (absent until the module is imported). Put ``folder`` on
        ``sys.path`` and drop ``name`` from ``sys.modules`` around the test.
    """
    marker = folder / "imported.marker"
    source = (
        "from pathlib import Path\n"
        "from lcam.models import TinyResNet\n\n"
        f"Path({str(marker)!r}).write_text('imported')\n\n\n"
        "class Net(TinyResNet):\n    pass\n"
    )
    (folder / f"{name}.py").write_text(source)
    return marker


def checkpoint_naming(folder: Path, class_path: str) -> tuple[lcam.LearnedExplainer, Path]:
    """An explainer and its file (a TinyResNet's weights) whose backbone metadata names
    ``class_path``."""
    backbone = FrozenBackbone("lcam.models.TinyResNet", num_classes=3, input_size=32)
    explainer = lcam.build_explainer(backbone, "lcam_fm")
    path = lcam.save_explainer(explainer, folder / "explainer.pt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["lcam"]["backbone"]["model"] = class_path
    torch.save(checkpoint, path)
    return explainer, path
