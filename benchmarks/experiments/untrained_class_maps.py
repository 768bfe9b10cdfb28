"""Can a head explain a class it never trained on with a map borrowed from the trained classes?

    python benchmarks/experiments/untrained_class_maps.py
        [--head tame] [--lr 1e-3] [--trained-classes 4]
        [--epochs 2]

The quickstart backbone (``lcam.models.TinyResNet``, shipped weights, 64 px) and data
(``lcam.data.SyntheticShapesDataModule``, seed 0). A head is trained (``LCAMModule``, dataset
labels, Adam at a constant ``--lr``, default 1e-2 for L-CAM and 1e-3 for the TAME heads, from
``torch.manual_seed(0)``) on the training
images of the first ``--trained-classes`` classes only; the test images of the other classes are
then explained for their dataset class in two ways:

* ``own``: the class's own map, which training never touched (what ``LearnedExplainer`` shows,
  flagged ``Explanation.untrained``; with ``--head tame_shared``, the map all classes share);
* ``agnostic``: the trained classes' logit maps mixed by their share of the training images,
  ``sum_k n_k / sum_j n_j * S_k``, a class-agnostic substitute.

Both are scored with :class:`lcam.metrics.PointingGame` (tolerance 0: the maximum must lie on
the object) and :class:`lcam.metrics.EnergyPointingGame` (in-mask energy) against the shapes'
masks; the trained classes' images are scored with their own maps for reference.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from pytorch_lightning import Trainer
from torch.utils.data import DataLoader, Subset

from lcam import LCAMModule
from lcam.data import SyntheticShapesDataModule
from lcam.explainers import UntrainedClassWarning
from lcam.heads import HEADS
from lcam.maps import normalise_maps, upsample_maps
from lcam.metrics import EnergyPointingGame, PointingGame
from lcam.models.tiny import SHAPES_WEIGHTS


def _scores(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    pointing, energy = PointingGame(tolerance=0), EnergyPointingGame()
    pointing.update(maps, masks)
    energy.update(maps, masks)
    return {
        "images": len(maps),
        "pointing_game": round(float(pointing.compute()), 3),
        "in_mask_energy": round(float(energy.compute()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", default="tame", choices=sorted(HEADS))
    parser.add_argument("--trained-classes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--test-size", type=int, default=256)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = SyntheticShapesDataModule(train_size=args.train_size, test_size=args.test_size)
    train = data.dataset("train")
    labels = torch.stack([train[i]["label"] for i in range(len(train))])
    kept = (labels < args.trained_classes).nonzero().flatten().tolist()
    lr = args.lr if args.lr is not None else (1e-3 if args.head.startswith("tame") else 1e-2)
    module = LCAMModule(
        backbone="lcam.models.TinyResNet",
        weights=str(SHAPES_WEIGHTS),
        num_classes=6,
        input_size=64,
        head=args.head,
        labels="dataset",
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        lr_scheduler=None,
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    loader = DataLoader(Subset(train, kept), batch_size=32, shuffle=True)
    trainer.fit(module, train_dataloaders=loader)

    explainer = module.explainer.eval()
    batch = next(iter(DataLoader(data.dataset("test"), batch_size=args.test_size)))
    images, masks, targets = batch["image"], batch["mask"], batch["label"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedClassWarning)
        explanation = explainer.explain(images, targets)
        _, class_maps = explainer.class_maps(images)  # (B, K, h, w) logit maps
    counts = explainer.class_examples.float()
    agnostic_logits = torch.einsum("bkhw,k->bhw", class_maps, counts / counts.sum())
    agnostic = normalise_maps(upsample_maps(explainer.activate(agnostic_logits), (64, 64)))
    untrained = explanation.untrained
    results = {
        "head": args.head,
        "lr": lr,
        "training_counts": explainer.class_examples.tolist(),
        "trained_classes_own_maps": _scores(explanation.maps[~untrained], masks[~untrained]),
        "untrained_classes_own_maps": _scores(explanation.maps[untrained], masks[untrained]),
        "untrained_classes_agnostic_maps": _scores(agnostic[untrained], masks[untrained]),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
