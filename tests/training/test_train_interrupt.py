"""SIGTERM (schedulers, ``timeout``) and SIGINT (Ctrl-C) stop ``train.py fit`` cleanly.

A tiny deterministic CPU run (8 steps of one epoch) gets the signal from its own process as step
3 starts (:class:`signal_at.SignalAt`: the moment is the same on a loaded machine). It must finish
that step, then stop: exit 143 / 130 (not 0, which a scheduler records as success), save
``interrupted.ckpt`` at global step 4, and print the command that resumes it. That command, run
as printed, must end with the same head as the same run left alone (to 1e-6), at the same step.

One real ``train.py`` process covers SIGTERM end to end (the process's exit code, the printed
command); SIGINT and the uninterrupted reference run in this process (the same :func:`main`
``train.py`` calls), and the signal bookkeeping has its own fast unit test.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_resume import _config, _env, _head, _train_command

from lcam.cli import main as train_main
from lcam.cli import resume_command
from lcam.training.interruption import INTERRUPTED, StopSignals, exit_code

ROOT = Path(__file__).resolve().parents[2]
STEPS, STOP_AT = 8, 3  # train_size 128 / batch 16, one epoch; the signal as step 3 starts


def _run_config(folder: Path, signum: int | None) -> Path:
    """The 8-step run in ``folder``: ``last.ckpt`` at the end (no per-step checkpoints), and a
    ``signum`` sent to itself as step 3 starts (``None``: left alone)."""
    callbacks = [
        {
            "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(folder / "checkpoints"), "filename": "last"},
        }
    ]
    if signum is not None:
        arguments = {"step": STOP_AT, "signum": int(signum)}
        callbacks.append({"class_path": "signal_at.SignalAt", "init_args": arguments})
    trainer = {"max_epochs": 1, "callbacks": callbacks}
    return _config(folder, data={"train_size": 128}, trainer=trainer)


@pytest.fixture(autouse=True)
def restored_torch_state():
    """In-process runs are ``deterministic``: give later tests back the algorithms they had."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """In-process ``train.py`` runs get their arguments only from ``args``, not pytest's argv."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The head of the same run left alone (in this process)."""
    folder = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        train_main(["fit", "--config", str(_run_config(folder, None))])
    final = folder / "checkpoints" / "last.ckpt"
    assert torch.load(final, weights_only=True)["global_step"] == STEPS
    return _head(final)


def _resume_args(output: str) -> list[str]:
    """The ``train.py`` arguments of the resume command the run printed."""
    lines = output.splitlines()
    index = next((i for i, line in enumerate(lines) if "Resume with:" in line), None)
    assert index is not None, f"no resume command printed:\n{output[-3000:]}"
    words = shlex.split(lines[index + 1])
    assert words[:2] == ["python", "train.py"], words
    return words[2:]


def _check_interrupted_then_resume(
    folder: Path, output: str, reference: dict[str, torch.Tensor]
) -> None:
    """The run stopped after step 3 with ``interrupted.ckpt`` (named in ``output``); the printed
    command, run here, ends at step 8 with the reference head."""
    interrupted = folder / "checkpoints" / INTERRUPTED
    assert str(interrupted) in output, output[-3000:]
    state = torch.load(interrupted, map_location="cpu", weights_only=True)
    assert state["global_step"] == STOP_AT + 1, "the step in flight was not finished (or more ran)"
    # The head moved during the run: equal heads are not two untouched initialisations.
    moved = _head(interrupted)
    assert max(float((reference[k] - moved[k]).abs().max()) for k in reference) > 1e-4
    assert not (folder / "checkpoints" / "last.ckpt").exists()  # the epoch did not end

    train_main(_resume_args(output))
    final = folder / "checkpoints" / "last.ckpt"
    assert torch.load(final, weights_only=True)["global_step"] == STEPS
    resumed = _head(final)
    differences = {k: float((reference[k] - resumed[k]).abs().max()) for k in reference}
    assert max(differences.values()) <= 1e-6, differences


def test_sigterm_to_train_py_saves_exits_143_and_the_printed_command_resumes(
    tmp_path, reference
) -> None:
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    command = _train_command(_run_config(tmp_path, signal.SIGTERM))
    run = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300
    )
    output = run.stdout.decode()
    assert run.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM" in output, output[-3000:]
    _check_interrupted_then_resume(tmp_path, output, reference)


def test_sigint_saves_exits_130_and_the_printed_command_resumes(
    tmp_path, reference, capsys
) -> None:
    config = _run_config(tmp_path, signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        train_main(["fit", "--config", str(config)])
    output = capsys.readouterr().err
    assert stopped.value.code == 130, output[-3000:]
    assert "stopped by SIGINT" in output, output[-3000:]
    _check_interrupted_then_resume(tmp_path, output, reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_train_py_test_after_the_batch_in_flight(tmp_path, capsys, signum) -> None:
    """``train.py test`` (4 batches, its progress logged): a signal as batch 1 starts ends the
    run after batch 1 with exit 143 / 130 and no checkpoint (only ``fit`` saves one)."""
    arguments = {"step": 1, "signum": int(signum)}
    signalling = {"class_path": "signal_at.SignalAt", "init_args": arguments}
    config = _config(
        tmp_path,
        data={"test_size": 64},
        trainer={"callbacks": [signalling], "enable_progress_bar": True},
    )
    with pytest.raises(SystemExit) as stopped:
        train_main(["test", "--config", str(config)])
    err = capsys.readouterr().err
    assert stopped.value.code == exit_code(signum), err[-3000:]
    assert f"train.py: stopped by {signum.name}" in err, err[-3000:]
    assert "Resume with" not in err, err[-3000:]
    logged = [line.split(" in ")[0] for line in err.splitlines() if line.startswith("test: ")]
    assert logged == ["test: 25% (1/4 batch)", "test: 50% (2/4 batch)"], err[-3000:]
    assert not (tmp_path / "checkpoints" / INTERRUPTED).exists()


def test_stop_signals_record_the_first_signal_and_give_its_exit_code() -> None:
    assert exit_code(signal.SIGTERM) == 143 and exit_code(signal.SIGINT) == 130
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    heard: list[int] = []
    with StopSignals() as signals:
        signals.listen(heard.append)
        assert (signals.stop, signals.exit_code, signals.name) == (False, 0, "")
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a later, other signal: the first one counts
        assert (signals.stop, signals.exit_code, signals.name) == (True, 143, "SIGTERM")
        assert heard == [signal.SIGTERM, signal.SIGINT]
    assert {signum: signal.getsignal(signum) for signum in before} == before  # put back

    with StopSignals() as signals, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert (signals.exit_code, signals.name) == (130, "SIGINT")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C twice: stop at once
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_the_resume_command_keeps_the_arguments_and_replaces_an_old_checkpoint() -> None:
    command = resume_command(
        ["fit", "--config", "my run.yaml", "--ckpt_path", "old.ckpt", "--trainer.max_epochs=3"],
        Path("out/checkpoints/interrupted.ckpt"),
    )
    assert command == (
        "python train.py fit --config 'my run.yaml' --trainer.max_epochs=3 "
        "--ckpt_path out/checkpoints/interrupted.ckpt"
    )
