"""The fast recipe against the full recipe on data whose faithful map is known (issue 34).

The two recipes are the head and loss options of the ``model:`` sections of
``configs/quickstart.yaml`` (full: TAME + 0.5 x the kept-fraction term, every kept fraction
100/50/15 % per image and step) and ``configs/quickstart_fast.yaml`` (fast: the same with
``kept_fraction_options: {sampling: one}``, one fraction drawn per image and step), read from
the files, so that a term added to both configs is trained here too. Each trains a head on
:class:`planted_spot.SpotNet` (only a green square moves its logit, placed at random next to a
red distractor; 512 training images), seeds 0, 1 and 2, the same data and the same 3 epochs for
both (the configs' 4 and 3 epochs are not compared here: the fast recipe's other saving), Adam
3e-3, batch 32. Every metric column of the quickstart comparison (its default metrics and
``configs/quickstart_compare.yaml``'s settings, with the pointing game's tolerance 0: the peak
must fall on the spot) scores both heads on 128 held-out images, averaged over the three seeds.

Quality: on every column, ``|fast - full| <= tolerance``. IC at 100/50/15 % is left out: it is 0
for every map on this net (a mask can only remove green, so the probability never rises). Both
heads must also beat a constant map, a centre prior and the untrained head by 0.2 AUC on
deletion and insertion (both baselines), so two broken heads cannot meet the tolerance.
Measured 2026-12-07 (fast - full per seed 0/1/2 in the last column):

=====================  ======  ======  =========  =========  ========  =========================
column                 full    fast    fast-full  tolerance  constant  per seed
=====================  ======  ======  =========  =========  ========  =========================
ad@100                 15.145  15.060  -0.085     0.3        87.572    -0.195 / +0.006 / -0.067
ad@50                  15.145  15.060  -0.085     0.3        87.572    -0.195 / +0.006 / -0.067
ad@15                  15.192  15.111  -0.081     0.3        87.572    -0.180 / +0.005 / -0.068
road_morf_mean         0.007   0.008   +0.000     0.02       0.666     +0.001 / 0 / 0
road_lerf_mean         1.000   1.000   0          0.02       0.666     0 / 0 / 0
deletion_auc           0.164   0.164   +0.000     0.005      0.574     +0.001 / -0.000 / -0.000
deletion_auc_blur      0.239   0.240   +0.000     0.005      0.617     +0.001 / -0.000 / -0.000
insertion_auc          0.942   0.942   -0.000     0.005      0.597     -0.000 / +0.000 / -0.000
insertion_auc_black    0.940   0.940   -0.000     0.005      0.560     -0.000 / +0.000 / -0.000
pointing_game          0.984   0.984   0          0.02       0.000     0 / 0 / 0
energy_pointing_game   0.142   0.142   -0.001     0.01       0.000     -0.002 / +0.000 / -0.000
mask_iou               0.386   0.381   -0.005     0.03       0.000     -0.019 / +0.005 / -0.002
sparseness             0.267   0.266   -0.001     0.01       0.000     -0.002 / -0.001 / -0.000
=====================  ======  ======  =========  =========  ========  =========================

Seeds 0-7 gave fast - full on AD@100 between -0.21 and +0.26 per seed. A fast recipe that draws
only the 100 % fraction is worse on AD at every seed 0-7 (+0.05 to +0.98, +0.53 on the mean of
seeds 0-2, beyond the 0.3 tolerance); the other columns barely separate the recipes on this net
(deletion/insertion within 0.005 AUC of each other for every variant tried).

Cost: the frozen network's forward passes during training, counted at its first stage by a
forward hook: 7,680 images per run for the full recipe (5 per image and step: the clean
forward, the L-CAM masked pass, 3 kept-fraction passes) and 4,608 for the fast one (3), a
ratio of 0.60; asserted ``<= COST_RATIO``. Training wall time, the two recipes alternated in one
process, 1 thread: see ``FIT_SECONDS_NOTE``.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from baselines import centre_prior, constant_map
from helpers import PassCounter, quiet_trainer
from planted_spot import SIZE, spot_images
from pytorch_lightning import seed_everything
from torch import Tensor

from lcam.evaluation import MethodComparison
from lcam.evaluation.specs import is_metric_column
from lcam.explainers import DegenerateMapWarning, Explainer
from lcam.explainers.base import resolve_targets
from lcam.training import LCAMModule
from lcam.training.evaluation_run import EVALUATION_ARGUMENTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {"full": CONFIGS / "quickstart.yaml", "fast": CONFIGS / "quickstart_fast.yaml"}
COMPARE = CONFIGS / "quickstart_compare.yaml"
# model: keys naming the quickstart's backbone, optimiser and evaluation: SpotNet and the
# settings below take their place. Every other key (the head and its loss terms) is the recipe,
# so a term added to the configs reaches this test without an edit here.
NOT_RECIPE = ("backbone", "weights", "num_classes", "input_size", "target_layer")
NOT_RECIPE += ("optimizer", "lr_scheduler", *EVALUATION_ARGUMENTS)
SEEDS, TRAIN_IMAGES, TEST_IMAGES, EPOCHS, BATCH, LR = (0, 1, 2), 512, 128, 3, 32, 3e-3

TOLERANCE = {  # |fast - full| at most this, on the mean over SEEDS (table in the docstring)
    **{f"ad@{p}": 0.3 for p in (100, 50, 15)},  # percentage points
    "road_morf_mean": 0.02,
    "road_lerf_mean": 0.02,
    **{c: 0.005 for c in ("deletion_auc", "deletion_auc_blur")},
    **{c: 0.005 for c in ("insertion_auc", "insertion_auc_black")},
    "pointing_game": 0.02,
    "energy_pointing_game": 0.01,
    "mask_iou": 0.03,
    "sparseness": 0.01,
}
LEFT_OUT = {f"ic@{p}" for p in (100, 50, 15)}  # 0 for every map on SpotNet (docstring)
TRIVIAL = ("constant", "centre", "untrained")
TRIVIAL_MARGIN = 0.1  # AUC by which both heads beat each trivial answer
COST_RATIO = 0.6  # fast / full forward passes of the frozen network during training


def recipe_options(path: Path) -> dict[str, Any]:
    """The head and loss options of a config's ``model:`` section (``faithfulness_*`` set the
    validation-time model selection, and no validation runs here)."""
    model = yaml.safe_load(path.read_text())["model"]
    return {
        key: value
        for key, value in model.items()
        if key not in NOT_RECIPE and not key.startswith("faithfulness_")
    }


def comparison_options() -> dict[str, Any]:
    """The quickstart comparison's metric settings (``model.comparison`` of its config), with
    the pointing game's tolerance 0 (the default 15 pixels reach most of a 32-pixel image)."""
    options = yaml.safe_load(COMPARE.read_text())["model"].get("comparison") or {}
    return {**options, "pointing_tolerance": 0, "gallery_size": 0, "max_misclassified": 0}


def spot_module(options: dict[str, Any]) -> LCAMModule:
    """A head of ``options`` on SpotNet over its three stages, Adam at a constant ``LR``."""
    return LCAMModule(
        backbone="planted_spot.SpotNet",
        num_classes=2,
        input_size=SIZE,
        target_layer=["layer1", "layer2", "layer3"],
        optimizer=lambda params: torch.optim.Adam(params, lr=LR),
        lr_scheduler=None,
        sanity_images=0,
        **options,
    )


def train(options: dict[str, Any], images: Tensor, seed: int) -> dict[str, Any]:
    """Train a head of ``options`` ``EPOCHS`` epochs on ``(N, 3, SIZE, SIZE)`` images.

    Returns ``{"module", "untrained", "passes", "seconds", "cpu_seconds"}``: ``untrained`` is the
    explainer before training; ``passes`` the images that went through the frozen network's first
    stage during the fit (every forward runs it), counted by a forward hook.
    """
    seed_everything(seed)
    module = spot_module(options)
    untrained = copy.deepcopy(module.explainer)
    items = [{"image": image, "label": torch.tensor(0)} for image in images]
    loader = torch.utils.data.DataLoader(items, batch_size=BATCH, shuffle=True)
    network = module.backbone.model
    counter = PassCounter(network.layer1, network.layer3)
    trainer = quiet_trainer(max_epochs=EPOCHS, limit_val_batches=0)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, train_dataloaders=loader)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counter.remove()
    return {
        "module": module,
        "untrained": untrained,
        "passes": counter.full,
        "seconds": wall,
        "cpu_seconds": cpu,
    }


class FixedMap(Explainer):
    """A trivial answer: the same ``(B, H, W)`` map for every image, from ``make(B, H, W)``."""

    def __init__(self, backbone: Any, name: str, make: Callable[..., Tensor]) -> None:
        super().__init__(backbone)
        self.name, self.make = name, make

    def compute_maps(self, images: Tensor, targets: Any) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.backbone(images)
        maps = self.make(len(images), *images.shape[-2:]).to(images)
        return maps, logits, resolve_targets(logits, targets)


def score(explainers: dict[str, Explainer], images: Tensor, masks: Tensor) -> dict[str, dict]:
    """``{method: {column: value}}``, every metric column of the quickstart comparison, on
    ``(N, 3, SIZE, SIZE)`` images and their ``(N, SIZE, SIZE)`` spot masks."""
    backbone = next(iter(explainers.values())).backbone
    comparison = MethodComparison(backbone, explainers, **comparison_options())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMapWarning)  # the constant map is one
        comparison.update(images, masks=masks)
    return {
        row["method"]: {k: v for k, v in row.items() if is_metric_column(k) and v is not None}
        for row in comparison.compute()
    }


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    """Both recipes trained at every seed of ``SEEDS`` (once for the module) and scored.

    ``{"options": {recipe: options}, "per_seed": [{method: {column: value}}],
    "mean": {recipe: {column: mean over seeds}}, "trivial": {answer: {column: value}},
    "passes" | "seconds" | "cpu_seconds": {recipe: sum over seeds}}``; the trivial answers are
    scored at the first seed (the constant map and the centre prior do not depend on it).
    """
    train_images, _ = spot_images(TRAIN_IMAGES, seed=0)
    test_images, spots = spot_images(TEST_IMAGES, seed=1)
    options = {name: recipe_options(path) for name, path in RECIPES.items()}
    totals: dict[str, dict[str, float]] = {k: dict.fromkeys(RECIPES, 0.0) for k in _COUNTS}
    per_seed, trivial = [], {}
    for seed in SEEDS:
        trained = {name: train(options[name], train_images, seed) for name in RECIPES}
        for key in _COUNTS:
            for name, run in trained.items():
                totals[key][name] += run[key]
        explainers: dict[str, Explainer] = {
            n: run["module"].explainer for n, run in trained.items()
        }
        if not trivial:
            backbone = trained["full"]["module"].backbone
            explainers["constant"] = FixedMap(backbone, "constant", constant_map)
            explainers["centre"] = FixedMap(backbone, "centre", centre_prior)
            explainers["untrained"] = trained["full"]["untrained"]
        table = score(explainers, test_images, spots)
        trivial = trivial or {name: table[name] for name in TRIVIAL}
        per_seed.append({name: table[name] for name in RECIPES})
    mean = {
        name: {c: sum(t[name][c] for t in per_seed) / len(SEEDS) for c in per_seed[0][name]}
        for name in RECIPES
    }
    for column in mean["full"]:
        if column in TOLERANCE:
            gaps = " / ".join(f"{t['fast'][column] - t['full'][column]:+.3f}" for t in per_seed)
            full, fast = mean["full"][column], mean["fast"][column]
            print(f"{column:22} {full:8.3f} {fast:8.3f} {fast - full:+.3f}  {gaps}")
    for name, values in trivial.items():
        print(name, {c: round(values[c], 3) for c in TOLERANCE})
    print({key: {name: round(value, 2) for name, value in v.items()} for key, v in totals.items()})
    return {"options": options, "per_seed": per_seed, "mean": mean, "trivial": trivial, **totals}


_COUNTS = ("passes", "seconds", "cpu_seconds")


def test_the_recipes_come_from_two_different_configs(runs: dict[str, Any]) -> None:
    """The configs give the two recipes different options (else the test compares a recipe
    with itself)."""
    assert runs["options"]["full"] != runs["options"]["fast"], runs["options"]


def test_every_column_has_a_tolerance_or_a_reason(runs: dict[str, Any]) -> None:
    """A column the comparison adds to its defaults fails here until a tolerance is stated (the
    per-fraction ROAD columns are covered by their means)."""
    columns = set(runs["mean"]["full"])
    per_fraction = {c for c in columns if c.startswith("road_") and "@" in c}
    assert columns - per_fraction - LEFT_OUT == set(TOLERANCE), sorted(columns)


@pytest.mark.parametrize("column", sorted(TOLERANCE))
def test_the_fast_head_is_within_the_tolerance_of_the_full_head(
    runs: dict[str, Any], column: str
) -> None:
    """``|fast - full| <= TOLERANCE[column]`` on the mean over ``SEEDS``."""
    full, fast = runs["mean"]["full"][column], runs["mean"]["fast"][column]
    seeds = [round(t["fast"][column] - t["full"][column], 4) for t in runs["per_seed"]]
    assert abs(fast - full) <= TOLERANCE[column], (
        f"{column}: fast {fast:.4f} against full {full:.4f} (tolerance {TOLERANCE[column]}; "
        f"fast - full per seed {seeds})"
    )


@pytest.mark.parametrize(
    "column", ["deletion_auc", "deletion_auc_blur", "insertion_auc", "insertion_auc_black"]
)
def test_both_heads_beat_the_trivial_answers(runs: dict[str, Any], column: str) -> None:
    """Each head's mean AUC beats a constant map, a centre prior and the untrained head by
    ``TRIVIAL_MARGIN`` (deletion: lower is better)."""
    sign = -1.0 if column.startswith("deletion") else 1.0
    for recipe in RECIPES:
        head = runs["mean"][recipe][column]
        for name, values in runs["trivial"].items():
            assert sign * (head - values[column]) >= TRIVIAL_MARGIN, (
                f"{recipe} head {head:.3f} against {name} {values[column]:.3f} on {column}"
            )


def test_the_fast_recipe_costs_at_most_the_stated_share_of_forward_passes(
    runs: dict[str, Any],
) -> None:
    """Images through the frozen network during training, counted: fast <= COST_RATIO x full."""
    passes = runs["passes"]
    assert passes["full"] > 0
    ratio = passes["fast"] / passes["full"]
    assert ratio <= COST_RATIO, f"fast/full forward passes {ratio:.3f} ({passes})"
