from __future__ import annotations

import pytest
import torch
from helpers import correlation, quiet_trainer, shapes_module

import lcam
from lcam.data import SyntheticShapesDataModule
from lcam.training import LCAMModule
from lcam.training.distillation import TeacherMaps, map_distance


def _fit(module: LCAMModule, data: SyntheticShapesDataModule, epochs: int = 1) -> None:
    quiet_trainer(max_epochs=epochs, limit_val_batches=0).fit(module, datamodule=data)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return correlation(a, b).mean().item()


def test_a_gradcam_teacher_pulls_the_head_towards_gradcam() -> None:
    data = SyntheticShapesDataModule(train_size=512, val_size=8, test_size=128, batch_size=32)
    plain, taught = shapes_module(), shapes_module(teacher="gradcam", distill_weight=20.0)
    torch.manual_seed(0)
    _fit(plain, data, epochs=2)
    torch.manual_seed(0)
    _fit(taught, data, epochs=2)
    held_apart = data.dataset("test")
    images = torch.stack([held_apart[i]["image"] for i in range(len(held_apart))])
    gradcam = lcam.get_explainer("gradcam", taught.backbone).explain(images)
    with_teacher = _correlation(taught.explainer.explain(images).maps, gradcam.maps)
    without = _correlation(plain.explainer.explain(images).maps, gradcam.maps)
    assert with_teacher > without + 0.01, (with_teacher, without)

    def distance_to_teacher(module: LCAMModule) -> float:
        with torch.no_grad():
            output, class_maps = module.explainer.class_maps(images)
            own = module.explainer.select(class_maps, gradcam.targets)
        return map_distance(own, taught.teacher.compute(images, gradcam.targets, (8, 8))).item()

    assert distance_to_teacher(taught) < 0.6 * distance_to_teacher(plain)


def test_cache_is_built_once_reused_and_checked(tmp_path) -> None:
    data = SyntheticShapesDataModule(train_size=48, val_size=8, batch_size=16)
    cache = tmp_path / "gradcam_maps.pt"
    module = shapes_module(teacher="gradcam", teacher_cache=str(cache))
    _fit(module, data)
    stored = torch.load(cache, weights_only=True)
    assert stored["maps"].shape == (48, 8, 8) and stored["meta"]["teacher"] == "gradcam"
    dataset = data.dataset("train")
    batch = torch.utils.data.default_collate([dataset[i] for i in (5, 17)])
    labels = module.backbone(batch["image"]).argmax(1)
    teacher = module.teacher
    fresh = teacher.compute(batch["image"], labels, (8, 8))
    cached = teacher.lookup(batch["image"], labels, batch["index"], (8, 8))
    torch.testing.assert_close(cached, fresh, atol=2e-3, rtol=0)  # stored as float16

    before = cache.stat().st_mtime_ns
    _fit(shapes_module(teacher="gradcam", teacher_cache=str(cache)), data)
    assert cache.stat().st_mtime_ns == before  # reused, not rebuilt
    with pytest.raises(ValueError, match="built for other settings.*teacher"):
        _fit(shapes_module(teacher="xgradcam", teacher_cache=str(cache)), data)


def test_distance_and_bad_teacher() -> None:
    a, b = torch.zeros(2, 3, 3), torch.ones(2, 3, 3)
    assert map_distance(a, b, "mse") == 1.0 and map_distance(a, b * 0.5, "l1") == 0.5
    with pytest.raises(ValueError, match="unknown explainer 'gradcamm'"):
        TeacherMaps("gradcamm", lcam.FrozenBackbone("lcam.models.TinyResNet", input_size=32))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("layercam", {}),
        ("hirescam", {}),
        ("eigencam", {}),
        ("fullgrad", {}),
        ("integrated_gradients", {"steps": 3}),
        ("smoothgrad", {"num_samples": 2}),
        ("gradient_shap", {"num_samples": 2}),
    ],
)
def test_every_new_method_teaches_maps_of_the_labels_at_the_head_resolution(name, options) -> None:
    backbone = lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
    teacher = TeacherMaps(name, backbone, options)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 3])
    maps = teacher.compute(images, labels, (4, 4))
    assert maps.shape == (3, 4, 4) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    # the maps are those of the labels asked for (not of the predicted classes), pooled
    direct = teacher.explainer.explain(images, labels)
    assert direct.targets.tolist() == labels.tolist()
    pooled = torch.nn.functional.adaptive_avg_pool2d(direct.maps[:, None], (4, 4))[:, 0]
    torch.testing.assert_close(maps, pooled, atol=1e-5, rtol=1e-4)
