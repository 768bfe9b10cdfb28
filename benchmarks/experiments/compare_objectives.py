"""One-pass heads trained with and without the masked-response objective vs classic explainers.

    python benchmarks/experiments/compare_objectives.py
        [--train-size 1024] [--epochs 3] [--test-size 128]
        [--masks-per-image 8] [--mr-weight 1] [--rise-masks 1000] [--lime-samples 500]
        [--heads lcam_fm tame tame_mr tame_mr_only tame_kf] [--no-classic] [--out FILE.json]

The quickstart backbone (``lcam.models.TinyResNet``, shipped weights, 64 px) and data
(``lcam.data.SyntheticShapesDataModule``, seed 0: train split for the heads, test split for the
table). Heads are trained in a plain torch loop (Adam, x0.75 per epoch, batch 32, labels = the
frozen model's predictions, as the quickstart recipe), each from ``torch.manual_seed(0)``:

* ``lcam_fm``: L-CAM-Fm, L-CAM loss (1.5 CE + 2 area + 0.01 TV), lr 1e-2;
* ``tame``: TAME, L-CAM loss, lr 1e-3;
* ``tame_mr``: TAME, L-CAM loss + ``mr_weight`` x masked response (RISE masks, correlation fit,
  on the raw logit map of the label);
* ``tame_mr_only``: TAME trained with the masked response alone (intercept fit), lr 1e-3;
* ``tame_kf``: TAME, L-CAM loss + 0.5 x the kept-fraction term (the class must survive the map's
  top 100/50/15 %, soft edge 0.05; :class:`lcam.training.KeptFractionLoss`), lr 1e-3.

Every method is scored by :class:`lcam.evaluation.comparison.MethodComparison` (AD/IC at
100/50/15 % on the papers' protocol, pointing game, energy pointing game = in-mask energy, mask
IoU) on the same test images; the table gives the training seconds and extra forwards per image
of each head.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import Tensor

from lcam import build_explainer, get_explainer
from lcam.backbone import FrozenBackbone
from lcam.data import SyntheticShapesDataModule
from lcam.evaluation.comparison import MethodComparison
from lcam.explainers import Explainer, LearnedExplainer
from lcam.models.tiny import SHAPES_WEIGHTS
from lcam.training.kept_fraction import KeptFractionLoss
from lcam.training.losses import LCAMLoss
from lcam.training.masked_response import MaskedResponseLoss

METRICS = ("adic", "pointing_game", "energy_pointing_game", "mask_iou")


def quickstart_backbone() -> FrozenBackbone:
    return FrozenBackbone(
        "lcam.models.TinyResNet", weights=str(SHAPES_WEIGHTS), num_classes=6, input_size=64
    )


def train_head(
    head: str,
    images: Tensor,
    epochs: int,
    lr: float,
    lcam_weight: float,
    objective: MaskedResponseLoss | KeptFractionLoss | None,
    objective_weight: float,
) -> tuple[LearnedExplainer, float]:
    """Train a head in a plain loop; returns the explainer and the training seconds."""
    torch.manual_seed(0)
    backbone = quickstart_backbone()
    explainer = build_explainer(backbone, head)
    criterion = LCAMLoss()
    optimizer = torch.optim.Adam(explainer.head.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.75)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    explainer.head.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=generator).split(32):
            batch = images[index]
            with torch.no_grad():
                output = backbone.run(batch)
            labels = output.logits.argmax(1)
            logit_maps = explainer.head.class_maps(output)
            rows = torch.arange(len(labels))
            loss = torch.zeros(())
            if lcam_weight:
                attention = logit_maps.sigmoid()
                masked = explainer.head.masked_logits(
                    backbone, batch, output, attention[rows, labels]
                )
                loss = loss + lcam_weight * criterion(masked, labels, attention)["loss"]
            if objective is not None:
                term = objective(logit_maps[rows, labels], batch, labels, backbone)
                loss = loss + objective_weight * term
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    explainer.eval()
    return explainer, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--test-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--masks-per-image", type=int, default=8)
    parser.add_argument("--mr-weight", type=float, default=1.0)
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--lime-samples", type=int, default=500)
    parser.add_argument("--heads", nargs="*", default=None, help="subset of the heads to train")
    parser.add_argument("--no-classic", action="store_true", help="score the heads only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    data = SyntheticShapesDataModule(train_size=args.train_size, test_size=args.test_size)
    collate = torch.utils.data.default_collate
    train = collate([data.dataset("train")[i] for i in range(args.train_size)])["image"]
    test = collate([data.dataset("test")[i] for i in range(args.test_size)])

    def masked(fit: str) -> MaskedResponseLoss:
        return MaskedResponseLoss(args.masks_per_image, masks="rise", grid=7, fit=fit)

    recipes: dict[str, Callable[[], tuple[LearnedExplainer, float]]] = {
        "lcam_fm": lambda: train_head("lcam_fm", train, args.epochs, 1e-2, 1.0, None, 0.0),
        "tame": lambda: train_head("tame", train, args.epochs, 1e-3, 1.0, None, 0.0),
        "tame_mr": lambda: train_head(
            "tame", train, args.epochs, 1e-3, 1.0, masked("correlation"), args.mr_weight
        ),
        "tame_mr_only": lambda: train_head(
            "tame", train, args.epochs, 1e-3, 0.0, masked("intercept"), 1.0
        ),
        "tame_kf": lambda: train_head(
            "tame", train, args.epochs, 1e-3, 1.0, KeptFractionLoss(), 0.5
        ),
    }
    methods: dict[str, Explainer] = {}
    cost: dict[str, dict[str, float]] = {}
    chosen = args.heads or list(recipes)
    for name in chosen:
        explainer, seconds = recipes[name]()
        methods[name] = explainer
        extra = {"tame_kf": 3}.get(
            name, args.masks_per_image if name.endswith(("_mr", "_mr_only")) else 0
        )
        cost[name] = {"train_s": round(seconds, 1), "train_extra_fwd_per_img_step": extra}
        print(f"trained {name} in {seconds:.1f} s", flush=True)
    backbone = quickstart_backbone()
    classic = {
        "gradcam": {},
        "gradcampp": {},
        "scorecam": {"batch_size": 128},
        "rise": {"num_masks": args.rise_masks, "batch_size": 128},
        "lime": {"num_samples": args.lime_samples, "segmentation": "slic", "batch_size": 128},
    }
    for name, options in {} if args.no_classic else classic.items():
        methods[name] = get_explainer(name, backbone, **options)
    rows = []
    for name, method in methods.items():  # one comparison per method: progress is visible
        comparison = MethodComparison(
            backbone, {name: method}, metrics=METRICS, gallery_size=0, max_misclassified=0
        )
        for start in range(0, args.test_size, 32):
            part = slice(start, start + 32)
            comparison.update(test["image"][part], test["label"][part], test["mask"][part])
        row = {**comparison.compute()[0], **cost.get(name, {})}
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = ["method", "forward_passes", "backward_passes", "ms_per_image"]
    columns += [c for c in rows[0] if c.startswith(("ad@", "ic@"))]
    columns += ["pointing_game", "energy_pointing_game", "mask_iou", "train_s"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        text = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in cells]
        print("| " + " | ".join(text) + " |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"settings": vars(args), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
