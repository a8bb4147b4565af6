"""The warning for a warmup that fills the run: with warmup_steps == max_steps the last step uses lr itself
(lr_at(max_steps - 1) == lr), and the warning said it reached "0.003, short of lr=0.003"."""

import pytest
from nl_train_helpers import read_jsonl, tiny_run

from neurallayers.training import fit


@pytest.mark.parametrize(("warmup", "says"), [(2, "it reaches lr=0.003 only at the last step"),
                                               (4, "it reaches 0.0015, short of lr=0.003")])
def test_a_warmup_as_long_as_the_run_says_where_it_ends(tmp_path, caplog, warmup, says):
    run = tiny_run(tmp_path, max_steps=2, warmup_steps=warmup, lr=3e-3, eval_interval=0, save_interval=0)
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(run, tmp_path / "run", progress=False)
    rates = [r["lr"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "lr" in r]
    assert rates == pytest.approx([3e-3 * s / warmup for s in (1, 2)], rel=1e-12)
    assert (f"train.warmup_steps={warmup} >= max_steps=2: the learning rate is still warming up when training ends "
            f"({says}) and never decays; set --train.warmup_steps lower") in caplog.text
