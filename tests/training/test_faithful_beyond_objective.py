"""The recommended head is faithful on metrics it does not train on, where the faithful map is
known.

:class:`planted_spot.SpotNet` predicts from a green square alone, placed uniformly at random on
grey clutter next to a red distractor square (see :mod:`planted_spot`). The head of the
recommended recipe (TAME + 0.5 x the kept-fraction term, as ``configs/quickstart.yaml`` sets it)
trains briefly on such images; on held-out ones it must beat a constant map, a centre prior, the
untrained head and Grad-CAM on deletion AUC (lower is better) and insertion AUC (higher), with
the blurred and the constant (black) insertion baseline. Neither metric is part of the training
objective (the kept-fraction term keeps the top 100/50/15 % of the map; deletion removes pixels
most-salient first in 16 steps, insertion adds them to a blurred or black image).

Margin: the trained head's AUC lies at least 60 % of the way from each competitor's AUC to the
oracle's (the green square itself as the map). Measured with seed 0 (512 training images, 3
epochs, Adam 3e-3, 64 held-out images):

=================  =======  ========  ======  ========  =========  ======
AUC                trained  Grad-CAM  centre  constant  untrained  oracle
=================  =======  ========  ======  ========  =========  ======
deletion           0.166    0.237     0.404   0.573     0.332      0.146
insertion, blur    0.949    0.919     0.806   0.615     0.887      0.952
insertion, black   0.946    0.911     0.773   0.582     0.875      0.950
=================  =======  ========  ======  ========  =========  ======

The head closes 78 % (deletion, from Grad-CAM) to 95 % of those distances. The same game runs
for ``tame_lite`` (the recipe with only the head changed), which is not the recommended head but
whose quality the results page cites; measured (seed 0, 1 thread): deletion 0.161, insertion
0.949 (blur) and 0.947 (black); its untrained head 0.512, 0.809 and 0.783.
"""

from __future__ import annotations

import pytest
import torch
from baselines import centre_prior, constant_map, margin_report
from helpers import quiet_trainer
from planted_spot import SIZE, spot_images
from pytorch_lightning import seed_everything
from recipes import RECIPES, recipe_options

from lcam import get_explainer
from lcam.metrics import DeletionInsertion
from lcam.training import LCAMModule

STEPS = 16  # deletion/insertion steps: 1/16 of the pixels per step
COMPETITORS = ("gradcam", "constant", "centre", "untrained")
CLOSED = 0.6  # the trained head closes >= 60 % of each competitor's distance to the oracle


# The recipe's own head, and the recipe with only the head replaced.
HEADS = {"recommended": {}, "tame_lite": {"head": "tame_lite"}}


def recommended_module(head: str = "recommended") -> LCAMModule:
    """The quickstart recipe's head and loss terms (read from ``configs/quickstart.yaml``) over
    SpotNet's three stages; ``head`` names an entry of ``HEADS``."""
    return LCAMModule(
        backbone="planted_spot.SpotNet",
        num_classes=2,
        input_size=SIZE,
        target_layer=["layer1", "layer2", "layer3"],
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        lr_scheduler=None,
        sanity_images=0,
        **{**recipe_options(RECIPES["full"]), **HEADS[head]},
    )


def scores(
    module: LCAMModule, maps: dict[str, torch.Tensor], images: torch.Tensor
) -> dict[str, dict[str, float]]:
    """``{"deletion" | "insertion_blur" | "insertion_black": {answer: AUC}}``."""
    table: dict[str, dict[str, float]] = {"deletion": {}, "insertion_blur": {}}
    table["insertion_black"] = {}
    for baseline in ("blur", "black"):
        for name, answer in maps.items():
            metric = DeletionInsertion(module.backbone, steps=STEPS, baseline=baseline)
            metric.update(images, answer)
            result = metric.compute()
            table["deletion"][name] = float(result["deletion_auc"])  # black removal either way
            table[f"insertion_{baseline}"][name] = float(result["insertion_auc"])
    return table


@pytest.fixture(scope="module", params=list(HEADS))
def table(request: pytest.FixtureRequest) -> dict[str, dict[str, float]]:
    seed_everything(0)
    train, _ = spot_images(512, seed=0)
    test, spots = spot_images(64, seed=1)
    items = [{"image": image, "label": torch.tensor(0)} for image in train]
    loader = torch.utils.data.DataLoader(items, batch_size=32, shuffle=True)
    module = recommended_module(request.param)
    untrained = module.explainer.explain(test).maps
    quiet_trainer(max_epochs=3, limit_val_batches=0).fit(module, train_dataloaders=loader)
    maps = {
        "trained": module.explainer.explain(test).maps,
        "gradcam": get_explainer("gradcam", module.backbone).explain(test).maps,
        "constant": constant_map(len(test), SIZE, SIZE),
        "centre": centre_prior(len(test), SIZE, SIZE),
        "untrained": untrained,
        "oracle": spots.float(),  # the faithful map, for scale only
    }
    result = scores(module, maps, test)
    for metric, values in result.items():
        print(metric, margin_report(values))
    return result


@pytest.mark.parametrize("metric", ["deletion", "insertion_blur", "insertion_black"])
def test_trained_head_beats_gradcam_and_trivial_maps_on_metrics_it_does_not_train_on(
    table: dict[str, dict[str, float]], metric: str
) -> None:
    """Margin: the trained head's AUC lies at least ``CLOSED`` of the way from each competitor's
    AUC to the oracle's (the green square itself), which must be better by 0.02 or more."""
    values = table[metric]
    report = margin_report(values)
    sign = -1.0 if metric == "deletion" else 1.0  # deletion: lower is better
    for competitor in COMPETITORS:
        room = sign * (values["oracle"] - values[competitor])
        assert room >= 0.02, f"the oracle does not beat {competitor}: {report}"
        closed = sign * (values["trained"] - values[competitor]) / room
        assert closed >= CLOSED, f"{closed:.0%} of the way from {competitor}: {report}"
