"""A fit under Lightning DDP (2 CPU processes, gloo) equals the single-process fit.

All runs go through ``train.py fit`` with generated configs. A DDP run has 8 images per process,
its single-process twin 16 per batch: the same global batch and the same number of optimizer
steps. The head, loss and optimizer are ``configs/quickstart.yaml``'s as they ship (TAME, whose
branches hold batch normalisation, the L-CAM loss with ``map_selection: batch`` plus 0.5 x the
kept-fraction term, Adam with the x0.75-per-epoch schedule); one scenario swaps in the
``tame_shared`` head. Every
loss term is a mean over images (the area and TV terms see every image's maps of every label of
the global batch, whose labels each rank gathers from the others) and the heads' batch
normalisation uses the global batch's statistics, so the DDP-averaged gradient is the
single-process gradient and the heads must agree to float rounding as Adam scales it (see
``TOLERANCE``), provided each step sees the same 16 images. Each test prints the largest head
difference.

- One global batch per epoch (train_size 16): every step sees all 16 images in both runs, whatever
  order each sampler shuffles them in. Checks gradient averaging, the split between ranks and the
  global-batch normalisation (plain ``BatchNorm2d`` gave TAME heads 1.8e-2 apart here).
- Several global batches per epoch (train_size 64): the two runs must also shuffle the training
  set into the same global batches, i.e. the training order must be a function of the seed and
  the epoch, split between the ranks, not of the number of processes. This scenario runs in
  float64 (``precision: 64-true``), where the heads agree to 1e-9. In float32 they part by 2e-5
  after epoch 1 and 7e-4 after epoch 2 (measured): the runs compute the same thing (float64:
  4e-16 after both epochs, the same global batches, checked with ``SeededSampler``), and Adam and
  the changing batches amplify the float32 rounding of the gradient all-reduce. A real
  difference (other batches, per-process statistics) shows in float64 as much as in float32.
- The test-time method comparison of a checkpoint under DDP equals the single-process table,
  cell by cell; an empty cell fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lcam.models.tiny import SHAPES_WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    name: yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    for name in ("quickstart",)
}


def _config(
    directory: Path,
    *,
    devices: int,
    batch_size: int,
    train_size: int,
    epochs: int,
    config: str = "quickstart",
    head: str | None = None,
    precision: str | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    trainer = {
        "accelerator": "cpu",
        "devices": devices,
        "max_epochs": epochs,
        "default_root_dir": str(directory),
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "callbacks": [
            {
                "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(directory / "checkpoints"),
                    "filename": "{epoch}",
                    "every_n_epochs": 1,
                    "save_top_k": -1,
                    "save_last": True,
                },
            }
        ],
    }
    if devices > 1:
        trainer["strategy"] = "ddp"
    if precision is not None:
        trainer["precision"] = precision
    shipped = CONFIGS[config]
    model = {**shipped["model"], "weights": str(SHAPES_WEIGHTS)}
    if head is not None:
        model["head"] = head
    config = {
        "seed_everything": 0,
        "trainer": trainer,
        "model": model,
        "data": {
            "class_path": shipped["data"]["class_path"],
            "init_args": {
                **shipped["data"]["init_args"],
                "train_size": train_size,
                "val_size": 16,
                "test_size": 16,
                "batch_size": batch_size,
            },
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _head(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    head = {k: v for k, v in state["state_dict"].items() if k.startswith("explainer.head.")}
    assert head, f"no explainer.head.* entries in {checkpoint}"
    return head


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


SCENARIOS = {
    # quickstart.yaml as shipped: TAME + kept-fraction term, Adam, x0.75 per epoch.
    "one_batch": {"train_size": 16, "epochs": 4},  # 1 step per epoch, 4 in all
    # 4 steps per epoch, 8 in all, in float64 (see the module docstring)
    "four_batches": {"train_size": 64, "epochs": 2, "precision": "64-true"},
    # The same with the shared-map TAME head (its branches normalise too).
    "tame_shared": {"train_size": 16, "epochs": 2, "head": "tame_shared"},
}

# Adam divides each gradient component by its own running size, so the few components whose
# gradient is rounding-sized turn the float rounding of DDP's gradient all-reduce into a few
# per cent of a step (measured: up to 2e-5 after 4 steps). One step is lr = 1e-3; the tolerance
# is a tenth of that. Per-process BatchNorm statistics gave 1.8e-2 after the first step.
TOLERANCE = 1e-4
# In float64 the same rounding is ~1e-16 and Adam's amplification leaves it far below this.
TOLERANCE_FLOAT64 = 1e-9


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start every run at once (4 train.py fits, 6 processes): the cores are shared anyway and
    most of each run is Python start-up. Yields, per scenario, its folder and processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    started = {}
    for scenario, sizes in SCENARIOS.items():
        folder = tmp_path_factory.mktemp(scenario)
        configs = {
            "single": _config(folder / "single", devices=1, batch_size=16, **sizes),
            "ddp": _config(folder / "ddp", devices=2, batch_size=8, **sizes),
        }
        processes = {
            name: subprocess.Popen(
                [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, config in configs.items()
        }
        started[scenario] = (folder, processes)
    yield started
    for _, processes in started.values():
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _finish(launched, scenario: str) -> dict[str, Path]:
    """Wait for the scenario's two runs; check them; their checkpoint folders."""
    folder, processes = launched[scenario]
    outputs = {name: process.communicate(timeout=240)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} run failed:\n{outputs[name][-4000:]}"
    # Two processes really trained: rank 1 joined a world of 2 (gloo on CPU).
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs["ddp"], outputs["ddp"][-4000:]
    folders = {name: folder / name / "checkpoints" for name in processes}
    sizes = SCENARIOS[scenario]
    steps = sizes["epochs"] * sizes["train_size"] // 16
    for name, checkpoints in folders.items():
        state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
        assert state["global_step"] == steps, f"{name}: {state['global_step']} optimizer steps"
    return folders


def _per_epoch_differences(folders: dict[str, Path], epochs: int) -> dict[int, float]:
    """Largest head difference (parameters and normalisation buffers) after each epoch."""
    differences = {
        epoch: _largest_difference(
            _head(folders["single"] / f"epoch={epoch}.ckpt"),
            _head(folders["ddp"] / f"epoch={epoch}.ckpt"),
        )
        for epoch in range(epochs)
    }
    print(f"largest head difference, DDP vs one process, after each epoch: {differences}")
    return differences


@pytest.mark.parametrize("scenario", ["one_batch", "tame_shared"])
def test_ddp_equals_one_process_with_one_global_batch_per_epoch(launched, scenario: str) -> None:
    sizes = SCENARIOS[scenario]
    folders = _finish(launched, scenario)
    first, last = (_head(folders["single"] / f"{name}.ckpt") for name in ("epoch=0", "last"))
    moved = _largest_difference(
        *({k: v for k, v in head.items() if v.is_floating_point()} for head in (first, last))
    )
    differences = _per_epoch_differences(folders, sizes["epochs"])
    # Training moved the head far more than the tolerance, so agreement means something.
    assert moved > 10 * TOLERANCE, f"training moved the head by only {moved}"
    assert max(differences.values()) <= TOLERANCE, (
        f"{sizes}: the heads differ by up to {differences} after each epoch "
        f"(training moved the head by {moved})"
    )


def test_ddp_equals_one_process_with_several_global_batches_per_epoch(launched) -> None:
    folders = _finish(launched, "four_batches")
    differences = _per_epoch_differences(folders, SCENARIOS["four_batches"]["epochs"])
    first, last = (_head(folders["single"] / f"{name}.ckpt") for name in ("epoch=0", "last"))
    assert first["explainer.head.fuse.weight"].dtype == torch.float64
    moved = _largest_difference(
        *({k: v for k, v in head.items() if v.is_floating_point()} for head in (first, last))
    )
    assert moved > 1e-4, f"the second epoch moved the head by only {moved}"
    assert max(differences.values()) <= TOLERANCE_FLOAT64, (
        f"largest head difference after each epoch: {differences}; the single-process and the "
        "DDP run did not see the same global batches or normalised with other statistics"
    )


def _comparison_rows(path: Path) -> dict[str, dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = {}
    for line in lines[1:]:
        values = dict(zip(header, line.split(","), strict=True))
        values.pop("ms_per_image")
        rows[values.pop("method")] = values
    return rows


def test_ddp_comparison_table_equals_one_process(launched, tmp_path) -> None:
    checkpoint = _finish(launched, "one_batch")["single"] / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    processes = {}
    for name, devices in (("single", 1), ("ddp", 2)):
        config = yaml.safe_load(
            _config(
                tmp_path / name, devices=devices, batch_size=4, train_size=16, epochs=1
            ).read_text()
        )
        config["model"].update(
            methods=["lcam", "gradcam"],
            comparison={
                "metrics": ["adic", "deletion_insertion", "pointing_game", "energy_pointing_game"],
                "deletion_steps": 4,
            },
            sanity_images=0,
            unit_alignment=False,
        )
        path = tmp_path / name / "compare.yaml"
        path.write_text(yaml.safe_dump(config))
        processes[name] = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "test",
                "--config",
                str(path),
                "--ckpt_path",
                str(checkpoint),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {name: process.communicate(timeout=240)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} test run failed:\n{outputs[name][-4000:]}"
    single = _comparison_rows(tmp_path / "single" / "comparison" / "comparison.csv")
    ddp = _comparison_rows(tmp_path / "ddp" / "comparison" / "comparison.csv")
    assert list(single) == list(ddp) == ["lcam", "gradcam"] and single["lcam"]["images"] == "16"
    for method in single:
        assert ddp[method].keys() == single[method].keys()
        for column, value in single[method].items():
            if column == "trained_on":  # column names, not a number (empty for gradcam)
                assert ddp[method][column] == value, (method, value, ddp[method][column])
                continue
            # An empty cell is a metric that was not computed: it must fail, not be skipped.
            assert value and ddp[method][column], (method, column, value, ddp[method][column])
            assert float(ddp[method][column]) == pytest.approx(float(value), abs=1e-4), (
                method,
                column,
            )
