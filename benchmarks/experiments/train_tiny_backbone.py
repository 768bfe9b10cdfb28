"""Train ``TinyResNet`` on ``SyntheticShapes`` and write the shipped weights file.

One-off tool (not part of the library). The defaults reproduce
``lcam/models/weights/tiny_resnet_shapes.pt``::

    python benchmarks/experiments/train_tiny_backbone.py

Training items come from ``SyntheticShapes(seed=0)``; accuracy is measured on a held-apart set
from ``SyntheticShapes(seed=1)``. Inputs are normalised with the ImageNet mean/std. Only the
state dict is saved, with floating-point tensors stored as float16 (keeps the file < 2 MB;
``load_state_dict`` casts back to float32). The reported accuracy is that of the saved file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lcam.data.synthetic import SyntheticShapes
from lcam.models.tiny import SHAPES_WEIGHTS, TinyResNet

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
NUM_CLASSES = 6
IMAGE_SIZE = 64


def materialise(dataset: SyntheticShapes) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of ``dataset`` as normalised images ``(N, 3, S, S)`` and labels ``(N,)``."""
    images = torch.empty(len(dataset), 3, dataset.image_size, dataset.image_size)
    labels = torch.empty(len(dataset), dtype=torch.int64)
    for i in range(len(dataset)):
        item = dataset[i]
        images[i] = item["image"]
        labels[i] = item["label"]
    return (images - IMAGENET_MEAN) / IMAGENET_STD, labels


@torch.no_grad()
def accuracy(model: TinyResNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), 250):
        x = images[start : start + 250].contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1) == labels[start : start + 250]).sum())
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=8000, help="training items (seed 0)")
    parser.add_argument("--val-size", type=int, default=1000, help="held-out items (seed 1)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed for init/shuffle")
    parser.add_argument("--output", type=Path, default=SHAPES_WEIGHTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    train_x, train_y = materialise(
        SyntheticShapes(args.train_size, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, seed=0)
    )
    val_x, val_y = materialise(
        SyntheticShapes(args.val_size, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, seed=1)
    )
    print(
        f"generated {len(train_x)} train / {len(val_x)} val items in "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    model = TinyResNet(num_classes=NUM_CLASSES, width=args.width)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup = max(1, total_steps // 20)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        running, seen = 0.0, 0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            x, y = train_x[idx], train_y[idx]
            flip = torch.rand(len(idx)) < 0.5  # horizontal flips keep every class valid
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {running / seen:.4f}, "
            f"val acc {accuracy(model, val_x, val_y):.4f}, "
            f"elapsed {time.perf_counter() - t_train:.0f}s",
            flush=True,
        )
    train_time = time.perf_counter() - t_train

    state = {
        k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)

    reloaded = TinyResNet(num_classes=NUM_CLASSES, width=args.width)
    reloaded.load_state_dict(torch.load(args.output, weights_only=True))
    reloaded = reloaded.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in reloaded.parameters())
    print(f"train time {train_time:.1f}s")
    print(f"saved {args.output} ({args.output.stat().st_size / 1e6:.2f} MB, {params} params)")
    print(
        f"held-out accuracy (seed 1, {len(val_x)} images, reloaded weights): "
        f"{accuracy(reloaded, val_x, val_y):.4f}"
    )


if __name__ == "__main__":
    main()
