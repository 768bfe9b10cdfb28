"""What a learned head's ``explain()`` and all-K ``class_maps()`` cost against a plain forward,
measured interleaved call by call (issue 34, "At one forward's cost").

On a shared machine the speed changes within seconds, so timing the reference forwards first and
the method afterwards (what ``benchmarks/run.py`` does in each measurement) can be off by tens of
percent. Here every round times ``forward, explain, forward, class_maps`` of each head in turn;
a call's ratio is its time over the mean of the two forwards around it, and the figure is the
median over the rounds (with the quartiles, so the spread shows). Random weights (the cost does
not depend on them), 224 px, batch 8, synthetic-shapes images (``benchmarks.models``); each head
on its own backbone. The multiply-accumulates of each call are counted too
(``torch.utils.flop_counter``), which the load cannot disturb.

    PYTHONPATH=. .venv/bin/python benchmarks/experiments/head_cost.py \\
        --models resnet50 vgg16 vit_b_16 --heads tame tame_lite --rounds 7 \\
        --out benchmarks/results/head-cost-2026-12-07
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import lcam
from benchmarks.machine import load_average, machine_info
from benchmarks.models import MODELS, build_backbone, make_images


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _gmac_per_image(call: Callable[[], object], images: int) -> float:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 2 / images / 1e9


def measure(model: str, heads: list[str], rounds: int, batch: int) -> list[dict[str, Any]]:
    """Rows ``{model, head, call, ratio_median, ratio_q1, ratio_q3, ratios, ...}`` of one model."""
    spec = MODELS[model]
    images, _ = make_images(spec, batch)
    explainers = {
        head: lcam.build_explainer(build_backbone(spec), head=head).eval() for head in heads
    }
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for head, explainer in explainers.items():
        calls[head, "explain"] = lambda e=explainer: e.explain(images)
        calls[head, "class_maps"] = lambda e=explainer: e.class_maps(images)
    forward = explainers[heads[0]].backbone
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    forward_ms: list[float] = []
    with torch.no_grad():
        forward_gmac = _gmac_per_image(lambda: forward(images), batch)
        extra = {key: _gmac_per_image(call, batch) - forward_gmac for key, call in calls.items()}
        for call in [lambda: forward(images), *calls.values()]:  # warm-up (and the fold caches)
            call()
        for _ in range(rounds):
            for key, call in calls.items():
                before = _seconds(lambda: forward(images))
                spent = _seconds(call)
                after = _seconds(lambda: forward(images))
                reference = (before + after) / 2
                ratios[key].append(spent / reference)
                forward_ms.append(reference * 1000 / batch)
    rows = []
    for (head, kind), values in ratios.items():
        q1, _, q3 = (
            statistics.quantiles(values, n=4, method="inclusive")
            if len(values) > 1
            else (values[0],) * 3
        )
        rows.append(
            {
                "model": model,
                "head": head,
                "call": kind,
                "ratio_median": statistics.median(values),
                "ratio_q1": q1,
                "ratio_q3": q3,
                "ratios": values,
                "extra_gmac_per_image": extra[head, kind],
                "forward_gmac_per_image": forward_gmac,
                "forward_ms_per_image_median": statistics.median(forward_ms),
                "layers": list(explainers[head].backbone.target_layers),
                "head_parameters": sum(p.numel() for p in explainers[head].head.parameters()),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], load: dict[str, Any]) -> str:
    """The results table, one row per (model, head, call)."""
    lines = [
        "| model | head | call | ratio to forward (median) | quartiles | extra GMAC/image "
        "(forward's) | forward ms/image | head parameters |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['head']} | {r['call']} | {r['ratio_median']:.3f} | "
            f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} | {r['extra_gmac_per_image']:.3f} "
            f"({r['forward_gmac_per_image']:.2f}) | {r['forward_ms_per_image_median']:.1f} | "
            f"{r['head_parameters']:,} |"
        )
    lines.append("")
    lines.append(f"Load average (1/5/15 min) at start {load['start']}, at end {load['end']}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16", "vit_b_16"])
    parser.add_argument("--heads", nargs="+", default=["tame", "tame_lite"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="path without suffix: .md, .json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = {"start": load_average()}
    rows: list[dict[str, Any]] = []
    for model in args.models:
        rows += measure(model, args.heads, args.rounds, args.batch)
        load["end"] = load_average()
        args.out.with_suffix(".md").write_text(markdown(rows, load))
        args.out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "machine": machine_info(args.threads),
                    "settings": vars(args) | {"out": str(args.out)},
                    "load_average": load,
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(markdown(rows, load), flush=True)


if __name__ == "__main__":
    main()
