"""The shipped recipes' head and loss options, read from the configs, so tests that train them on
small nets follow the configs when a term is added or a weight changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lcam.training.evaluation_run import EVALUATION_ARGUMENTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {"full": CONFIGS / "quickstart.yaml", "fast": CONFIGS / "quickstart_fast.yaml"}
# model: keys naming the quickstart's backbone, optimiser and evaluation: a test's own net and
# settings take their place. Every other key (the head and its loss terms) is the recipe.
NOT_RECIPE = ("backbone", "weights", "num_classes", "input_size", "target_layer")
NOT_RECIPE += ("optimizer", "lr_scheduler", *EVALUATION_ARGUMENTS)


def recipe_options(path: Path) -> dict[str, Any]:
    """The head and loss options of a config's ``model:`` section (``faithfulness_*`` set the
    validation-time model selection, which these tests do not run)."""
    model = yaml.safe_load(path.read_text())["model"]
    return {
        key: value
        for key, value in model.items()
        if key not in NOT_RECIPE and not key.startswith("faithfulness_")
    }
