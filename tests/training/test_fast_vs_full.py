"""The fast recipe against the full recipe on data whose faithful map is known (issue 34).

The two recipes are the head and loss options of the ``model:`` sections of
``configs/quickstart.yaml`` (full: TAME + 0.5 x the kept-fraction term, every kept fraction
100/50/15 % per image and step) and ``configs/quickstart_fast.yaml`` (fast: the same with
``kept_fraction_options: {sampling: one}``, one fraction drawn per image and step), read from
the files, so that a term added to both configs is trained here too. Each trains a head on
:class:`planted_spot.SpotNet` (only a green square moves its logit, placed at random next to a
red distractor; 512 training images) at seeds 0, 1 and 2, with the same data and the same 3
epochs for both (the configs' 4 against 3 epochs, the fast recipe's other saving, is not
compared here), Adam 3e-3, batch 32. Every metric column of the quickstart comparison (its
default metrics and ``configs/quickstart_compare.yaml``'s settings, with the pointing game's
tolerance 0: the peak must fall on the spot) scores both heads on 128 held-out images, averaged
over the three seeds.

Quality: on every column, ``|fast - full| <= tolerance`` on the mean over the seeds. IC at
100/50/15 % is left out: it is 0 for every map on this net (a mask can only remove green, so the
probability never rises); the per-fraction ROAD columns are covered by their means. Measured
2026-12-07 (fast - full per seed 0 / 1 / 2 in the last column):

=====================  ======  ======  =========  =========  ==========================
column                 full    fast    fast-full  tolerance  per seed
=====================  ======  ======  =========  =========  ==========================
ad@100, ad@50          15.145  15.060  -0.085     0.3        -0.194 / +0.006 / -0.067
ad@15                  15.192  15.111  -0.081     0.3        -0.179 / +0.005 / -0.068
road_morf_mean         0.007   0.007   +0.000     0.02       +0.001 / +0.000 / +0.000
road_lerf_mean         1.000   1.000   0          0.02       0 / 0 / 0
deletion_auc           0.164   0.164   +0.000     0.005      +0.001 / -0.000 / -0.000
deletion_auc_blur      0.239   0.240   +0.000     0.005      +0.001 / -0.000 / -0.000
insertion_auc          0.942   0.942   -0.000     0.005      -0.000 / +0.000 / -0.000
insertion_auc_black    0.940   0.940   -0.000     0.005      -0.000 / +0.000 / -0.000
pointing_game          0.984   0.984   0          0.02       0 / 0 / 0
energy_pointing_game   0.142   0.141   -0.001     0.01       -0.002 / +0.000 / -0.000
mask_iou               0.385   0.380   -0.005     0.03       -0.019 / +0.005 / -0.001
sparseness             0.267   0.266   -0.001     0.01       -0.002 / -0.001 / -0.000
=====================  ======  ======  =========  =========  ==========================

So that two broken heads cannot meet the tolerance, both heads beat a constant map, a centre
prior and the untrained head (seed 0) by ``TRIVIAL_MARGIN`` = 0.1 AUC on deletion and insertion
(smallest measured gap 0.18, insertion against the centre prior):

===================  ========  ======  =========
AUC                  constant  centre  untrained
===================  ========  ======  =========
deletion_auc         0.574     0.440   0.739
deletion_auc_blur    0.617     0.482   0.770
insertion_auc        0.597     0.763   0.511
insertion_auc_black  0.560     0.720   0.454
===================  ========  ======  =========

What the tolerance catches, and what it cannot: with the fast recipe's draw forced to the 100 %
fraction, AD at 100/50/15 % fails (fast - full +0.56 / +0.56 / +0.54 on the mean; +0.85, +0.66,
+0.15 per seed). That break is worse on AD at each of seeds 0-7 (+0.05 to +0.98, run with
``fractions: [1.0]``), while the fast recipe itself ranged -0.21 to +0.26. The other columns
barely separate any variant on this net: the spot covers 6 % of the image, so keeping the top
15 % of a map on it loses no evidence, and every variant tried (only 100 %, only 15 %, no
kept-fraction term; the last two at seed 0) stayed within 0.006 AUC of the full head on
deletion and insertion.

Cost: the frozen network's forward passes during training, counted at its first stage by a
forward hook: 7,680 images per fit for the full recipe (5 per image and step: the clean forward,
the L-CAM masked pass, 3 kept-fraction passes) and 4,608 for the fast one (3), a ratio of 0.60,
asserted ``<= COST_RATIO``. Wall time of one fit, the two recipes alternated 10 times in one
process, 1 thread, load average 2.8: median 1.03 s full, 0.90 s fast (ratio 0.87). On SpotNet a
pass is a small part of a step (Lightning, the head, the optimiser), so the wall ratio stays far
above the pass ratio; on the quickstart's TinyResNet a step is 2.3-2.9x cheaper
(``configs/quickstart_fast.yaml``). The whole module takes about 25 s on 1 thread.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import yaml
from baselines import centre_prior, constant_map
from helpers import PassCounter, quiet_trainer
from planted_spot import SIZE, spot_images
from pytorch_lightning import seed_everything
from recipes import CONFIGS, RECIPES, recipe_options
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.evaluation import MethodComparison
from lcam.evaluation.specs import is_metric_column
from lcam.explainers import DegenerateMapWarning, Explainer
from lcam.explainers.base import resolve_targets
from lcam.training import LCAMModule

COMPARE = CONFIGS / "quickstart_compare.yaml"
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

    def __init__(self, backbone: FrozenBackbone, name: str, make: Callable[..., Tensor]) -> None:
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
