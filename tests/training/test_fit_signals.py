"""Ctrl-C and SIGTERM during training: stop at a step boundary, save a checkpoint, resume exactly."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from nl_train_helpers import child_env, step_losses, tiny_run, val_losses

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit, losses, trainer

pytestmark = pytest.mark.skipif(
    signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL or signal.getsignal(signal.SIGINT)
    is not signal.default_int_handler, reason="the test runner has its own SIGINT/SIGTERM handlers")


class SignalAt:
    """A logger object that sends this process `sig` when the training loop logs step `step`."""

    def __init__(self, step: int, sig: int) -> None:
        self.step, self.sig = step, sig

    def log(self, metrics: dict, step: int) -> None:
        if step == self.step and "loss" in metrics:
            os.kill(os.getpid(), self.sig)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("sig", "reason"), [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupted")])
def test_a_signal_stops_after_the_step_saves_it_and_the_resume_is_exact(tmp_path, caplog, sig, reason):
    run = tiny_run(tmp_path, max_steps=8, save_interval=4, eval_interval=4)
    straight = fit(run, tmp_path / "straight", progress=False)
    with caplog.at_level("WARNING", logger="neurallayers.training"):
        stopped = fit(run, tmp_path / "split", progress=False, loggers=[SignalAt(3, sig)])
    assert (stopped.stopped_reason, stopped.steps) == (reason, 3)
    assert ckpt.latest_checkpoint(tmp_path / "split").name == "step-3"  # the step it was on, not the step-0 one
    assert f"stopped at step 3 ({reason}): saving a checkpoint" in caplog.text
    # the process's own handlers are back: Python's Ctrl-C, the default SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = fit(run, tmp_path / "split", resume=True, progress=False)
    assert resumed.steps == straight.steps == 8
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "straight")
    assert resumed.final_val_loss == straight.final_val_loss


def test_a_second_ctrl_c_stops_at_once_and_saves_no_half_step(tmp_path, monkeypatch, caplog):
    """Two Ctrl-C inside step 6: KeyboardInterrupt out of fit, and no step-5 or step-6 checkpoint (the step in
    flight may be half applied); the step-4 checkpoint is the resume point."""
    step = trainer._Fit._train_step

    def step_with_two_ctrl_c(self):
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(trainer._Fit, "_train_step", step_with_two_ctrl_c)
    run = tiny_run(tmp_path, max_steps=8, save_interval=4, eval_interval=4)
    with caplog.at_level("WARNING", logger="neurallayers.training"), pytest.raises(KeyboardInterrupt):
        fit(run, tmp_path / "run", progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-4"
    assert "interrupted during step 6: not saved" in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_during_a_steps_evaluation_saves_nothing_and_the_resume_is_exact(tmp_path, monkeypatch,
                                                                                          caplog):
    """Ctrl-C at step 4, then again inside step 4's evaluation: as documented, KeyboardInterrupt and nothing saved.
    It saved step 4 without its evaluation and returned "interrupted": the resume never evaluated step 4, and its
    val losses, best weights and early-stopping count were not an uninterrupted run's."""
    run = tiny_run(tmp_path, max_steps=8, save_interval=2, eval_interval=4)
    straight = fit(run, tmp_path / "straight", progress=False)
    mean_loss = losses.mean_loss

    def evaluation_with_a_second_ctrl_c(*args, **kwargs):  # the split run's first: step 4's, after the first Ctrl-C
        monkeypatch.setattr(losses, "mean_loss", mean_loss)
        os.kill(os.getpid(), signal.SIGINT)
        return mean_loss(*args, **kwargs)

    monkeypatch.setattr(losses, "mean_loss", evaluation_with_a_second_ctrl_c)
    with caplog.at_level("WARNING", logger="neurallayers.training"), pytest.raises(KeyboardInterrupt):
        fit(run, tmp_path / "split", progress=False, loggers=[SignalAt(4, signal.SIGINT)])
    assert ckpt.latest_checkpoint(tmp_path / "split").name == "step-2"  # step 4 was not finished: not saved
    assert "interrupted during step 4: not saved" in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = fit(run, tmp_path / "split", resume=True, progress=False)
    assert resumed.steps == straight.steps == 8
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "straight")
    assert val_losses(tmp_path / "split") == val_losses(tmp_path / "straight")
    assert resumed.best_val_loss == straight.best_val_loss


def test_sigterm_to_the_cli_saves_and_exits_143_with_the_resume_command(tmp_path):
    """A real process, as `docker stop` or Slurm would stop it: 128 + SIGTERM, so `train && ...` does not go on."""
    cfg = tiny_run(tmp_path, max_steps=100_000, save_interval=0, eval_interval=0).to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "neurallayers", "train", "--config", str(cfg), "--out", str(out),
                             "--no-progress"], env=child_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("step 20/"):
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 143, rest
    finally:
        proc.kill()
    step = int(ckpt.latest_checkpoint(out).name.split("-")[1])
    assert step in (20, 21)  # after the step the signal landed in
    assert f"stopped at step {step} (terminated): saving a checkpoint" in rest
    assert "stopped: terminated" in rest
    # started as `python -m neurallayers`: the hint names this interpreter as the shell finds it (PATH or its path)
    launcher = re.search(rf"continue with: (\S+) -m neurallayers train --out {re.escape(str(out))} --resume", rest)
    assert launcher, rest
    found = shutil.which(launcher[1], path=child_env(tmp_path)["PATH"]) if os.sep not in launcher[1] else launcher[1]
    assert found and os.path.abspath(found) == os.path.abspath(sys.executable)


def test_the_handlers_go_when_training_fails(tmp_path, monkeypatch):
    """An error inside the loop must not leave fit's handlers behind (a later fit would find them and not install
    its own, and a SIGTERM would go to the dead run)."""
    def failing_step(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer._Fit, "_train_step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tiny_run(tmp_path, max_steps=4), tmp_path / "run", progress=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
