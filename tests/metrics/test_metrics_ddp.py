"""Metrics reduced over 2 CPU processes (gloo) equal the single-process values."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lcam.metrics import (
    ROAD,
    AverageDropIncrease,
    DeletionInsertion,
    EnergyPointingGame,
    FaithfulnessCorrelation,
    Infidelity,
    MaskIoU,
    Monotonicity,
    PointingGame,
    RandomLogit,
    Sparseness,
)

WORLD_SIZE = 2


class ToyModel(nn.Module):
    """A fixed linear classifier on 8x8 images (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 3 * 8 * 8, generator=generator) * 0.3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.weight.T


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 8, 8, generator=generator)
    maps = torch.rand(10, 4, 4, generator=generator)  # low resolution, upsampled inside
    masks = torch.rand(10, 8, 8, generator=generator) < 0.3
    return images, maps, masks


RANDOM = ("faithfulness", "infidelity", "random_logit")
"""Metrics that draw from their own seeded generator: each rank starts it anew, so under DDP they
equal per-rank instances merged (what their sum states promise), not one instance on all data."""


def _class_maps(images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic class-dependent explainer for random logit: ``(B, 8, 8)`` maps."""
    return images.mean(dim=1) * (classes.float() + 1)[:, None, None], classes


def _metrics() -> dict[str, object]:
    model = ToyModel()
    return {
        "adic": AverageDropIncrease(model, batch_size=4),
        "deletion": DeletionInsertion(model, steps=4, batch_size=8, baseline="black"),
        "road": ROAD(model, fractions=(0.5,), noise_std=0.0),
        "pg": PointingGame(tolerance=1),
        "epg": EnergyPointingGame(),
        "iou": MaskIoU(),
        "monotonicity": Monotonicity(model, steps=4, batch_size=4),
        "sparseness": Sparseness(),
        "faithfulness": FaithfulnessCorrelation(model, num_runs=4, subset_size=16, batch_size=4),
        "infidelity": Infidelity(model, num_samples=3, batch_size=4),
        "random_logit": RandomLogit(_class_maps, num_classes=3),
    }


def _update(metrics: dict, images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> None:
    targets = ToyModel()(images).argmax(dim=1)
    for name, metric in metrics.items():
        if name in ("pg", "epg", "iou"):
            metric.update(maps, masks)
        elif name in ("adic", "deletion", "road"):
            metric.update(images, maps)
        else:
            metric.update(images, maps, targets)


def _values(metrics: dict) -> dict[str, float]:
    results: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        values = value if isinstance(value, dict) else {"value": value}
        results.update({f"{name}/{key}": float(v) for key, v in values.items()})
    return results


def _evaluate(images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    metrics = _metrics()
    _update(metrics, images, maps, masks)
    return _values(metrics)


def _merged(*shards: slice) -> dict[str, float]:
    """One process: a fresh instance per shard (as each rank has), merged through the states."""
    images, maps, masks = _data()
    instances = [_metrics() for _ in shards]
    for metrics, shard in zip(instances, shards, strict=True):
        _update(metrics, images[shard], maps[shard], masks[shard])
    for name, metric in instances[0].items():
        for other in instances[1:]:
            metric.merge_state(other[name])
    return _values(instances[0])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        images, maps, masks = _data()
        half = slice(0, 6) if rank == 0 else slice(6, 10)  # unequal halves on purpose
        results = _evaluate(images[half], maps[half], masks[half])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_reduction_equals_single_process(tmp_path: Path) -> None:
    single = _evaluate(*_data())
    merged = _merged(slice(0, 6), slice(6, 10))
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        reduced = torch.load(tmp_path / f"rank{rank}.pt")
        assert reduced.keys() == single.keys()
        for key, value in single.items():
            expected = merged[key] if key.split("/")[0] in RANDOM else value
            assert reduced[key] == pytest.approx(expected, abs=1e-5), key
    # deterministic metrics: merging per-shard states is the whole-data value
    for key, value in single.items():
        if key.split("/")[0] not in RANDOM:
            assert merged[key] == pytest.approx(value, abs=1e-5), key
    # the split is informative: one half alone gives different values, for every metric
    half = _evaluate(*(tensor[:6] for tensor in _data()))
    names = {key.split("/")[0] for key in single}
    differs = {
        key.split("/")[0] for key in single if half[key] != pytest.approx(single[key], abs=1e-5)
    }
    assert names - differs <= {"pg"}, names - differs
