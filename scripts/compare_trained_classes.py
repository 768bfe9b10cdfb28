"""A config's method comparison on the test images whose class its head was trained on.

    python scripts/compare_trained_classes.py --config configs/composites_lite0.yaml \\
        --checkpoint outputs/composites_lite0/checkpoints/last.ckpt [--methods lcam gradcam]
        [--out rows.json]

``train.py test`` scores every method on every test image, including images the head explains
for a class no training image had (``untrained_images`` in its table). This script scores the
same methods, with the config's ``methods``, ``method_options`` and ``comparison`` settings and
the same :class:`lcam.evaluation.MethodComparison`, on the config's test images minus those (the
head's ``Explanation.untrained``), so that the head and the classic methods are compared where
the head had something to learn. The config's data module must give ``"image"`` and ``"mask"``
in its test batches; randomised methods (RISE, LIME) draw their samples for this batch, so their
rows are new estimates, not a subset of the full run's.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import yaml

import lcam
from lcam.data import CompositesDataModule
from lcam.evaluation import MethodComparison
from lcam.explainers import UntrainedClassWarning, get_explainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=None, help="default: the config's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    model, data = config["model"], config["data"]
    if data["class_path"] != "lcam.data.CompositesDataModule":
        raise ValueError(f"this script reads CompositesDataModule configs: {data['class_path']}")
    datamodule = CompositesDataModule(**data["init_args"])
    datamodule.setup("test")
    head = lcam.load_explainer(args.checkpoint, device="cpu")
    options = model.get("method_options", {})
    names = args.methods or model["methods"]
    methods = {"lcam": head} if "lcam" in names else {}
    for name in names:
        if name != "lcam":
            methods[name] = get_explainer(name, head.backbone, **options.get(name, {}))
    comparison = MethodComparison(head.backbone, methods, **model.get("comparison", {}))
    excluded = 0
    for batch in datamodule.test_dataloader():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedClassWarning)
            trained = ~head.explain(batch["image"]).untrained
        excluded += int((~trained).sum())
        if bool(trained.any()):
            comparison.update(batch["image"][trained], masks=batch["mask"][trained])
    rows = comparison.compute()
    print(f"{excluded} test image(s) excluded (explained for a class the head never trained on)")
    for row in rows:
        print(json.dumps(row, default=float))
    if args.out is not None:
        args.out.write_text(json.dumps({"excluded": excluded, "rows": rows}, default=float))


if __name__ == "__main__":
    main()
