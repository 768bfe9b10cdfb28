"""What the hook fallback costs against the torch.fx split, on ResNet-50 (random weights).

The fallback is forced by wrapping the network in a module with data-dependent control flow
(torch.fx cannot trace it); the fx path splits the same network. Every figure is the median
wall time of one call on a batch, divided by the median time of a plain forward of the network
on that batch (so 1.0 = one forward).

    .venv/bin/python benchmarks/experiments/bench_fallback.py [--batch 4] [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import lcam


class Untraceable(nn.Module):
    """``net`` behind a data-dependent branch: torch.fx cannot trace it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() >= 0:
            return self.net(x)
        return -self.net(x)


def median_time(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    fast = lcam.FrozenBackbone(net, input_size=args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        slow = lcam.FrozenBackbone(
            Untraceable(net), input_size=args.size, target_layer="net.layer4"
        )
    assert slow.uses_fallback and not fast.uses_fallback
    images = torch.rand(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        forward = median_time(lambda: net(fast.normalise(images)), args.repeats)
    print(
        f"ResNet-50, batch {args.batch}, {args.size} px, {torch.get_num_threads()} threads: "
        f"plain forward {1000 * forward / args.batch:.1f} ms per image"
    )
    print(f"{'operation':<34} {'fx split':>9} {'fallback':>9}   (x a plain forward)")
    for label, make in [
        ("run() (features + logits)", lambda b: lambda: b.run(images)),
        (
            "tail() once (one resumed pass)",
            lambda b: (lambda o: lambda: b.tail(o.features, o.skips))(b.run(images)),
        ),
        ("L-CAM-Fm explain", lambda b: lcam.build_explainer(b, head="lcam_fm").explain),
        ("L-CAM-Fm training forward", lambda b: _training_forward(b, images)),
        ("Grad-CAM explain", lambda b: lcam.get_explainer("gradcam", b).explain),
    ]:
        ratios = []
        for backbone in (fast, slow):
            call = make(backbone)
            target = (
                call
                if label.startswith(("run", "tail", "L-CAM-Fm training"))
                else (lambda c=call: c(images))
            )
            with torch.no_grad() if label.startswith(("run", "tail")) else torch.enable_grad():
                ratios.append(median_time(target, args.repeats) / forward)
        print(f"{label:<34} {ratios[0]:>9.2f} {ratios[1]:>9.2f}")
    channels = fast.feature_channels
    print(
        f"Score-CAM/Ablation-CAM-style tail reuse: {channels} channel passes per image; each is "
        "a tail() above (fx: the layers after layer4; fallback: a whole forward)"
    )


def _training_forward(backbone: lcam.FrozenBackbone, images: torch.Tensor) -> Callable[[], object]:
    head = lcam.build_explainer(backbone, head="lcam_fm").head

    def step() -> torch.Tensor:
        output = backbone.run(images)
        attention = head.target_maps(output, output.logits.argmax(1)).sigmoid()
        logits = head.masked_logits(backbone, images, output, attention)
        logits.sum().backward()
        return logits

    return step


if __name__ == "__main__":
    main()
