"""The quickstart: train the default head (``configs/quickstart.yaml``) on the built-in dataset,
explain images, print figures.

    python scripts/quickstart.py [--config configs/quickstart.yaml]

Outputs go where the config says (``outputs/quickstart``). Steps: ``train.py fit --config
configs/quickstart.yaml``; ``train.py test`` on held-apart images; export 16 of them as PNG
files; ``infer.py`` over that folder. Prints the figures and writes ``quickstart.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

os.environ.setdefault("WANDB_MODE", "offline")

from lcam.cli import main as train_main  # noqa: E402
from lcam.data.synthetic import export_images  # noqa: E402
from lcam.inference import main as infer_main  # noqa: E402


def run(config: str) -> dict[str, float | str]:
    start = time.perf_counter()
    cli = train_main(["fit", "--config", config])
    trained = time.perf_counter()
    output = Path(cli.trainer.default_root_dir)
    checkpoint = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    try:
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    except SIGTERMException:  # Lightning stops a test on SIGTERM with exit code 0: not a success
        print("quickstart: the test step was stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(143) from None
    tested = time.perf_counter()
    images = export_images(output / "images", 16, seed=cli.datamodule.seed + 2)
    code = infer_main(
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(images[0].parent),
            "--output",
            str(output / "maps"),
        ]
    )
    if code != 0:  # failed, or stopped by a signal (143 / 130): make must fail too
        print(f"quickstart: infer.py failed with exit code {code}", file=sys.stderr)
        raise SystemExit(code)
    done = time.perf_counter()
    mask_share = _mask_share(cli.datamodule.dataset("test"))
    figures = {
        "train_seconds": round(trained - start, 1),
        "test_seconds": round(tested - trained, 1),
        "infer_seconds": round(done - tested, 1),
        "total_seconds": round(done - start, 1),
        "masked_accuracy": round(results["test/masked_accuracy"], 4),
        "in_mask_energy": round(results["test/in_mask_energy"], 4),
        "mask_area_share": round(mask_share, 4),
        "map_area": round(results["test/map_area"], 4),
        "checkpoint": str(checkpoint),
        "maps": str(output / "maps"),
    }
    (output / "quickstart.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _mask_share(dataset: torch.utils.data.Dataset) -> float:
    return float(torch.stack([item["mask"].float().mean() for item in dataset]).mean())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    figures = run(args.config)
    print("\nquickstart figures (held-apart test images):")
    for key, value in figures.items():
        print(f"  {key:>16}: {value}")
