from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import lcam
from lcam.cli import main as cli_main
from lcam.heads import HEADS
from lcam.models.tiny import SHAPES_WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_quickstart_comparison_evaluates_the_quickstart_head() -> None:
    """The README's two commands fit together: quickstart_compare.yaml builds the same explainer
    as quickstart.yaml (a different head or backbone would refuse the checkpoint) and trains the
    same way."""
    fit = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["model"]
    compare = yaml.safe_load((ROOT / "configs" / "quickstart_compare.yaml").read_text())["model"]
    for key in ("backbone", "weights", "num_classes", "input_size", "head", "target_layer"):
        assert fit.get(key) == compare.get(key), key
    for key in ("kept_fraction_weight", "masked_response_weight", "optimizer"):
        assert fit.get(key) == compare.get(key), key


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses_and_prints(config, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["head"] in HEADS
    assert printed["trainer"]["accelerator"] == "auto"


def test_imagenet_configs_carry_the_paper_recipes() -> None:
    vgg = yaml.safe_load((ROOT / "configs" / "imagenet_vgg16_lcam_fm.yaml").read_text())
    resnet = yaml.safe_load((ROOT / "configs" / "imagenet_resnet50_lcam_img.yaml").read_text())
    assert vgg["model"]["optimizer"]["init_args"]["lr"] == 0.01
    assert vgg["model"]["lr_scheduler"]["init_args"]["gamma"] == 0.75
    assert vgg["trainer"]["max_epochs"] == 8 and vgg["data"]["init_args"]["batch_size"] == 64
    assert resnet["model"]["optimizer"]["init_args"]["lr"] == 0.0001
    assert resnet["model"]["lr_scheduler"]["init_args"]["gamma"] == 0.95
    assert resnet["model"]["head"] == "lcam_img"


def test_wrong_key_fails_at_parse_time_naming_it(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.tv_wieght=1"]
        )
    assert exit_info.value.code != 0
    assert "tv_wieght" in capsys.readouterr().err


def _small_quickstart(tmp_path: Path, name: str = "quickstart.yaml") -> Path:
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    config["trainer"].update(default_root_dir=str(tmp_path), max_epochs=1, log_every_n_steps=1)
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path)
    for callback in config["trainer"]["callbacks"]:
        callback["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    config["model"]["weights"] = str(SHAPES_WEIGHTS)
    config["data"]["init_args"].update(train_size=128, val_size=16, batch_size=16)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_logs_offline_and_writes_a_loadable_checkpoint(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = _small_quickstart(tmp_path)
    cli_main(["fit", "--config", str(config)])
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    raw = torch.load(checkpoint, weights_only=True)  # a training checkpoint is plain data
    assert raw["lcam"]["backbone"]["model"] == "lcam.models.TinyResNet"
    assert raw["lcam"]["class_names"][:2] == ["disc", "square"]
    explainer = lcam.load_explainer(checkpoint, device="cpu")
    assert explainer.explain(torch.rand(2, 3, 64, 64)).maps.shape == (2, 64, 64)

    overlay = np.asarray(Image.open(tmp_path / "overlays" / "epoch_000.png"))
    assert overlay.ndim == 3 and overlay.std() > 10  # a real picture, not a black square
    # Validating the checkpoint later never replaces the grids the training run wrote.
    trained_grid = tmp_path / "overlays" / "epoch_000.png"
    written = (trained_grid.stat().st_ino, trained_grid.stat().st_mtime_ns)
    for _ in range(2):
        cli_main(["validate", "--config", str(config), "--ckpt_path", str(checkpoint)])
    assert (trained_grid.stat().st_ino, trained_grid.stat().st_mtime_ns) == written  # untouched
    grids = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert grids == ["epoch_000.png", "validate_000.png", "validate_001.png"]
    wandb_images = list(tmp_path.glob("wandb/offline-run-*/files/media/images/**/*.png"))
    assert wandb_images and np.asarray(Image.open(wandb_images[0])).max() > 50
    metrics = (next(tmp_path.glob("csv/version_*")) / "metrics.csv").read_text()
    for column in (
        "train/loss",
        "train/area",
        "train/tv",
        "val/masked_accuracy",
        "val/in_mask_energy",
    ):
        assert column in metrics


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_writes_last_ckpt_without_a_monitor(config) -> None:
    """The test below shows why: a monitored ``save_last`` is stale after an epoch that did not
    improve, so each config names a monitor-less checkpoint ``last`` instead."""
    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
    checkpoints = [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert not any(c.get("save_last") and c.get("monitor") for c in checkpoints)
    if checkpoints:
        assert [c for c in checkpoints if c.get("filename") == "last" and not c.get("monitor")]


def test_last_checkpoint_holds_the_final_weights_when_validation_stops_improving(
    tmp_path, monkeypatch
) -> None:
    """With a learning rate of 0 (and no BatchNorm in the L-CAM-Fm head) the validation loss
    repeats, so the monitored checkpoint is written after epoch 0 only; ``last.ckpt`` must still
    be the end of training, since the README tests and exports it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = yaml.safe_load(_small_quickstart(tmp_path, "quickstart_lcam_fm.yaml").read_text())
    config["trainer"]["max_epochs"] = 2
    config["model"]["optimizer"]["init_args"]["lr"] = 0.0
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = cli_main(["fit", "--config", str(path)])
    assert cli.trainer.checkpoint_callback.monitor == "val/loss"  # what `--ckpt_path best` reads
    steps_per_epoch = (
        config["data"]["init_args"]["train_size"] // config["data"]["init_args"]["batch_size"]
    )
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * steps_per_epoch)
    (best,) = (p for p in (tmp_path / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    assert torch.load(best, weights_only=True)["global_step"] == steps_per_epoch


def test_a_failing_step_after_the_comparison_keeps_its_table(tmp_path, monkeypatch) -> None:
    """The sanity check and the page come after the measured table: when one fails, the error
    reaches the user and the table is on disk."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = yaml.safe_load(_small_quickstart(tmp_path).read_text())
    config["data"]["init_args"].update(test_size=4, batch_size=4)
    config["model"].update(
        methods=["lcam", "gradcam"],
        comparison={"deletion_steps": 4, "road_fractions": [0.5], "gallery_size": 2},
        sanity_images=2,
    )
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    cli_main(["fit", "--config", str(path), "--trainer.max_steps=1"])

    def broken_check(*args: object, **kwargs: object) -> None:
        raise RuntimeError("sanity check failed")

    monkeypatch.setattr("lcam.training.evaluation_run.model_randomisation", broken_check)
    checkpoint = str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(RuntimeError, match="sanity check failed"):
        cli_main(["test", "--config", str(path), "--ckpt_path", checkpoint])
    report = tmp_path / "comparison"
    rows = (report / "comparison.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["lcam", "gradcam"]
    assert "gradcam" in (report / "comparison.md").read_text()
    assert not (report / "report.html").exists()


def test_test_run_compares_methods_and_writes_the_report(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = yaml.safe_load(_small_quickstart(tmp_path).read_text())
    config["data"]["init_args"].update(test_size=12, batch_size=6)
    config["model"].update(
        methods=["lcam", "gradcam", "rise"],
        method_options={"rise": {"num_masks": 20}},
        comparison={"deletion_steps": 4, "road_fractions": [0.5], "gallery_size": 2},
        sanity_images=4,
    )
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    cli_main(["fit", "--config", str(path), "--trainer.max_steps=2"])
    # The evaluation settings come from the config even when a checkpoint is given.
    cli_main(
        ["test", "--config", str(path), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")]
    )
    report = tmp_path / "comparison"
    rows = (report / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("method,") and [r.split(",")[0] for r in rows[1:]] == [
        "lcam",
        "gradcam",
        "rise",
    ]
    for column in (
        "ad@15",
        "ic@15",
        "deletion_auc",
        "insertion_auc",
        "pointing_game",
        "ms_per_image",
    ):
        assert column in rows[0]
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 * 4 and "<svg" in html
    assert (report / "comparison.md").exists() and (report / "sanity.csv").exists()
    assert (report / "unit_alignment.csv").exists()
