"""Which validation score should choose the recommended head's checkpoint (issue 34)?

For each seed, trains ``configs/quickstart.yaml`` unchanged but for two additions: the validation
loop also scores the class-stratified ``faithfulness_subset`` on deletion/insertion
(``faithfulness_metrics: [adic, deletion_insertion]``), and every epoch's checkpoint is kept. It
then picks one checkpoint per criterion from the logged validation values:

- ``val/loss`` (lowest; what the recommended configs monitored),
- ``val/deletion_auc`` (lowest) and ``val/insertion_auc`` (highest): independent metrics no
  term of the recipe trains on,
- ``val/ad_15`` (lowest): a metric the kept-fraction term trains on,
- ``last``: the newest weights,

and scores each distinct chosen checkpoint on the held-apart test images exactly as
``configs/quickstart_compare.yaml`` does (the ``lcam`` row only: the classic methods' rows do not
depend on the checkpoint). Writes ``<out>.md`` and ``<out>.json`` with, per criterion, the test
columns per seed and their mean.

    PYTHONPATH=. .venv/bin/python benchmarks/experiments/model_selection.py --seeds 0 1 2 \\
        --work /tmp/model-selection --out benchmarks/results/model-selection-2026-12-07

Cost: one quickstart training per seed (279 s on the idle 2 cores, plus about 10 s of
validation scoring per epoch) and about 50 s per scored checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.machine import load_average

CRITERIA: dict[str, tuple[str, str]] = {
    "val/loss": ("val/loss", "min"),
    "val/deletion_auc": ("val/deletion_auc", "min"),
    "val/insertion_auc": ("val/insertion_auc", "max"),
    "val/ad_15": ("val/ad_15", "min"),
}
COLUMNS = (
    "ad@100", "ic@100", "ad@50", "ic@50", "ad@15", "ic@15", "deletion_auc", "deletion_auc_blur",
    "insertion_auc", "insertion_auc_black", "road_morf_mean", "road_lerf_mean", "pointing_game",
    "energy_pointing_game", "sparseness",
)  # fmt: skip


def _fit_config(seed: int, work: Path) -> Path:
    """The quickstart config with this seed, its outputs under ``work``, every epoch kept."""
    config = yaml.safe_load(Path("configs/quickstart.yaml").read_text())
    config["seed_everything"] = seed
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(work)
    trainer["logger"] = [
        {
            "class_path": "pytorch_lightning.loggers.CSVLogger",
            "init_args": {"save_dir": str(work), "name": "csv", "version": 0},
        }
    ]
    trainer["callbacks"] = [
        {
            "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(work / "checkpoints"),
                "filename": "epoch{epoch}",
                "auto_insert_metric_name": False,
                "save_top_k": -1,
            },
        }
    ]
    config["model"]["faithfulness_metrics"] = ["adic", "deletion_insertion"]
    path = work / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _validation_rows(work: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {logged name: value}}`` of the validation values in the CSV log."""
    rows: dict[int, dict[str, float]] = {}
    with open(work / "csv" / "version_0" / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            values = {k: float(v) for k, v in row.items() if k.startswith("val/") and v != ""}
            if values:
                rows.setdefault(int(row["epoch"]), {}).update(values)
    return rows


def _chosen(rows: dict[int, dict[str, float]]) -> dict[str, int]:
    """The epoch each criterion picks (ties: the earliest), and ``last``."""
    chosen = {}
    for name, (key, mode) in CRITERIA.items():
        sign = 1.0 if mode == "min" else -1.0
        chosen[name] = min(rows, key=lambda epoch: (sign * rows[epoch][key], epoch))
    chosen["last"] = max(rows)
    return chosen


def _test_columns(checkpoint: Path, work: Path) -> dict[str, float]:
    """The ``lcam`` row of the quickstart comparison for ``checkpoint``."""
    report = work / f"test-{checkpoint.stem}"
    subprocess.run(
        [
            sys.executable, "train.py", "test", "--config", "configs/quickstart_compare.yaml",
            "--ckpt_path", str(checkpoint), "--model.methods", "[lcam]",
            "--model.method_options", "{}", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(report), "--model.report_dir", str(report),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    with open(report / "comparison.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["method"] == "lcam")
    return {column: float(row[column]) for column in COLUMNS}


def run(seeds: list[int], work: Path) -> dict[str, Any]:
    """Train and score every seed; ``{"seeds": {seed: {criterion: {...}}}, "mean": ...}``."""
    results: dict[str, Any] = {"seeds": {}, "load_average": []}
    for seed in seeds:
        seed_work = work / f"seed{seed}"
        seed_work.mkdir(parents=True, exist_ok=True)
        config = _fit_config(seed, seed_work)
        if not (seed_work / "csv" / "version_0" / "metrics.csv").exists():  # re-runs resume
            subprocess.run(
                [sys.executable, "train.py", "fit", "--config", str(config)],
                check=True, capture_output=True,
            )  # fmt: skip
        rows = _validation_rows(seed_work)
        chosen = _chosen(rows)
        scored: dict[int, dict[str, float]] = {}
        for epoch in sorted(set(chosen.values())):
            checkpoint = seed_work / "checkpoints" / f"epoch{epoch}.ckpt"
            scored[epoch] = _test_columns(checkpoint, seed_work)
        results["seeds"][seed] = {
            name: {"epoch": epoch, "validation": rows[epoch], "test": scored[epoch]}
            for name, epoch in chosen.items()
        }
        results["load_average"].append(load_average())
        print(f"seed {seed}: chosen epochs {chosen}", flush=True)
    criteria = [*CRITERIA, "last"]
    results["mean"] = {
        name: {
            column: statistics.mean(results["seeds"][seed][name]["test"][column] for seed in seeds)
            for column in COLUMNS
        }
        for name in criteria
    }
    return results


def markdown(results: dict[str, Any]) -> str:
    """The mean test columns per criterion, then each seed's chosen epochs."""
    lines = [
        "| chosen by | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, values in results["mean"].items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in COLUMNS) + " |")
    lines.append("")
    for seed, chosen in results["seeds"].items():
        epochs = ", ".join(f"{name}: epoch {entry['epoch']}" for name, entry in chosen.items())
        lines.append(f"- seed {seed}: {epochs}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = run(args.seeds, args.work)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
