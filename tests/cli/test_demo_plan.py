"""`neurallayers demo` plans its steps (and, on a slow CPU, a smaller batch) from a measured step time."""

from __future__ import annotations

import argparse

import pytest

from neurallayers.cli import demo


@pytest.mark.parametrize(("ms_per_sequence", "batch_size", "steps"), [
    (9.0, 16, 1416),   # Zen 5 with bf16: 144 ms a step of 16
    (35.0, 8, 728),    # Zen 3, fp32: 560 ms a step of 16 would be 364 steps; 280 ms a step of 8
    (200.0, 8, 127),   # slower still: batch 8, fewer steps
    (1000.0, 8, 100),  # never fewer than 100 steps
])
def test_plan_fills_the_minutes_and_halves_the_batch_on_a_slow_cpu(monkeypatch, ms_per_sequence, batch_size,
                                                                   steps):
    def measure(run_cfg):
        return run_cfg.train.batch_size * ms_per_sequence / 1000

    monkeypatch.setattr(demo, "measure_step_seconds", measure)
    assert demo.plan(4.0) == (batch_size, steps, pytest.approx(batch_size * ms_per_sequence / 1000))


class _FitCalled(Exception):
    pass


@pytest.mark.parametrize(("checkpoint", "refused"), [(False, False), (True, True)])
def test_a_demo_killed_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch, checkpoint, refused):
    # killed while it tokenized or in its first steps: `make demo` refused the folder ("pass --resume") and
    # `demo --resume` refused it too ("stopped before its first checkpoint"): only `rm -rf runs/demo` went on
    from neurallayers.training import trainer
    from neurallayers.training.checkpoint import COMPLETE

    out = tmp_path / "runs" / "demo"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("model:\n  preset: demo\n")
    (out / "metrics.jsonl").write_text("")
    if checkpoint:  # a finished (or interrupted and saved) demo is still refused
        (out / "checkpoints" / "step-5").mkdir(parents=True)
        (out / "checkpoints" / "step-5" / COMPLETE).write_text("")
    calls = []

    def fit(run_cfg, out_dir, *, resume):
        calls.append(resume)
        raise _FitCalled

    monkeypatch.setattr(trainer, "fit", fit)
    args = argparse.Namespace(out=str(out), minutes=4.0, max_steps=5, resume=False)
    if refused:
        with pytest.raises(ValueError, match="already holds a run"):
            demo.run(args)
        assert calls == []
    else:
        with pytest.raises(_FitCalled):
            demo.run(args)
        assert calls == [False]  # fit() starts it afresh, as `train` does


@pytest.mark.parametrize(("max_steps", "planned"), [(None, 100), (900, 900)])
def test_demo_resume_trains_on_to_max_steps_with_the_saved_warmup(tmp_path, monkeypatch, max_steps, planned):
    # `demo --resume --max-steps 900` kept the saved 100 steps: "nothing to train", the flag silently unused
    from neurallayers.training import trainer

    out = tmp_path / "demo"
    out.mkdir()
    saved = demo.demo_config(max_steps=100, max_minutes=4.75, batch_size=8)
    saved.to_yaml(out / "config.yaml")
    assert saved.train.warmup_steps == 25
    seen = []

    def fit(run_cfg, out_dir, *, resume):
        seen.append((run_cfg.train.max_steps, run_cfg.train.warmup_steps, run_cfg.train.batch_size, resume))
        raise _FitCalled

    monkeypatch.setattr(trainer, "fit", fit)
    with pytest.raises(_FitCalled):
        demo.run(argparse.Namespace(out=str(out), minutes=4.0, max_steps=max_steps, resume=True))
    assert seen == [(planned, 25, 8, True)]  # the schedule's warmup and the batch stay the run's own


def test_demo_resume_without_a_run_says_so(tmp_path):
    # said "run config not found: demo/config.yaml", as if a config file had been asked for
    with pytest.raises(FileNotFoundError, match="cannot resume: .*demo holds no demo run"):
        demo.run(argparse.Namespace(out=str(tmp_path / "demo"), minutes=4.0, max_steps=None, resume=True))
