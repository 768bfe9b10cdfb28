"""Train L-CAM-Fm, L-CAM-Img and TAME with the same budget on the built-in dataset; compare them.

    python benchmarks/experiments/compare_heads.py
        [--train-size 4096] [--epochs 2] [--test-size 256]

Prints, per head: in-mask energy share, AD/IC at 100/50/15 % kept pixels (the papers' protocol on
the pre-sigmoid maps), parameter count, and inference time relative to a plain forward.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("WANDB_MODE", "offline")

from pytorch_lightning import Trainer  # noqa: E402

from lcam.data import SyntheticShapesDataModule  # noqa: E402
from lcam.maps import in_mask_energy  # noqa: E402
from lcam.metrics import AverageDropIncrease  # noqa: E402
from lcam.models.tiny import SHAPES_WEIGHTS  # noqa: E402
from lcam.training import LCAMModule  # noqa: E402

# Each head at its recipe's rate: TAME's published learning rates are 10x below L-CAM's.
LEARNING_RATES = {"lcam_fm": 1e-2, "lcam_img": 1e-2, "tame": 1e-3}


def _median_ms(function, repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def evaluate(head: str, data: SyntheticShapesDataModule, epochs: int) -> dict[str, float | str]:
    torch.manual_seed(0)
    module = LCAMModule(
        backbone="lcam.models.TinyResNet",
        weights=str(SHAPES_WEIGHTS),
        num_classes=6,
        input_size=64,
        head=head,
        optimizer=lambda params: torch.optim.Adam(params, lr=LEARNING_RATES[head]),
        lr_scheduler=None,
    )
    Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, datamodule=data)
    explainer = module.explainer.eval()
    test = data.dataset("test")
    batch = torch.utils.data.default_collate([test[i] for i in range(len(test))])
    images, masks = batch["image"], batch["mask"]
    with torch.no_grad():
        energy = in_mask_energy(explainer.explain(images).maps, masks).mean().item()
        explainer.map_activation = "logit"
        adic = AverageDropIncrease(explainer.backbone)
        adic.update(images, explainer.explain(images).maps)
        scores = {k: round(v.item(), 2) for k, v in adic.compute().items()}
        sample = images[:32]
        forward = _median_ms(lambda: explainer.backbone(sample))
        explain = _median_ms(lambda: explainer.class_maps(sample))
    return {
        "head": head,
        "in_mask_energy": round(energy, 4),
        **scores,
        "head_parameters": sum(p.numel() for p in explainer.head.parameters()),
        "inference_vs_forward": round(explain / forward, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    data = SyntheticShapesDataModule(
        train_size=args.train_size, val_size=8, test_size=args.test_size, batch_size=64
    )
    rows = [evaluate(head, data, args.epochs) for head in ("lcam_fm", "lcam_img", "tame")]
    mask_share = torch.stack(
        [data.dataset("test")[i]["mask"].float().mean() for i in range(args.test_size)]
    )
    print(f"object share of the image (uniform map's energy): {mask_share.mean().item():.4f}")
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
