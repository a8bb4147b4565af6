"""train.max_minutes is a budget per session (the documented rule): a resume gets it whole again, while the run's
elapsed time (checkpoint state, metrics.jsonl) still counts every session. A job under a time limit that stops on its
budget and resumes in the next job must not stop again at its first step."""

from __future__ import annotations

from nl_train_helpers import read_jsonl, tiny_run

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit
from neurallayers.weights import torch_load_safe

EARLIER = 10 * 3600.0  # ten hours spent by earlier sessions, far over the one-minute budget below


def test_a_resume_gets_the_whole_budget_again(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, max_steps=4, eval_interval=0, save_interval=2)
    fit(run, tmp_path / "run", until_step=2, progress=False)
    load = ckpt.load_checkpoint

    def long_ago(target):  # the checkpoint as ten hours of earlier sessions would have left it
        model_sd, state = load(target)
        return model_sd, {**state, "elapsed": EARLIER}

    monkeypatch.setattr(ckpt, "load_checkpoint", long_ago)
    run = tiny_run(tmp_path, max_steps=4, eval_interval=0, save_interval=2, max_minutes=1.0)
    result = fit(run, tmp_path / "run", resume=True, progress=False)
    assert (result.steps, result.stopped_reason) == (4, "max_steps")  # not "time_budget" at step 3
    # the run's clock went on from the earlier sessions'
    state = torch_load_safe(ckpt.latest_checkpoint(tmp_path / "run") / "state.pt")
    assert EARLIER < float(state["elapsed"]) < EARLIER + 600
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    elapsed = [r["elapsed"] for r in rows if r.get("step", 0) > 2 and "elapsed" in r]
    assert elapsed and all(e > EARLIER for e in elapsed)


def test_the_budget_still_stops_a_session(tmp_path):
    """The other half of the rule, on a resumed session: a budget spent within it stops the run."""
    run = tiny_run(tmp_path, max_steps=1000, eval_interval=0, save_interval=2)
    fit(run, tmp_path / "run", until_step=2, progress=False)
    run = tiny_run(tmp_path, max_steps=1000, eval_interval=0, save_interval=2, max_minutes=1e-6)
    result = fit(run, tmp_path / "run", resume=True, progress=False)
    assert result.stopped_reason == "time_budget" and 2 < result.steps < 1000
