"""The comparison separates the metrics a head trains on from the independent ones, takes every
metric setting from train.py's ``--model.comparison``, and scores deletion/insertion with both
baselines and ROAD by default.

The trained-on set of a head comes from its loss settings (:mod:`lcam.training.trained_on`):
kept-fraction -> ``ad@<p>``/``ic@<p>`` at its fractions, the cross-entropy on a masked image
(L-CAM-Img, TAME) -> ``ad@100``/``ic@100``, on masked features (L-CAM-Fm) -> nothing, the area
term -> ``sparseness``, the masked-response term -> ``faithfulness_correlation``/``infidelity``,
distillation -> nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import lcam
from lcam.cli import main as cli_main
from lcam.data import SyntheticShapes
from lcam.evaluation import MethodComparison, write_report
from lcam.models.tiny import SHAPES_WEIGHTS
from lcam.training import LCAMModule

ROOT = Path(__file__).resolve().parents[2]
ADIC = {f"{kind}@{p}" for p in ("100", "50", "15") for kind in ("ad", "ic")}
SMALL = {"deletion_steps": 2, "road_fractions": [0.5], "gallery_size": 0, "max_misclassified": 0}


def _module(**settings) -> LCAMModule:
    options = dict(
        backbone="lcam.models.TinyResNet",
        weights=str(SHAPES_WEIGHTS),
        num_classes=6,
        input_size=64,
        sanity_images=0,
        unit_alignment=False,
    )
    return LCAMModule(**{**options, **settings})


def _images(count: int = 4) -> torch.Tensor:
    data = SyntheticShapes(count, seed=7)
    return torch.stack([data[i]["image"] for i in range(count)])


def _rows(module: LCAMModule, images: torch.Tensor) -> dict[str, dict]:
    """The comparison rows of a ``test`` run's evaluation (built by the module's own test-start
    hook, as ``train.py test`` does), by method."""
    module.on_test_start()
    module.evaluation.comparison.update(images)
    return {row["method"]: row for row in module.evaluation.comparison.results()["rows"]}


def _forwards(backbone: lcam.FrozenBackbone, run) -> int:
    """Images the classifier's forward saw while ``run()`` ran (measured with a hook)."""
    seen = [0]
    handle = backbone.register_forward_hook(
        lambda m, i, o: seen.__setitem__(0, seen[0] + len(i[0]))
    )
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("head", "fractions", "expected"),
    [
        ("lcam_fm", (1.0, 0.5, 0.15), ADIC),
        ("lcam_fm", (0.5,), {"ad@50", "ic@50"}),  # the term's own fractions, not the table's
        ("tame", (0.5,), {"ad@100", "ic@100", "ad@50", "ic@50"}),  # + TAME's masked-image CE
    ],
)
def test_a_kept_fraction_heads_row_marks_its_adic_columns_and_no_other(
    head, fractions, expected, tmp_path
) -> None:
    module = _module(
        head=head,
        area_weight=0.0,  # the area term would add sparseness (a default column)
        kept_fraction_weight=0.5,
        kept_fraction_options={"fractions": list(fractions)},
        methods=["lcam", "gradcam"],
        comparison=SMALL,
    )
    rows = _rows(module, _images())
    assert set(rows["lcam"]["trained_on"].split()) == expected
    assert rows["gradcam"]["trained_on"] == ""  # a classic method trains on nothing
    assert {"deletion_auc", "insertion_auc", "road_morf@50"} <= set(rows["lcam"])

    paths = write_report(list(rows.values()), tmp_path)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    trained_part, independent_part = markdown.split("**Independent metrics**")
    assert "**Metrics a head trains on**" in trained_part
    header = next(line for line in trained_part.splitlines() if line.startswith("| method"))
    assert set(header.strip("| ").split(" | ")[1:]) == expected
    lcam_cells = next(line for line in trained_part.splitlines() if line.startswith("| lcam"))
    gradcam_cells = next(line for line in trained_part.splitlines() if line.startswith("| grad"))
    assert all(cell.endswith("*") for cell in lcam_cells.strip("| ").split(" | ")[1:])
    assert "*" not in gradcam_cells
    table = [line for line in independent_part.splitlines() if line.startswith("|")]
    assert table and not any("*" in line for line in table)
    assert "A value marked * is one the row's method trains on" in independent_part

    page = paths["html"].read_text(encoding="utf-8")
    headline = page[page.index('id="metrics"') : page.index("</table>")]
    assert ">metrics a head trains on</th>" in headline and ">independent metrics</th>" in headline
    marked = re.findall(r'<td class="[^"]*trained[^"]*">([^<]*)</td>', headline)
    assert len(marked) == len(expected) and all(text.endswith("*") for text in marked)
    assert "A value marked * is one the row&#x27;s method trains on" in page


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"head": "lcam_fm", "teacher": "gradcam", "area_weight": 0.0}, set()),
        ({"head": "lcam_fm", "teacher": "gradcam"}, {"sparseness"}),  # the area term
        ({"head": "lcam_img", "area_weight": 0.0}, {"ad@100", "ic@100"}),
        ({"head": "tame", "area_weight": 0.0, "ce_weight": 0.0}, set()),
        (
            {"head": "tame", "area_weight": 0.0, "masked_response_weight": 0.5},
            {"ad@100", "ic@100", "faithfulness_correlation", "infidelity"},
        ),
    ],
)
def test_the_trained_on_set_follows_the_loss_settings(settings, expected) -> None:
    assert _module(**settings).trained_on == expected


def test_a_test_run_marks_what_the_checkpoint_was_trained_with_not_its_own_config(
    tmp_path,
) -> None:
    """A head trained with the removed-fraction term, tested from a config without it (as
    ``quickstart_compare.yaml`` is), still marks deletion as trained on; and a head trained
    without it, tested from a config with it, does not."""
    with_term = _module(head="tame", area_weight=0.0, removed_fraction_weight=2.0)
    without = _module(head="tame", area_weight=0.0)
    assert {"deletion_auc", "deletion_auc_blur"} <= with_term.trained_on
    for trained, tested in ((with_term, without), (without, with_term)):
        path = tmp_path / "head.ckpt"
        trained_state = {
            "lcam": lcam.api.explainer_metadata(trained.explainer),
            "hyper_parameters": dict(trained.hparams),
            "state_dict": trained.state_dict(),
        }
        torch.save(trained_state, path)
        loaded = _module(**{**dict(tested.hparams)})
        loaded.on_load_checkpoint(torch.load(path, weights_only=True))
        assert loaded.trained_on == trained.trained_on, (trained.hparams, tested.hparams)


def test_a_distilled_l_cam_fm_rows_only_mark_is_the_area_terms_sparseness() -> None:
    module = _module(
        head="lcam_fm",
        teacher="gradcam",
        methods=["lcam", "gradcam"],
        comparison={**SMALL, "metrics": ["adic", "deletion_insertion", "sparseness"]},
    )
    rows = _rows(module, _images())
    assert rows["lcam"]["trained_on"] == "sparseness" and rows["gradcam"]["trained_on"] == ""


def test_both_deletion_baselines_and_road_by_default_at_the_documented_cost() -> None:
    """Default metrics: deletion/insertion AUC with the black and the blurred baseline, ROAD
    MoRF and LeRF, AD/IC; 404 + 14 + 4 forwards per image besides the explanation (the figure
    MethodComparison's docstring states), measured."""
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )
    head = lcam.build_explainer(backbone, "tame")
    comparison = MethodComparison(backbone, {"lcam": head}, gallery_size=0, max_misclassified=0)
    images = _images(2)
    seen = _forwards(backbone, lambda: comparison.update(images))
    row = comparison.compute()[0]
    for column in ("deletion_auc", "deletion_auc_blur", "insertion_auc", "insertion_auc_black"):
        assert 0 <= row[column] <= 1, column
    assert row["insertion_auc"] != pytest.approx(row["insertion_auc_black"], abs=1e-4)
    assert row["deletion_auc"] != pytest.approx(row["deletion_auc_blur"], abs=1e-4)
    assert {
        "road_morf_mean",
        "road_lerf_mean",
        "road_morf@90",
        "road_lerf@10",
        "sparseness",
    } <= set(row)
    # One untimed warm-up forward per image; the head's own pass does not call forward.
    assert seen / len(images) == 1 + 2 * 2 * 101 + 7 * 2 + (3 + 1)


@pytest.mark.parametrize(
    ("metric", "option", "low", "high"),
    [
        ("faithfulness_correlation", "faithfulness_runs", 2, 6),
        ("monotonicity", "monotonicity_steps", 2, 5),
        ("infidelity", "infidelity_samples", 2, 5),
    ],
)
def test_a_comparison_option_from_train_py_reaches_its_metric(metric, option, low, high) -> None:
    """Each extra run/step/sample is one more forward per image, through LCAMModule's
    ``comparison`` (what ``--model.comparison`` and the YAML fill)."""
    images = _images(2)
    counts = {}
    for value in (low, high):
        settings = {**SMALL, "metrics": [metric], option: value, "faithfulness_subset": 16}
        module = _module(head="lcam_fm", methods=["lcam"], comparison=settings)
        counts[value] = _forwards(module.backbone, lambda m=module: _rows(m, images))
    assert counts[high] - counts[low] == (high - low) * len(images), counts


def test_the_deletion_baselines_option_selects_the_columns() -> None:
    module = _module(
        head="lcam_fm",
        methods=["lcam"],
        comparison={**SMALL, "metrics": ["deletion_insertion"], "deletion_baselines": ["black"]},
    )
    row = _rows(module, _images(2))["lcam"]
    assert {key for key in row if "_auc" in key} == {"deletion_auc", "insertion_auc_black"}


def test_a_misspelled_comparison_key_fails_at_start_naming_the_valid_keys(tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r"\['faithfulnes_runs'\]; valid keys: .*faithfulness_runs"
    ):
        _module(comparison={"faithfulnes_runs": 20})
    with pytest.raises(ValueError, match="deletion_baselines must be among"):
        _module(comparison={"deletion_baselines": ["grey"]})
    # Through train.py: the error comes while the module is built, before any data or test step.
    args = [
        "test",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        f"--model.weights={SHAPES_WEIGHTS}",
        "--model.comparison={metrics: [adic], faithfulnes_runs: 20}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.limit_test_batches=1",
    ]
    with pytest.raises(ValueError, match=r"unknown comparison option\(s\) \['faithfulnes_runs'\]"):
        cli_main(args)
    assert not any(tmp_path.iterdir())
