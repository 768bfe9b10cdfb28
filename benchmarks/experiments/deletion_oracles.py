"""What deletion/insertion AUC rewards on the quickstart data: hand-made maps against the head.

Scores, on the quickstart comparison's 128 test images (the synthetic shapes test split, the
tiny ResNet, 32 steps, predicted classes), maps whose meaning is known: the object mask itself,
the mask ranked centre-first or edge-first, the mask dilated, the mask blurred, a constant map;
the shipped head's map (``--checkpoint``) raw and blurred; Grad-CAM. Each with deletion to black
and insertion onto the blurred image (the RISE paper's pair), and deletion to the blurred image
and insertion onto black (the other pair).

    PYTHONPATH=. .venv/bin/python benchmarks/experiments/deletion_oracles.py \\
        --checkpoint outputs/quickstart/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from lcam import get_explainer, load_explainer
from lcam.data import SyntheticShapesDataModule
from lcam.maps import gaussian_blur
from lcam.metrics import DeletionInsertion


def _eroded(masks: Tensor, size: int) -> Tensor:
    """``(B, H, W)`` binary masks eroded by a ``size`` square."""
    return -F.max_pool2d(-masks[:, None], size, 1, size // 2)[:, 0]


def _blurred(maps: Tensor, sigma: float) -> Tensor:
    return gaussian_blur(maps[:, None], sigma)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/quickstart/checkpoints/last.ckpt")
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    data = SyntheticShapesDataModule(
        num_classes=6,
        image_size=64,
        train_size=4096,
        val_size=512,
        test_size=128,
        batch_size=128,
    )  # fmt: skip  (the quickstart comparison's data)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    images, masks = batch["image"], batch["mask"].float()
    explainer = load_explainer(args.checkpoint)
    backbone = explainer.backbone
    with torch.no_grad():
        predicted = backbone(images).argmax(1)
    head = explainer.explain(images).maps
    jitter = 1e-3 * torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    maps = {
        "object mask": masks + jitter,
        "mask, centre first": masks + _eroded(masks, 3) + _eroded(masks, 5) + _eroded(masks, 9),
        "mask, edge first": 2 * (masks - _eroded(masks, 5)) + masks,
        "mask + 3 px ring": F.max_pool2d(masks[:, None], 7, 1, 3)[:, 0] + masks,
        "mask blurred (sigma 4)": _blurred(masks, 4.0),
        "constant": torch.ones_like(masks),
        "head": head,
        "head blurred (sigma 4)": _blurred(head, 4.0),
        "head blurred (sigma 8)": _blurred(head, 8.0),
        "Grad-CAM": get_explainer("gradcam", backbone).explain(images, predicted).maps,
    }
    print("| map | deletion black | insertion blur | deletion blur | insertion black |")
    print("|---|---:|---:|---:|---:|")
    for name, values in maps.items():
        row = []
        for insertion, deletion in (("blur", "black"), ("black", "blur")):
            metric = DeletionInsertion(
                backbone, steps=args.steps, baseline=insertion, deletion_baseline=deletion
            )
            metric.update(images, values, predicted)
            result = metric.compute()
            row += [float(result["deletion_auc"]), float(result["insertion_auc"])]
        print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in row) + " |")


if __name__ == "__main__":
    main()
