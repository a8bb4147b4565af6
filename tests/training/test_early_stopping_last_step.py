"""Early stopping and the run's last evaluation: at max_steps the run ends whatever the val loss, so it reached
max_steps, as a run whose max_steps is no multiple of eval_interval does."""

from __future__ import annotations

from nl_train_helpers import read_jsonl, tiny_run

from neurallayers.training import fit


def test_a_worse_evaluation_at_max_steps_is_no_early_stop(tmp_path, monkeypatch):
    # the evaluation at step 6 of 6 was reported as "stopped: early_stopping", and its checkpoint said so to a resume
    from neurallayers.training import losses

    vals = iter([5.0, 6.0])
    monkeypatch.setattr(losses, "mean_loss", lambda *a, **k: (next(vals), 1))
    run = tiny_run(tmp_path, max_steps=6, eval_interval=3, early_stopping_patience=1, save_interval=0)
    result = fit(run, tmp_path / "run", progress=False)
    assert (result.stopped_reason, result.steps, result.best_val_loss) == ("max_steps", 6, 5.0)
    assert not [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "early_stopping" in r]
