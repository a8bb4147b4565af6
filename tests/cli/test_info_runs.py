"""`neurallayers info` on a run directory: what its log says it trained."""

from pathlib import Path

from nl_cli_helpers import in_process


def test_info_names_the_best_evaluation_training_kept_after_a_restart_of_the_best(tmp_path: Path, monkeypatch):
    """A resume whose evaluations score other windows (eval_batches changed) starts the best over: training flags
    step 9 "best" and keeps its weights, while info named the lowest loss of the whole log (step 6, another history's
    windows) as the run's best."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {preset: tiny}\ntrain: {max_steps: 12}\ndata: {source: shakespeare}\n")
    (run / "metrics.jsonl").write_text(
        '{"step": 3, "val_loss": 2.9, "perplexity": 18.17, "best": true}\n'
        '{"step": 6, "val_loss": 2.8, "perplexity": 16.44, "best": true}\n'
        '{"step": 9, "val_loss": 3.4, "perplexity": 29.96, "best": true}\n'  # resumed at 6: the best starts over
        '{"step": 12, "val_loss": 3.6, "perplexity": 36.6, "best": false}\n'
    )
    proc = in_process("info", "run", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "12 of 12 steps; val loss 3.6000 at step 12, best 3.4000 at step 9\n" in proc.stdout, proc.stdout
