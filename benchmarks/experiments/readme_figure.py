"""The overlay figure of the README and the docs' home page: ``docs/assets/overlays.png``.

    python benchmarks/experiments/readme_figure.py [--checkpoint CKPT] [--work /tmp/lcam_figure]

Without ``--checkpoint`` it first trains the quickstart's head (``configs/quickstart.yaml``: TAME
+ kept-fraction on the bundled tiny ResNet) for 96 steps of one epoch, no logger::

    python train.py fit --config configs/quickstart.yaml --trainer.max_epochs 1 \
        --trainer.limit_train_batches 96 --trainer.limit_val_batches 2 \
        --model.faithfulness_subset 0 --trainer.logger false

then writes 4 images of the built-in dataset (``python -m lcam.data``), explains them with
``infer.py`` (default viridis overlays) and puts the images above their overlays, 2x upscaled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "96",
    "--trainer.limit_val_batches", "2", "--model.faithfulness_subset", "0",
    "--trainer.logger", "false",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lcam_figure"))
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--output", type=Path, default=ROOT / "docs/assets/overlays.png")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        config = ["--config", "configs/quickstart.yaml"]
        subprocess.run([sys.executable, "train.py", "fit", *config, *TRAIN], cwd=ROOT, check=True)
        checkpoint = ROOT / "outputs/quickstart/checkpoints/last.ckpt"
    images = args.work / "images"
    run = [sys.executable, "-m", "lcam.data", str(images), "--count", str(args.count)]
    subprocess.run(run, check=True)
    maps = args.work / "maps"
    infer = [sys.executable, "infer.py", "--checkpoint", str(checkpoint), "--input", str(images)]
    subprocess.run([*infer, "--output", str(maps), "--overwrite"], cwd=ROOT, check=True)
    files = sorted(images.glob("*.png"))[: args.count]
    tiles = [[Image.open(f).convert("RGB") for f in files]]
    tiles.append([Image.open(maps / f"{f.name}.overlay.png").convert("RGB") for f in files])
    side, gap = 128, 4
    figure = Image.new("RGB", (len(files) * (side + gap) - gap, 2 * side + gap), "white")
    for row, line in enumerate(tiles):
        for column, tile in enumerate(line):
            figure.paste(
                tile.resize((side, side), Image.NEAREST),
                (column * (side + gap), row * (side + gap)),
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
