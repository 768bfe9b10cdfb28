"""The Quantus-style metrics in the method comparison: opt-in, one column each with its stated
direction, arrows in the report's table, and sum states that merge like DDP's reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torchmetrics

import lcam
from lcam.data import SyntheticShapes
from lcam.evaluation import DEFAULT_METRICS, MethodComparison
from lcam.evaluation.report.sections import metrics_section
from lcam.evaluation.specs import OPT_IN_METRICS, column_direction
from lcam.models.tiny import SHAPES_WEIGHTS

NEW = ("faithfulness_correlation", "monotonicity", "infidelity", "sparseness", "random_logit")
DIRECTIONS = {
    "faithfulness_correlation": +1,
    "monotonicity": +1,
    "monotonic": +1,
    "infidelity": -1,
    "sparseness": +1,
    "random_logit": -1,
}


@pytest.fixture(scope="module")
def backbone() -> lcam.FrozenBackbone:
    return lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )


def _images(count: int) -> torch.Tensor:
    data = SyntheticShapes(count, seed=5)
    return torch.stack([data[i]["image"] for i in range(count)])


def _comparison(backbone: lcam.FrozenBackbone, metrics: tuple[str, ...]) -> MethodComparison:
    explainers = {name: lcam.get_explainer(name, backbone) for name in ("gradcam", "layercam")}
    return MethodComparison(backbone, explainers, metrics=metrics, gallery_size=0)


def test_rows_carry_every_new_column_with_its_direction(backbone) -> None:
    # Sparseness costs no forward: it is a default metric, the others opt in.
    assert set(NEW) - {"sparseness"} <= set(OPT_IN_METRICS)
    assert set(NEW) & set(DEFAULT_METRICS) == {"sparseness"}
    comparison = _comparison(backbone, NEW)
    comparison.update(_images(3))
    rows = comparison.compute()
    for row in rows:
        for column, direction in DIRECTIONS.items():
            assert math.isfinite(row[column]), (row["method"], column)
            assert column_direction(column) == direction, column
        assert -1 <= row["faithfulness_correlation"] <= 1 and 0 <= row["sparseness"] < 1
        assert 0 <= row["monotonic"] <= row["monotonicity"] <= 1 and row["infidelity"] >= 0
    html = metrics_section(rows)
    assert "infidelity ↓" in html and "faithfulness_correlation ↑" in html.replace("_<wbr>", "_")


def test_deterministic_metrics_merge_like_ddp(backbone) -> None:
    """Sparseness and monotonicity draw nothing: two processes' merged sums equal one process
    (the random metrics' sums merge the same way, but their draws depend on the split)."""
    images = _images(4)
    whole = _comparison(backbone, ("sparseness", "monotonicity"))
    whole.update(images)
    parts = []
    for half in (slice(0, 3), slice(3, 4)):
        part = _comparison(backbone, ("sparseness", "monotonicity"))
        part.update(images[half])
        parts.append(part)
    metrics = [m for m in parts[0].modules() if isinstance(m, torchmetrics.Metric)]
    others = [m for m in parts[1].modules() if isinstance(m, torchmetrics.Metric)]
    for metric, other in zip(metrics, others, strict=True):
        metric.merge_state(other)
    for merged, expected in zip(parts[0].compute(), whole.compute(), strict=True):
        for column in ("sparseness", "monotonicity", "monotonic"):
            assert merged[column] == pytest.approx(expected[column], rel=1e-6), column
