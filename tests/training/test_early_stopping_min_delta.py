"""train.early_stopping_min_delta: an evaluation restarts the patience count only when its val loss is more than
min_delta below the best before it, as transformers' EarlyStoppingCallback decides with early_stopping_threshold; the
best weights follow any improvement. Without it, a val loss creeping down by 0.01 an evaluation never stopped a run."""

import math

import pytest
from nl_train_helpers import read_jsonl, tiny_run

from neurallayers.training import TrainConfig, fit

VALS = [5.0, 4.99, 4.98, 4.9, 4.89, 4.88, 4.87, 4.86]


def hf_counts(vals: list[float], threshold: float) -> list[int]:
    """EarlyStoppingCallback.check_metric_value's counter after each evaluation, best_metric being the lowest before
    it (the Trainer updates it after the callback has run)."""
    best, count, counts = None, 0, []
    for v in vals:
        count = 0 if best is None or (v < best and abs(v - best) > threshold) else count + 1
        best = v if best is None or v < best else best
        counts.append(count)
    return counts


@pytest.mark.parametrize(("min_delta", "steps", "reason"), [(0.05, 7, "early_stopping"), (0.0, 8, "max_steps")])
def test_improvements_within_min_delta_count_against_patience(tmp_path, monkeypatch, min_delta, steps, reason):
    from neurallayers.training import losses

    feed = iter(VALS)
    monkeypatch.setattr(losses, "mean_loss", lambda *a, **k: (next(feed), 1))
    run = tiny_run(tmp_path, max_steps=8, eval_interval=1, early_stopping_patience=3,
                   early_stopping_min_delta=min_delta, save_interval=0)
    result = fit(run, tmp_path / "run", progress=False)
    counts = hf_counts(VALS, min_delta)
    assert steps == next((i + 1 for i, c in enumerate(counts) if c == 3), 8)  # transformers stops there too
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert [r["best"] for r in rows if "val_loss" in r] == [True] * steps  # every one the best weights so far
    assert (result.stopped_reason, result.steps, result.best_val_loss) == (reason, steps, VALS[steps - 1])
    if min_delta:
        assert [r["early_stopping"] for r in rows if "early_stopping" in r] == [
            "stopped at step 7: 3 evaluations without a val loss more than early_stopping_min_delta=0.05 below the "
            "best before it (now 4.8700) (early_stopping_patience=3)"]


def test_a_bad_min_delta_names_the_field():
    with pytest.raises(ValueError, match=r"^TrainConfig.early_stopping_min_delta=-0.1: must be >= 0$"):
        TrainConfig(early_stopping_min_delta=-0.1)
    with pytest.raises(ValueError, match=r"^TrainConfig.early_stopping_min_delta=nan: must be a finite number$"):
        TrainConfig(early_stopping_min_delta=math.nan)
