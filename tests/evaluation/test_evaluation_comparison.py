from __future__ import annotations

import pytest
import torch
import torchmetrics

import lcam
from lcam.data import SyntheticShapes
from lcam.evaluation import MethodComparison
from lcam.explainers.base import Explainer, resolve_targets
from lcam.metrics import AverageDropIncrease
from lcam.models.tiny import SHAPES_WEIGHTS
from lcam.viz import overlay, to_uint8


@pytest.fixture(scope="module")
def backbone() -> lcam.FrozenBackbone:
    return lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )


@pytest.fixture(scope="module")
def head(backbone: lcam.FrozenBackbone) -> lcam.LearnedExplainer:
    explainer = lcam.build_explainer(backbone, "lcam_fm")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a non-trivial head with logits of a few units
        explainer.head.conv.weight.normal_(0, 0.2, generator=generator)
        explainer.head.conv.bias.normal_(0, 1.0, generator=generator)
    return explainer


def _batch(count: int, seed: int = 5) -> dict[str, torch.Tensor]:
    data = SyntheticShapes(count, seed=seed)
    return torch.utils.data.default_collate([data[i] for i in range(count)])


class Oracle(Explainer):
    """Returns the object masks it was given (in batch order) as its maps."""

    name = "oracle"

    def __init__(self, backbone: lcam.FrozenBackbone, masks: torch.Tensor) -> None:
        super().__init__(backbone)
        self.masks = masks

    def compute_maps(self, images, targets):
        logits = self.backbone(images)
        return self.masks.float(), logits, resolve_targets(logits, targets)


class Noise(Explainer):
    name = "noise"

    def compute_maps(self, images, targets):
        logits = self.backbone(images)
        generator = torch.Generator().manual_seed(11)
        maps = torch.rand(images.shape[0], *images.shape[-2:], generator=generator)
        return maps, logits, resolve_targets(logits, targets)


def test_rows_count_the_images_explained_for_classes_the_head_never_trained_on(
    backbone,
) -> None:
    batch = _batch(12)
    explainer = lcam.build_explainer(backbone, "lcam_fm")
    with torch.no_grad():
        predicted = backbone(batch["image"]).argmax(1)
    explainer.count_training_labels(predicted[:1])  # only the first image's class was trained
    expected = int((predicted != predicted[0]).sum())
    assert 0 < expected < 12
    methods = {"lcam": explainer, "gradcam": lcam.get_explainer("gradcam", backbone)}
    comparison = MethodComparison(backbone, methods, metrics=["adic"])
    with pytest.warns(lcam.explainers.UntrainedClassWarning):
        comparison.update(batch["image"], batch["label"], batch["mask"])
    counts = {row["method"]: row["untrained_images"] for row in comparison.compute()}
    assert counts == {"lcam": expected, "gradcam": 0}


def test_trained_rows_score_only_the_images_of_trained_classes_and_rows_still_all(
    backbone,
) -> None:
    batch = _batch(12)
    images, masks = batch["image"], batch["mask"]
    explainer = lcam.build_explainer(backbone, "lcam_fm")
    with torch.no_grad():
        predicted = backbone(images).argmax(1)
    trained = predicted == predicted[0]  # the head will know only the first image's class
    assert 0 < int(trained[:8].sum()) < 8 and 0 < int(trained[8:].sum())
    methods = {"lcam": explainer, "gradcam": lcam.get_explainer("gradcam", backbone)}
    metrics = ["adic", "pointing_game", "energy_pointing_game"]
    # The images the comparison below sees: 8, then the trained-class ones of the other 4.
    seen = torch.cat([torch.arange(8), torch.arange(8, 12)[trained[8:]]])

    # References, while the head's counts are unknown (nothing is flagged): each set of images
    # scored in one batch.
    expected = {}
    for key, chosen in (("rows", seen), ("trained_rows", seen[trained[seen]])):
        reference = MethodComparison(backbone, methods, metrics=metrics)
        reference.update(images[chosen], masks=masks[chosen])
        expected[key] = reference.compute()

    explainer.count_training_labels(predicted[:1])
    comparison = MethodComparison(backbone, methods, metrics=metrics)
    # Two batches, the second with nothing flagged: both parts accumulate across batches.
    with pytest.warns(lcam.explainers.UntrainedClassWarning):
        comparison.update(images[:8], masks=masks[:8])
    comparison.update(images[seen[8:]], masks=masks[seen[8:]])
    results = comparison.results()

    flagged = int((~trained[:8]).sum())
    assert [row["images"] for row in results["trained_rows"]] == [len(seen) - flagged] * 2
    assert [row["untrained_images"] for row in results["rows"]] == [flagged, 0]
    for key in ("rows", "trained_rows"):
        for got, want in zip(results[key], expected[key], strict=True):
            for column in ("ad@100", "ic@50", "ad@15", "pointing_game", "energy_pointing_game"):
                assert got[column] == pytest.approx(want[column], abs=1e-4), (key, column)
    assert results["trained_rows"][0]["ad@15"] != pytest.approx(results["rows"][0]["ad@15"])


def test_no_trained_rows_when_no_image_is_flagged(backbone, head) -> None:
    comparison = MethodComparison(backbone, {"lcam": head}, metrics=["adic"])
    comparison.update(_batch(4)["image"])
    assert comparison.results()["trained_rows"] == []


def test_rows_have_every_column_and_the_explainers_pass_counts(backbone, head) -> None:
    batch = _batch(2)
    methods = {
        "lcam": head,
        "gradcam": lcam.get_explainer("gradcam", backbone),
        "rise": lcam.get_explainer("rise", backbone, num_masks=50),
        "lime": lcam.get_explainer("lime", backbone, num_samples=30, segmentation="slic"),
    }
    comparison = MethodComparison(
        backbone, methods, road_fractions=(0.5,), deletion_steps=4, gallery_size=8
    )
    comparison.update(batch["image"], batch["label"], batch["mask"])
    results = comparison.results()
    rows = results["rows"]

    assert [row["method"] for row in rows] == list(methods)
    expected = {
        "method",
        "images",
        "forward_passes",
        "backward_passes",
        "ms_per_image",
        "untrained_images",
        *(f"{kind}@{p}" for p in ("100", "50", "15") for kind in ("ad", "ic")),
        "road_morf@50",
        "road_lerf@50",
        "road_morf_mean",
        "road_lerf_mean",
        "deletion_auc",
        "deletion_auc_blur",
        "insertion_auc",
        "insertion_auc_black",
        "pointing_game",
        "energy_pointing_game",
        "mask_iou",
        "sparseness",
        "trained_on",
    }
    for row in rows:
        assert set(row) == expected
        assert row["images"] == 2 and row["ms_per_image"] > 0
        assert 0 <= row["pointing_game"] <= 1 and 0 <= row["mask_iou"] <= 1
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["road_lerf@50"] <= 1
    passes = {row["method"]: (row["forward_passes"], row["backward_passes"]) for row in rows}
    assert passes == {"lcam": (1, 0), "gradcam": (1, 1), "rise": (51, 0), "lime": (30, 0)}
    for name, explainer in methods.items():
        assert passes[name] == (explainer.forward_passes, explainer.backward_passes)

    # Mean curves of both baselines: step 0 of deletion and the last step of insertion are the
    # clean image; deletion ends on the baseline, insertion starts from it, and the baselines
    # differ (black is not the blurred image).
    clean = backbone(batch["image"]).softmax(1).amax(1).mean().item()
    for name in methods:
        curve = results["curves"][name]
        assert len(curve["fractions"]) == len(curve["deletion"]) == 5
        for kind in ("deletion", "deletion_blur"):
            assert curve[kind][0] == pytest.approx(clean, abs=1e-5)
        for kind in ("insertion", "insertion_black"):
            assert curve[kind][-1] == pytest.approx(clean, abs=1e-5)
        assert curve["deletion_blur"][-1] == pytest.approx(curve["insertion"][0], abs=1e-5)
        assert curve["deletion"][-1] == pytest.approx(curve["insertion_black"][0], abs=1e-5)
        assert curve["deletion"][-1] != pytest.approx(curve["deletion_blur"][-1], abs=1e-3)
    assert all(row["trained_on"] == "" for row in rows)  # none was given a training objective

    # Gallery: every image with every method's overlay, equal to the explainer's own map.
    gallery = results["gallery"]
    assert len(gallery) == 2 and set(gallery[0]["overlays"]) == set(methods)
    expected_maps = methods["gradcam"].explain(batch["image"]).maps
    for index, example in enumerate(gallery):
        assert example["image"].shape == (64, 64, 3)
        reference = to_uint8(overlay(batch["image"][index : index + 1], expected_maps[[index]]))
        got = torch.from_numpy(example["overlays"]["gradcam"]).int()
        assert (got - reference[0].int()).abs().max() <= 1


def test_head_adic_is_computed_on_the_pre_sigmoid_logit_map(backbone, head) -> None:
    images = _batch(4)["image"]
    calls = []
    original = head.compute_maps

    def counted(x, targets):
        calls.append(len(x))
        return original(x, targets)

    head.compute_maps = counted
    try:
        comparison = MethodComparison(
            backbone,
            {"lcam": head, "gradcam": lcam.get_explainer("gradcam", backbone)},
            metrics=("adic",),
        )
        comparison.update(images)
    finally:
        del head.compute_maps
    assert calls == [4]  # one pass of the head explainer per batch
    rows = {row["method"]: row for row in comparison.compute()}

    logit_head = lcam.LearnedExplainer(backbone, head.head, map_activation="logit")
    logit_maps, _, _ = logit_head.compute_maps(images, None)  # (B, h, w) raw logit maps
    reference = AverageDropIncrease(backbone)
    reference.update(images, logit_maps)
    sigmoid = AverageDropIncrease(backbone)
    sigmoid.update(images, head.explain(images).maps)
    for key, value in reference.compute().items():
        assert rows["lcam"][key] == pytest.approx(float(value), abs=1e-4)
    assert any(
        abs(rows["lcam"][key] - float(value)) > 0.5 for key, value in sigmoid.compute().items()
    )
    gradcam_raw, _, _ = lcam.get_explainer("gradcam", backbone).compute_maps(images, None)
    reference = AverageDropIncrease(backbone)
    reference.update(images, gradcam_raw)
    for key, value in reference.compute().items():
        assert rows["gradcam"][key] == pytest.approx(float(value), abs=1e-4)


def test_learned_maps_shown_scores_the_head_on_the_map_it_shows(backbone, head) -> None:
    """The same single explanation, scored on ``sigmoid`` of the logit map (normalised, then
    upsampled); the classic methods' rows do not change."""
    images = _batch(4)["image"]
    explainers = {"lcam": head, "gradcam": lcam.get_explainer("gradcam", backbone)}
    rows = {}
    for learned_maps in ("logit", "shown"):
        comparison = MethodComparison(
            backbone, explainers, metrics=("adic",), learned_maps=learned_maps
        )
        comparison.update(images)
        rows[learned_maps] = {row["method"]: row for row in comparison.compute()}
    logit_head = lcam.LearnedExplainer(backbone, head.head, map_activation="logit")
    logit_maps, _, _ = logit_head.compute_maps(images, None)  # (B, h, w) raw logit maps
    reference = AverageDropIncrease(backbone)
    reference.update(images, logit_maps.sigmoid())
    for key, value in reference.compute().items():
        assert rows["shown"]["lcam"][key] == pytest.approx(float(value), abs=1e-4), key
        assert rows["shown"]["gradcam"][key] == rows["logit"]["gradcam"][key], key
    assert any(
        abs(rows["shown"]["lcam"][key] - rows["logit"]["lcam"][key]) > 0.5
        for key in reference.compute()
    )


def test_an_oracle_beats_noise_on_localisation_with_masks_or_boxes(backbone) -> None:
    batch = _batch(8)
    masks = batch["mask"]
    methods = {"oracle": Oracle(backbone, masks), "noise": Noise(backbone)}
    comparison = MethodComparison(
        backbone,
        methods,
        metrics=("pointing_game", "energy_pointing_game", "mask_iou"),
        pointing_tolerance=0,
    )
    comparison.update(batch["image"], masks=masks)
    rows = {row["method"]: row for row in comparison.compute()}
    assert rows["oracle"]["pointing_game"] == 1.0
    assert rows["oracle"]["energy_pointing_game"] == pytest.approx(1.0)
    assert rows["oracle"]["mask_iou"] == pytest.approx(1.0)
    assert rows["noise"]["pointing_game"] < 0.75
    assert rows["noise"]["energy_pointing_game"] < 0.5
    assert rows["noise"]["mask_iou"] < 0.5

    # Boxes (one list per image) become their union masks; the oracle returns those masks.
    rows_idx = torch.arange(64)
    boxes = []
    for mask in masks:
        ys, xs = rows_idx[mask.any(1)], rows_idx[mask.any(0)]
        boxes.append([[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]])
    box_masks = torch.zeros_like(masks)
    for index, ((x0, y0, x1, y1),) in enumerate(boxes):
        box_masks[index, y0:y1, x0:x1] = True
    comparison = MethodComparison(
        backbone,
        {"oracle": Oracle(backbone, box_masks)},
        metrics=("pointing_game", "mask_iou"),
        pointing_tolerance=0,
    )
    comparison.update(batch["image"], boxes=boxes)
    row = comparison.compute()[0]
    assert row["pointing_game"] == 1.0 and row["mask_iou"] == pytest.approx(1.0)


def test_without_masks_localisation_columns_are_none(backbone) -> None:
    comparison = MethodComparison(
        backbone, {"noise": Noise(backbone)}, metrics=("pointing_game", "mask_iou")
    )
    comparison.update(_batch(2)["image"])
    row = comparison.compute()[0]
    assert row["pointing_game"] is None and row["mask_iou"] is None
    assert row["images"] == 2


def test_misclassified_images_show_the_predicted_and_the_true_class(backbone, head) -> None:
    batch = _batch(4)
    images = batch["image"]
    predicted = backbone(images).argmax(1)
    labels = predicted.clone()
    labels[[1, 3]] = (predicted[[1, 3]] + 1) % 6  # two "misclassified" images
    gradcam = lcam.get_explainer("gradcam", backbone)
    comparison = MethodComparison(
        backbone,
        {"lcam": head, "gradcam": gradcam},
        metrics=(),
        gallery_size=1,
        max_misclassified=8,
    )
    comparison.update(images, labels)
    assert len(comparison.gallery) == 1
    examples = comparison.misclassified
    assert [e["label"] for e in examples] == labels[[1, 3]].tolist()
    assert [e["prediction"] for e in examples] == predicted[[1, 3]].tolist()
    for position, row in enumerate((1, 3)):
        for name, explainer in (("lcam", head), ("gradcam", gradcam)):
            pair = examples[position]["overlays"][name]
            for kind, target in (("predicted", predicted[row]), ("true", labels[row])):
                maps = explainer.explain(images[[row]], targets=target.view(1)).maps
                reference = to_uint8(overlay(images[[row]], maps))[0].int()
                assert (torch.from_numpy(pair[kind]).int() - reference).abs().max() <= 1
    comparison.update(images, labels)  # room for more: two more misclassified kept
    assert len(comparison.misclassified) == 4 and len(comparison.gallery) == 1
    comparison.reset()
    assert comparison.misclassified == [] and comparison.gallery == []
    assert comparison.compute()[0]["images"] == 0


def test_update_in_inference_mode_and_max_sensitivity_on_request(backbone) -> None:
    images = _batch(2)["image"]
    gradcam = lcam.get_explainer("gradcam", backbone)
    comparison = MethodComparison(
        backbone,
        {"gradcam": gradcam},
        metrics=("adic", "max_sensitivity"),
        sensitivity_samples=2,
    )
    wrong = (backbone(images).argmax(1) + 1) % 6
    with torch.inference_mode():  # as in Lightning's test loop
        comparison.update(images, wrong)  # misclassified: a second Grad-CAM for the labels
        comparison.update(images)
        row = comparison.compute()[0]
    assert row["images"] == 4 and row["max_sensitivity"] >= 0
    assert [example["label"] for example in comparison.misclassified] == wrong.tolist()
    assert "ad@100" in row and "deletion_auc" not in row
    default = MethodComparison(backbone, {"gradcam": gradcam})
    assert "max_sensitivity" not in default.metric_names


def test_bad_options_are_refused(backbone) -> None:
    gradcam = lcam.get_explainer("gradcam", backbone)
    with pytest.raises(ValueError, match="unknown metrics"):
        MethodComparison(backbone, {"gradcam": gradcam}, metrics=("adic", "accuracy"))
    with pytest.raises(ValueError, match="without '.'"):
        MethodComparison(backbone, {"grad.cam": gradcam})
    with pytest.raises(ValueError, match="at least one"):
        MethodComparison(backbone, {})
    with pytest.raises(ValueError, match="learned_maps must be one of logit, shown, got 'sigmoid'"):
        MethodComparison(backbone, {"gradcam": gradcam}, learned_maps="sigmoid")


def test_the_comparison_adds_nothing_to_a_state_dict(backbone, head) -> None:
    comparison = MethodComparison(backbone, {"lcam": head})
    assert comparison.state_dict() == {}


def test_states_reduce_by_sums_as_under_ddp(backbone) -> None:
    """Two processes' states merged with their reductions equal one process on all images."""
    batch = _batch(4)
    options = dict(metrics=("adic", "deletion_insertion", "pointing_game"), deletion_steps=2)
    whole = MethodComparison(
        backbone, {"gradcam": lcam.get_explainer("gradcam", backbone)}, **options
    )
    whole.update(batch["image"], masks=batch["mask"])
    parts = []
    for half in (slice(0, 3), slice(3, 4)):  # unequal halves on purpose
        part = MethodComparison(
            backbone, {"gradcam": lcam.get_explainer("gradcam", backbone)}, **options
        )
        part.update(batch["image"][half], masks=batch["mask"][half])
        parts.append(part)
    metrics = [m for m in parts[0].modules() if isinstance(m, torchmetrics.Metric)]
    others = [m for m in parts[1].modules() if isinstance(m, torchmetrics.Metric)]
    for metric, other in zip(metrics, others, strict=True):
        metric.merge_state(other)
    merged, expected = parts[0].compute()[0], whole.compute()[0]
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        if key not in ("method", "ms_per_image", "trained_on"):
            # float32 sums in a different order (and batch-dependent conv numerics): ~3e-7 relative
            assert merged[key] == pytest.approx(value, rel=1e-6, abs=1e-5), key
