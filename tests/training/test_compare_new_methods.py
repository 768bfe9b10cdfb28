"""``train.py test`` (LightningCLI, in-process) compares the methods and metrics of issue 33: every
new method's row has a finite value in every new metric column of ``comparison.csv``."""

from __future__ import annotations

import csv
import math

from test_resume import _config

from lcam.cli import main as cli_main

METHODS = [
    "layercam",
    "hirescam",
    "eigencam",
    "fullgrad",
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
]
# few steps and draws: the test checks that the pieces run together, not the methods' quality
OPTIONS = (
    "{integrated_gradients: {steps: 4}, smoothgrad: {num_samples: 3},"
    " gradient_shap: {num_samples: 3}}"
)
METRICS = [
    "adic",
    "faithfulness_correlation",
    "monotonicity",
    "sparseness",
    "infidelity",
    "random_logit",
]
SETTINGS = (
    "faithfulness_runs: 8, faithfulness_subset: 64, monotonicity_steps: 4,"
    " infidelity_samples: 3, gallery_size: 0"
)
NEW_COLUMNS = [
    "faithfulness_correlation",
    "monotonicity",
    "monotonic",
    "sparseness",
    "infidelity",
    "random_logit",
]


def test_test_run_scores_every_new_method_with_every_new_metric(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _config(tmp_path, data={"test_size": 6, "batch_size": 6})
    cli_main(
        [
            "test",
            "--config", str(config),
            "--model.methods", "[" + ", ".join(METHODS) + "]",
            "--model.method_options", OPTIONS,
            "--model.comparison", "{metrics: [" + ", ".join(METRICS) + "], " + SETTINGS + "}",
            "--model.sanity_images", "0",
            "--model.unit_alignment", "false",
        ]
    )  # fmt: skip
    with (tmp_path / "comparison" / "comparison.csv").open() as table:
        rows = {row["method"]: row for row in csv.DictReader(table)}
    assert set(METHODS) <= set(rows), sorted(rows)
    for method in METHODS:
        for column in [*NEW_COLUMNS, "ad@15", "ic@15"]:
            text = rows[method][column]  # the table writes NaN and None as an empty cell
            assert text and math.isfinite(float(text)), (method, column, text)
        assert float(rows[method]["images"]) == 6
