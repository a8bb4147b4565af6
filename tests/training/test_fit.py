import dataclasses
import math
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from nl_train_helpers import read_jsonl, run_fit_process, step_losses, tiny_run, val_losses, write_corpus

import neurallayers.models
from neurallayers.training import RunConfig, fit, load_run
from neurallayers.training import checkpoint as ckpt
from neurallayers.weights import read_safetensors


def test_resume_in_fresh_process_is_exact(tmp_path):
    """2K steps straight == K steps, stop, new process, resume, K more: every loss and the final weights."""
    run = tiny_run(tmp_path, max_steps=8, save_interval=4, eval_interval=2, grad_accum=2)
    assert run.model.dropout == 0.1
    cfg = run.to_yaml(tmp_path / "config.yaml")
    straight, split = tmp_path / "straight", tmp_path / "split"
    with ThreadPoolExecutor(1) as pool:  # the straight run beside the first session: the two cores
        side = pool.submit(run_fit_process, tmp_path, cfg, straight)
        procs = [run_fit_process(tmp_path, cfg, split, until=4)]
        procs += [run_fit_process(tmp_path, cfg, split, resume=True), side.result()]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = step_losses(straight), step_losses(split)
    assert sorted(a) == list(range(1, 9)) and a == b
    val = [(r["step"], r["val_loss"]) for r in read_jsonl(straight / "metrics.jsonl") if "val_loss" in r]
    assert val == [(r["step"], r["val_loss"]) for r in read_jsonl(split / "metrics.jsonl") if "val_loss" in r]
    wa = read_safetensors(straight / "checkpoints/step-8/model.safetensors")
    wb = read_safetensors(split / "checkpoints/step-8/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and the exactness is not vacuous: dropout draws differ per step, so another seed changes the losses
    assert len(set(a.values())) == 8


def test_tiny_model_overfits_short_text(tmp_path):
    rng = random.Random(1)
    text = "".join(rng.choice("abcdefghij \n") for _ in range(120))
    (tmp_path / "short.txt").write_text(text)
    run = tiny_run(tmp_path, corpus=tmp_path / "short.txt", model=dict(dropout=0.0, n_embd=64, n_head=4),
                   max_steps=150, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=10, weight_decay=0.0,
                   eval_interval=0, log_interval=25, save_interval=0)
    run.data.val_fraction = 0.0
    result = fit(run, tmp_path / "run", progress=False)
    losses = step_losses(tmp_path / "run")
    assert losses[1] > 2.0 and losses[150] < 0.3, losses
    assert result.final_val_loss is None
    assert result.median_step_seconds > 0 and result.first_step_seconds > 0
    # Memorised: once a window has a few characters of context, every next character is certain.
    model, tok, _ = load_run(tmp_path / "run")
    ids = torch.tensor(tok.encode(text))
    windows = torch.stack([ids[i:i + 33] for i in range(0, len(ids) - 33, 7)])  # (B, 33)
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits  # (B, 32, vocab)
    ce = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, logits.shape[-1]), windows[:, 9:].reshape(-1))
    assert ce.item() < 0.05


def test_early_stopping_triggers(tmp_path, caplog):
    # Train on letters a-h, validate on s-z (the file's last 15%): val loss only rises, so patience runs out.
    rng = random.Random(0)
    text = "".join(rng.choice("abcdefgh") for _ in range(3000)) + "".join(rng.choice("stuvwxyz") for _ in range(600))
    (tmp_path / "shift.txt").write_text(text)
    run = tiny_run(tmp_path, corpus=tmp_path / "shift.txt", max_steps=100, eval_interval=2,
                   early_stopping_patience=2, lr=1e-2, warmup_steps=0, save_interval=0)
    run.data.val_fraction = 0.15
    result = fit(run, tmp_path / "run", progress=False)
    assert result.stopped_reason == "early_stopping" and result.steps < 100
    evals = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r]
    assert [r["best"] for r in evals[-3:]] == [True, False, False]
    assert result.best_val_loss == evals[-3]["val_loss"]
    # the stop is in metrics.jsonl too (it was only in TrainResult and the checkpoint)
    last = read_jsonl(tmp_path / "run/metrics.jsonl")[-1]
    assert last["step"] == result.steps and last["early_stopping"].startswith(f"stopped at step {result.steps}: 2 ")

    # resumed, it says so and trains on until an evaluation without a better val loss stops it again
    with caplog.at_level("INFO", logger="neurallayers"):
        again = fit(run, tmp_path / "run", resume=True, progress=False)
    assert "the run stopped early (2 evaluations without a better val loss)" in caplog.text
    assert again.stopped_reason == "early_stopping" and again.steps > result.steps
    assert not [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r][-1]["best"]


@pytest.mark.parametrize("eval_interval", [0, 3])
def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path, caplog, eval_interval):
    """... and adds no second evaluation of the last step to metrics.jsonl (it did: one more line per resume)."""
    run = tiny_run(tmp_path, max_steps=4, eval_interval=eval_interval)
    first = fit(run, tmp_path / "run", progress=False)
    lines = (tmp_path / "run/metrics.jsonl").read_text()
    with caplog.at_level("INFO", logger="neurallayers"):
        again = fit(run, tmp_path / "run", resume=True, progress=False)
    assert again.steps == 4 and again.final_val_loss == first.final_val_loss
    assert "the run has trained 4 steps, max_steps=4: nothing to train" in caplog.text
    assert (tmp_path / "run/metrics.jsonl").read_text() == lines


def _nan_at(monkeypatch, k):
    real = neurallayers.models.build_model

    def build(cfg):
        model = real(cfg)
        count = [0]

        def hook(module, args, kwargs, out):
            if module.training:
                count[0] += 1
                if count[0] == k:
                    out.loss = out.loss * float("nan")
            return out

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(neurallayers.models, "build_model", build)


def test_nan_loss_skipped_and_logged(tmp_path, monkeypatch):
    _nan_at(monkeypatch, 3)
    run = tiny_run(tmp_path, max_steps=6, eval_interval=0, save_interval=0, nan_policy="skip")
    result = fit(run, tmp_path / "run", progress=False)
    assert result.steps == 6 and result.stopped_reason == "max_steps"
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    guard = [r for r in rows if "nan_guard" in r]
    assert guard == [{"step": 3, "loss": "nan", "grad_norm": "nan", "nan_guard": "skipped step 3"}]
    weights = read_safetensors(tmp_path / "run/model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_loss_stops_and_logged(tmp_path, monkeypatch):
    _nan_at(monkeypatch, 3)
    run = tiny_run(tmp_path, max_steps=6, eval_interval=0, save_interval=0, nan_policy="stop")
    result = fit(run, tmp_path / "run", progress=False)
    assert result.steps == 3 and result.stopped_reason == "nan"
    guard = [r["nan_guard"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "nan_guard" in r]
    assert guard == ["stopped at step 3"]


def _nan_from_step(monkeypatch, first):
    """Every training loss from step `first` (1-based) on is NaN, as after a divergence (lr 1e30, say)."""
    import neurallayers.training.trainer as trainer
    from neurallayers.training import losses

    real_step, real_loss, now = trainer._Fit._train_step, losses.model_loss, {}

    def train_step(self):
        now["step"] = self.step + 1
        return real_step(self)

    def loss(forward, x, y, *, masked):
        value = real_loss(forward, x, y, masked=masked)
        return value * float("nan") if torch.is_grad_enabled() and now["step"] >= first else value  # not eval's

    monkeypatch.setattr(trainer._Fit, "_train_step", train_step)
    monkeypatch.setattr(losses, "model_loss", loss)


def _guard_notes(run_dir):
    return [r["nan_guard"] for r in read_jsonl(run_dir / "metrics.jsonl") if "nan_guard" in r]


def test_a_diverged_run_stops_after_max_consecutive_skips(tmp_path, monkeypatch):
    """nan_policy skip skipped every step of a diverged run to max_steps and exited 0 as if it had finished."""
    _nan_from_step(monkeypatch, 3)
    run = tiny_run(tmp_path, max_steps=12, eval_interval=0, save_interval=0, max_consecutive_skips=3)
    result = fit(run, tmp_path / "run", progress=False)
    assert result.steps == 5 and result.stopped_reason == "nan"
    assert _guard_notes(tmp_path / "run") == [
        "skipped step 3", "skipped step 4", "stopped at step 5: 3 steps in a row had a non-finite loss or grad norm "
        "(train.max_consecutive_skips=3); no checkpoint predates step 2, whose weights they failed on: train afresh "
        "with a lower train.lr"]
    unlimited = dataclasses.replace(run, train=dataclasses.replace(run.train, max_consecutive_skips=None))
    assert fit(unlimited, tmp_path / "unlimited", progress=False).stopped_reason == "max_steps"
    assert len(_guard_notes(tmp_path / "unlimited")) == 10


def test_a_diverged_run_keeps_the_last_checkpoint_from_before_it_and_names_it(tmp_path, monkeypatch):
    """Skipped steps change no weight, so every checkpoint from the last update on holds the weights the streak failed
    on (a real divergence, lr 1e2: finite weights of 7.5e4 whose every step had an infinite grad norm; a resume from
    them with lr / 1000 stopped again). With keep_last 1 and save_interval 1 they pruned every checkpoint from before
    it, and the stop said only "an earlier checkpoint"."""
    _nan_from_step(monkeypatch, 6)  # step 5's update made the weights steps 6, 7 and 8 fail on
    run = tiny_run(tmp_path, max_steps=12, eval_interval=0, save_interval=1, keep_last=1, max_consecutive_skips=3)
    result = fit(run, tmp_path / "run", progress=False)
    assert (result.steps, result.stopped_reason) == (8, "nan")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-4", "step-8"]
    good, last = (read_safetensors(tmp_path / f"run/checkpoints/{n}/model.safetensors") for n in ("step-4", "step-8"))
    assert any(not torch.equal(good[k], last[k]) for k in good)  # step 5's update is in step-8, not in step-4
    assert _guard_notes(tmp_path / "run")[-1] == (
        "stopped at step 8: 3 steps in a row had a non-finite loss or grad norm (train.max_consecutive_skips=3); the "
        f"checkpoints from step 5 on hold the weights they failed on: resume with --resume {tmp_path}/run/checkpoints/"
        "step-4 and a lower train.lr")
    monkeypatch.undo()  # the divergence is over
    lower = dataclasses.replace(run, train=dataclasses.replace(run.train, lr=3e-4))
    again = fit(lower, tmp_path / "run", resume=tmp_path / "run/checkpoints/step-4", progress=False)
    assert (again.steps, again.stopped_reason) == (12, "max_steps")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-12"]  # keep_last 1 once it trains on


def test_a_session_ending_on_the_loops_checkpoint_keeps_keep_last(tmp_path):
    """A checkpoint saved while the run goes on keeps the one before it until a step trains on it; a session that ended
    right there (until_step, or SIGTERM, at a save_interval step) left that one too: keep_last 1 kept two."""
    run = tiny_run(tmp_path, max_steps=8, eval_interval=0, save_interval=2, keep_last=1)
    assert fit(run, tmp_path / "run", progress=False, until_step=4).stopped_reason == "until_step"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-4"]


def test_the_skip_streak_is_resumed_exactly(tmp_path, monkeypatch):
    """Stopped in the middle of a streak of skipped steps, a resume goes on counting: it stops where an uninterrupted
    run stops, not max_consecutive_skips steps later. (Its first step skipped, torch warned that the schedule had
    lost its first rate, which it had not.)"""
    import warnings

    _nan_from_step(monkeypatch, 3)
    run = tiny_run(tmp_path, max_steps=12, eval_interval=0, save_interval=2, max_consecutive_skips=3)
    straight = fit(run, tmp_path / "straight", progress=False)
    assert fit(run, tmp_path / "split", progress=False, until_step=4).stopped_reason == "until_step"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = fit(run, tmp_path / "split", resume=True, progress=False)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    assert (split.steps, split.stopped_reason) == (straight.steps, straight.stopped_reason) == (5, "nan")
    assert _guard_notes(tmp_path / "split") == _guard_notes(tmp_path / "straight")
    assert step_losses(tmp_path / "split").keys() == step_losses(tmp_path / "straight").keys()


def test_a_nan_stop_at_an_evaluation_step_evaluates_the_final_weights_and_resumes_exactly(tmp_path, monkeypatch):
    """The NaN guard stops at step 4, where eval_interval 2 would evaluate: the run ends, so its final weights (step
    3's update, never evaluated) are, as at a stop between evaluations. Before, the end took step 4 for evaluated:
    final_val_loss was step 2's, the best weights never saw step 3's update, and a resume from step 3 (whose session
    had no evaluation yet) did evaluate there, so its metrics.jsonl was not the uninterrupted run's."""
    _nan_from_step(monkeypatch, 4)
    run = tiny_run(tmp_path, max_steps=8, eval_interval=2, save_interval=2, nan_policy="stop")
    straight = fit(run, tmp_path / "straight", progress=False)
    assert (straight.steps, straight.stopped_reason) == (4, "nan")
    assert list(val_losses(tmp_path / "straight")) == [2, 4]
    assert straight.final_val_loss == val_losses(tmp_path / "straight")[4]
    assert fit(run, tmp_path / "split", progress=False, until_step=3).stopped_reason == "until_step"
    split = fit(run, tmp_path / "split", resume=True, progress=False)
    assert (split.steps, split.stopped_reason, split.final_val_loss) == (4, "nan", straight.final_val_loss)
    wall = ("tokens_per_sec", "elapsed")
    rows = [[{k: v for k, v in r.items() if k not in wall} for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
            for name in ("straight", "split")]
    assert rows[0] == rows[1]


def test_a_nan_validation_loss_is_never_the_best(tmp_path, monkeypatch):
    """Before, a NaN first evaluation was marked best and saved, and no later `val < nan` could replace it."""
    from neurallayers.training import losses

    vals = iter([float("nan"), 5.0, 6.0])
    monkeypatch.setattr(losses, "mean_loss", lambda *a, **k: (next(vals), 1))
    result = fit(tiny_run(tmp_path, max_steps=9, eval_interval=3, save_interval=0), tmp_path / "run", progress=False)
    evals = [(r["val_loss"], r["best"]) for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r]
    assert [best for _, best in evals] == [False, True, False] and evals[0][0] == "nan"
    assert result.best_val_loss == 5.0


def test_metrics_lines_plot_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tiny_run(tmp_path, max_steps=6, eval_interval=3, log_interval=2, loggers=["tensorboard"])
    result = fit(run, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4, 6]
    assert all({"lr", "grad_norm", "tokens_per_sec", "elapsed"} <= set(r) for r in train)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    assert result.final_val_loss == evals[-1]["val_loss"] and result.tokens_per_second > 0
    assert (tmp_path / "run/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc = EventAccumulator(str(tmp_path / "run/tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 4, 6]
    assert [e.value for e in acc.Scalars("val_loss")] == pytest.approx([r["val_loss"] for r in evals])


def test_trackers_keep_one_history_across_a_resume(tmp_path, monkeypatch):
    """A killed session logged steps 5-6 past its step-4 checkpoint: the resumed run's trackers continue one history
    (TensorBoard purges the tail, MLflow and W&B log into the run they started)."""
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run = tiny_run(tmp_path, max_steps=8, eval_interval=0, save_interval=4, loggers=["tensorboard", "mlflow", "wandb"])
    fit(run, out, progress=False, until_step=6)
    shutil.rmtree(out / "checkpoints/step-6")  # killed after logging step 6, before its checkpoint landed
    first_ids = {name: (out / name).read_text() for name in ("mlflow_run_id", "wandb_run_id")}
    fit(run, out, resume=True, progress=False)

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, 9))  # 5 and 6 once: the killed tail is purged
    assert {name: (out / name).read_text() for name in first_ids} == first_ids
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(first_ids["mlflow_run_id"].strip(), "loss")]
    assert steps == list(range(1, 9))  # one run, each step once: the killed session's 5 and 6 were dropped
    assert client.get_run(first_ids["mlflow_run_id"].strip()).data.metrics["loss"] == \
        [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r][-1]
    # offline-run-<time>-<id>, with -<n> after the id where wandb opened the run twice within one second
    wandb_runs = sorted(re.fullmatch(r"offline-run-[0-9_]+-([^-]+)(-\d+)?", p.name)[1]
                        for p in (out / "wandb").glob("offline-run-*"))
    assert wandb_runs == [first_ids["wandb_run_id"].strip()] * 2  # the resumed session continues the same run
    # each tracker records the run's settings (none did)
    assert "n_layer: 2" in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    params = client.get_run(first_ids["mlflow_run_id"].strip()).data.params
    assert params["model.n_layer"] == "2" and params["train.lr"] == "0.003" and params["data.tokenizer"] == "char"
    assert all(b"n_layer" in f.read_bytes() for f in (out / "wandb").glob("offline-run-*/run-*.wandb"))  # its records


def test_a_tracker_that_cannot_start_is_one_line_before_training(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the track extra were not installed
    run = tiny_run(tmp_path, max_steps=2, loggers=["tensorboard", "wandb"])
    with pytest.raises(ValueError, match=r"^train.loggers names trackers that are not installed: wandb; pip "):
        fit(run, tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_mlflow_logger_without_sqlalchemy_writes_a_file_store(tmp_path, monkeypatch):
    """A bare mlflow-skinny cannot write sqlite (the model registry refuses it): the logger falls back to mlruns/."""
    mlflow = pytest.importorskip("mlflow")
    import importlib.util

    from neurallayers.training.loggers import MLflowLogger

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else
                        find_spec(name, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = MLflowLogger(tmp_path)
    logger.log({"loss": 2.5}, step=3)
    logger.close()
    assert not (tmp_path / "mlflow.db").exists()
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    history = client.get_metric_history((tmp_path / "mlflow_run_id").read_text().strip(), "loss")
    assert [(m.step, m.value) for m in history] == [(3, 2.5)]


def test_bad_resume_targets_fail_before_training(tmp_path):
    run = tiny_run(tmp_path, max_steps=4, eval_interval=0)
    encoder = dataclasses.replace(run, model=dataclasses.replace(run.model, causal=False,
                                                                 head="sequence_classification"))
    with pytest.raises(ValueError, match="head='sequence_classification'.*masked LM"):
        fit(encoder, tmp_path / "encoder", progress=False)
    assert not (tmp_path / "encoder").exists()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        fit(run, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(run, tmp_path / "run", resume=tmp_path / "nowhere", progress=False)
    fit(run, tmp_path / "run", progress=False)
    metrics = (tmp_path / "run/metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        fit(run, tmp_path / "run", progress=False)
    other = RunConfig(model=run.model.replace(n_embd=48), train=run.train, data=run.data)
    with pytest.raises(ValueError, match=r"model config differs .*n_embd: 32 -> 48"):
        fit(other, tmp_path / "run", resume=True, progress=False)
    # refused before the corpus is read (a large one takes minutes to tokenize), with a model its tokenizer resized
    moved = dataclasses.replace(other, model=other.model.replace(vocab_size=7),
                                data=dataclasses.replace(run.data, source=str(tmp_path / "gone.txt")))
    with pytest.raises(ValueError, match=r"model config differs .*n_embd: 32 -> 48"):
        fit(moved, tmp_path / "run", resume=True, progress=False)
    # another vocabulary: a tokenizer with more characters
    from neurallayers.data import Tokenizer

    shutil.copy(tmp_path / "run/config.yaml", tmp_path / "config.bak")
    Tokenizer.train_char(["abcdefghijklmnopqrstuvwxyz0123456789 \n"]).save(tmp_path / "run")
    with pytest.raises(ValueError, match="vocab_size"):
        fit(run, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run/metrics.jsonl").read_text() == metrics  # nothing trained, nothing logged
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-4"]


def test_resume_from_named_checkpoint_and_loggers_rejected(tmp_path):
    run = tiny_run(tmp_path, max_steps=8, eval_interval=0, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    result = fit(run, tmp_path / "run", resume=tmp_path / "run/checkpoints/step-4", progress=False)
    assert result.steps == 8
    with pytest.raises(ValueError, match="unknown logger"):
        fit(run, tmp_path / "other", loggers=["tensorbored"], progress=False)


def test_resuming_an_older_checkpoint_sets_the_newer_history_aside(tmp_path, caplog):
    """Back to step-8 (after a loss spike, say) at a lower lr: the newer checkpoints and the best weights they led to
    belonged to the old history. Left in place, the next plain --resume (after a Ctrl-C) jumped back to step-16 and
    model.safetensors held weights no logged val loss described."""
    run = tiny_run(tmp_path, max_steps=16, warmup_steps=0, eval_interval=4, save_interval=4, keep_last=3)
    fit(run, tmp_path / "run", progress=False)
    vals = {r["step"]: r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r}
    assert vals[16]["best"], vals  # the old history's best is its last evaluation
    old_best = read_safetensors(tmp_path / "run/model.safetensors")
    lower = dataclasses.replace(run, train=dataclasses.replace(run.train, lr=3e-4))
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(lower, tmp_path / "run", resume=tmp_path / "run/checkpoints/step-8", progress=False, until_step=10)
    assert "resumed from step 8, before the run's newest checkpoint (step-16): the newer checkpoints and the weights " \
        "they led to (model.safetensors) moved to" in caplog.text
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-8", "step-10"]
    aside = tmp_path / "run/abandoned"
    assert sorted(p.name for p in aside.iterdir()) == ["model.safetensors", "step-12", "step-16"]
    assert all(torch.equal(old_best[k], v) for k, v in read_safetensors(aside / "model.safetensors").items())
    best_at_8 = read_safetensors(tmp_path / "run/checkpoints/step-8/model.safetensors")  # step 8's was the best then
    assert all(torch.equal(best_at_8[k], v) for k, v in read_safetensors(tmp_path / "run/model.safetensors").items())
    result = fit(lower, tmp_path / "run", resume=True, progress=False)  # goes on from step 10, not 16
    assert result.steps == 16 and [p.name for p in ckpt.list_checkpoints(tmp_path / "run")][-1] == "step-16"
    lrs = {r["step"]: r["lr"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "lr" in r}
    assert sorted(lrs) == list(range(1, 17)) and lrs[12] < run.train.lr_at(11)  # the new history's rates
    with pytest.raises(ValueError, match="a run resumes from its checkpoints/ folder"):  # not a set-aside one
        fit(lower, tmp_path / "run", resume=tmp_path / "run/abandoned/step-16", progress=False)


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing in fit handles it."""


@pytest.mark.parametrize("killed_in", ["set_aside", "copy_model", "truncate_metrics"])
def test_a_kill_while_rolling_back_to_an_older_checkpoint_leaves_it_to_the_next_resume(tmp_path, monkeypatch,
                                                                                      killed_in):
    """Killed while a resume from step-8 set the newer history aside, the same command again must give the files an
    uninterrupted roll-back gives. model.safetensors went aside first and its replacement came after: a kill between
    left the run without it, and the next resume, whose truncated metrics.jsonl no longer showed the newer history's
    evaluations, never put it back (a run whose later evaluations never beat step 8's best ended without one)."""
    import neurallayers.training.trainer as trainer

    run = tiny_run(tmp_path, max_steps=16, warmup_steps=0, eval_interval=4, save_interval=4, keep_last=3)
    fit(run, tmp_path / "run", progress=False)
    old_best = read_safetensors(tmp_path / "run/model.safetensors")
    target = tmp_path / "run/checkpoints/step-8"
    module = ckpt if killed_in != "truncate_metrics" else trainer
    real = getattr(module, killed_in)

    def killed(*args, **kwargs):
        if killed_in != "set_aside" or args[1][0].name != "model.safetensors":  # the checkpoints' move
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(module, killed_in, killed)
    with pytest.raises(_Killed):
        fit(run, tmp_path / "run", resume=target, progress=False, until_step=9)
    monkeypatch.undo()
    fit(run, tmp_path / "run", resume=target, progress=False, until_step=9)  # the same command again
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-8", "step-9"]
    best_at_8 = read_safetensors(target / "model.safetensors")  # step 8's evaluation was the best then
    assert all(torch.equal(best_at_8[k], v) for k, v in read_safetensors(tmp_path / "run/model.safetensors").items())
    aside = tmp_path / "run/abandoned"
    assert {"step-12", "step-16", "model.safetensors"} <= {p.name for p in aside.iterdir()}
    assert all(torch.equal(old_best[k], v) for k, v in read_safetensors(aside / "model.safetensors").items())
    assert max(r["step"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")) == 9


def test_rolling_back_keeps_model_safetensors_to_the_history_it_goes_on(tmp_path, caplog):
    """Without evaluations model.safetensors is the final weights, and a best whose checkpoint was pruned is gone:
    either way the newer history's weights go aside and the resumed step's take their place."""
    def same(a, b):
        wa, wb = read_safetensors(a), read_safetensors(b)
        return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    no_val = tiny_run(tmp_path, max_steps=8, eval_interval=0, save_interval=4)
    no_val = dataclasses.replace(no_val, data=dataclasses.replace(no_val.data, val_fraction=0.0))
    fit(no_val, tmp_path / "a", progress=False)
    fit(no_val, tmp_path / "a", resume=tmp_path / "a/checkpoints/step-4", progress=False, until_step=5)
    assert same(tmp_path / "a/model.safetensors", tmp_path / "a/checkpoints/step-4/model.safetensors")
    assert (tmp_path / "a/abandoned/model.safetensors").is_file()

    # evaluations at 3, 6, 9, 12 and checkpoints at 4, 8, 12: step 4's best (at 3) has no checkpoint of its own,
    # but step-4 keeps the run's best weights then (best.safetensors)
    gone = tiny_run(tmp_path, max_steps=12, eval_interval=3, save_interval=4, keep_last=3)
    fit(gone, tmp_path / "b", progress=False)
    vals = [r for r in read_jsonl(tmp_path / "b/metrics.jsonl") if r.get("best")]
    assert vals[0]["step"] == 3 and vals[-1]["step"] > 4, vals
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(gone, tmp_path / "b", resume=tmp_path / "b/checkpoints/step-4", progress=False, until_step=5)
    assert "no longer kept" not in caplog.text
    assert same(tmp_path / "b/model.safetensors", tmp_path / "b/checkpoints/step-4/best.safetensors")
    assert not same(tmp_path / "b/model.safetensors", tmp_path / "b/checkpoints/step-4/model.safetensors")
    # a checkpoint from before best.safetensors was kept: step 3's weights are gone
    (tmp_path / "c/checkpoints/step-4/best.safetensors").unlink()
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(gone, tmp_path / "c", resume=tmp_path / "c/checkpoints/step-4", progress=False, until_step=5)
    best_before = vals[0]
    assert f"(val loss {best_before['val_loss']:.4f}, step {best_before['step']}) are no longer kept: " \
        "model.safetensors becomes step 4's weights" in caplog.text
    assert same(tmp_path / "c/model.safetensors", tmp_path / "c/checkpoints/step-4/model.safetensors")


def test_resume_under_a_changed_schedule_follows_it_from_the_next_step(tmp_path):
    """Training longer (a larger max_steps) or at another lr: the first resumed step already uses the current
    config's schedule, the rates an uninterrupted run of that config uses, not the checkpoint's."""
    def rates(run_dir):
        return {r["step"]: r["lr"] for r in read_jsonl(run_dir / "metrics.jsonl") if "lr" in r}

    base = dict(eval_interval=0, save_interval=4)
    fit(tiny_run(tmp_path, max_steps=8, **base), tmp_path / "straight", progress=False)
    fit(tiny_run(tmp_path, max_steps=8, lr=1e-3, **base), tmp_path / "straight-lr", progress=False)
    straight, straight_lr = rates(tmp_path / "straight"), rates(tmp_path / "straight-lr")

    fit(tiny_run(tmp_path, max_steps=4, **base), tmp_path / "longer", progress=False)  # a 4-step schedule ...
    fit(tiny_run(tmp_path, max_steps=8, **base), tmp_path / "longer", resume=True, progress=False)  # ... extended
    longer = rates(tmp_path / "longer")
    assert longer[4] != straight[4] and [longer[s] for s in range(5, 9)] == [straight[s] for s in range(5, 9)]

    fit(tiny_run(tmp_path, max_steps=8, **base), tmp_path / "new-lr", progress=False, until_step=4)
    fit(tiny_run(tmp_path, max_steps=8, lr=1e-3, **base), tmp_path / "new-lr", resume=True, progress=False)
    new_lr = rates(tmp_path / "new-lr")
    assert [new_lr[s] for s in range(1, 5)] == [straight[s] for s in range(1, 5)]
    assert [new_lr[s] for s in range(5, 9)] == [straight_lr[s] for s in range(5, 9)]


def test_resume_with_other_adamw_settings_uses_them(tmp_path, caplog):
    """weight_decay, betas and eps may change on resume as the lr may: the checkpoint's optimizer state carried its
    own, so the run went on with the old ones while config.yaml named the new."""
    base = dict(max_steps=8, eval_interval=0, save_interval=4)
    fit(tiny_run(tmp_path, **base), tmp_path / "straight", progress=False)
    fit(tiny_run(tmp_path, **base), tmp_path / "run", progress=False, until_step=4)
    new = tiny_run(tmp_path, **base, weight_decay=0.5, beta1=0.5, beta2=0.6, eps=1e-3)
    with caplog.at_level("INFO", logger="neurallayers"):
        fit(new, tmp_path / "run", resume=True, progress=False)
    assert "the optimizer goes on with this config's weight_decay 0.5 (the checkpoint's: 0.1), betas (0.5, 0.6) " \
        "(the checkpoint's: (0.9, 0.95)), eps 0.001 (the checkpoint's: 1e-08)" in caplog.text
    straight, changed = step_losses(tmp_path / "straight"), step_losses(tmp_path / "run")
    assert [changed[s] for s in range(1, 6)] == [straight[s] for s in range(1, 6)]  # step 5's loss precedes its update
    assert all(changed[s] != straight[s] for s in range(6, 9))


def test_resume_on_other_data_says_so(tmp_path, caplog):
    first = fit(tiny_run(tmp_path, max_steps=4, eval_interval=0), tmp_path / "run", progress=False)
    other = write_corpus(tmp_path / "other.txt", seed=5)
    with caplog.at_level("WARNING", logger="neurallayers"):
        result = fit(tiny_run(tmp_path, corpus=other, max_steps=6, eval_interval=0), tmp_path / "run", resume=True,
                     progress=False)
    assert result.steps == 6
    assert "data settings differ from the saved run (source:" in caplog.text and "other.txt" in caplog.text
    # the old data's best val loss does not compare with the new data's: the best starts over
    assert f"the best val loss so far ({first.best_val_loss:.4f}) was measured on the saved run's data" in caplog.text
    assert result.best_val_loss == result.final_val_loss
    # asked for another tokenizer, the resume is refused (test_resume_changes) and config.yaml still says the run's
    run = tiny_run(tmp_path, corpus=other, max_steps=7, eval_interval=0)
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, tokenizer="bpe", vocab_size=300))
    with pytest.raises(ValueError, match="keeps the tokenizer it was trained with"):
        fit(run, tmp_path / "run", resume=True, progress=False)
    saved = RunConfig.from_yaml(tmp_path / "run/config.yaml")
    assert (saved.data.tokenizer, saved.data.vocab_size, saved.train.max_steps) == ("char", None, 6)


@pytest.mark.parametrize("save_interval", [1000, 1])
def test_time_budget_stops_evaluates_saves_and_samples(tmp_path, save_interval):
    """Also when the step it stops at is a save step. Its checkpoint holds what an uninterrupted run holds at that
    step (no evaluation yet here), written before the evaluation on the way out, which a resume undoes
    (test_resume_matrix's time-budget cell); model.safetensors holds the evaluated weights meanwhile."""
    from neurallayers.weights import torch_load_safe

    run = tiny_run(tmp_path, max_steps=10_000, max_minutes=1e-6, eval_interval=1000, save_interval=save_interval,
                   sample_prompts=["the ", "fox"], sample_tokens=12)
    result = fit(run, tmp_path / "run", progress=False)
    assert result.stopped_reason == "time_budget" and result.steps < 10_000
    assert result.final_val_loss is not None  # evaluated on the way out
    assert ckpt.latest_checkpoint(tmp_path / "run").name == f"step-{result.steps}"
    last = ckpt.latest_checkpoint(tmp_path / "run")
    state = torch_load_safe(last / "state.pt")
    assert math.isnan(state["best_val_loss"]) and result.best_val_loss == result.final_val_loss
    evals = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r]
    assert [(r["step"], r["val_loss"], r.get("time_budget")) for r in evals] == [(result.steps, result.final_val_loss,
                                                                                  True)]
    weights, evaluated = (read_safetensors(p) for p in (last / "model.safetensors", tmp_path / "run/model.safetensors"))
    assert all(torch.equal(weights[k], evaluated[k]) for k in weights)
    samples = (tmp_path / "run/samples.txt").read_text()
    assert "=== prompt: 'the '" in samples and "=== prompt: 'fox'" in samples


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    base = dict(max_steps=3, eval_interval=0, save_interval=0)
    fit(tiny_run(tmp_path, **base), tmp_path / "plain", progress=False)
    fit(tiny_run(tmp_path, gradient_checkpointing=True, **base), tmp_path / "ckpt", progress=False)
    assert step_losses(tmp_path / "plain") == step_losses(tmp_path / "ckpt")


def test_bad_fit_arguments(tmp_path):
    with pytest.raises(ValueError, match="until_step"):
        fit(tiny_run(tmp_path), tmp_path / "a", until_step=0, progress=False)
    with pytest.raises(ValueError, match="precision='fp16' needs CUDA"):
        fit(tiny_run(tmp_path, precision="fp16"), tmp_path / "b", progress=False)
    with pytest.raises(FileNotFoundError, match="no corpus"):
        run = tiny_run(tmp_path)
        run.data.source = str(tmp_path / "missing.txt")
        fit(run, tmp_path / "c", progress=False)
    (tmp_path / "tiny.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="block_size=32 needs at least 33"):
        fit(tiny_run(tmp_path, corpus=tmp_path / "tiny.txt"), tmp_path / "d", progress=False)


def test_fit_arguments_of_the_wrong_kind_are_refused_before_any_work(tmp_path):
    """One tracker name (transformers' report_to takes one as a str) was read letter by letter, "unknown logger(s)
    ['t', 'e', 'n', ...]", once the corpus was tokenized and the run directory written; an object without log() and
    close() failed after the first step with an AttributeError; until_step=2.5 stopped after step 3."""
    run = tiny_run(tmp_path)

    class NoClose:
        def log(self, metrics, step):
            pass

    cases = [
        (dict(loggers="tensorboard"), r"loggers='tensorboard': expected a list .*, e\.g\. \['tensorboard'\]"),
        (dict(loggers=[NoClose()]), r"loggers\[0\]: a NoClose has no log\(metrics, step\) and close\(\) methods"),
        (dict(loggers=["jsonl", "tensorbored"]), r"loggers\[1\]='tensorbored': unknown logger; allowed: jsonl, "),
        (dict(until_step=2.5), r"until_step=2\.5 must be an int >= 1 or None"),
        (dict(until_step=True), r"until_step=True must be an int >= 1 or None"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(run, tmp_path / "out", progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"run: expected a RunConfig .*, got dict"):
        fit(run.to_dict(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_plain_resume_after_a_killed_roll_back_is_refused_until_the_roll_back_is_finished(tmp_path, monkeypatch):
    """The review: a roll-back to step-8 killed after model.safetensors became step 8's best and before the newer
    checkpoints moved aside, then a plain --resume, went on from the newer history's step 16 with step 8's best
    weights as its own, silently. The roll-back leaves a marker until it is done: only the same resume may go on."""
    import neurallayers.training.trainer as trainer

    run = tiny_run(tmp_path, max_steps=16, warmup_steps=0, eval_interval=4, save_interval=4, keep_last=3)
    fit(run, tmp_path / "run", progress=False)
    real = ckpt.set_aside

    def killed(run_dir, paths, **kw):
        if paths[0].name != "model.safetensors":  # the checkpoints' move, after model.safetensors was replaced
            raise _Killed
        return real(run_dir, paths, **kw)

    monkeypatch.setattr(ckpt, "set_aside", killed)
    target = tmp_path / "run/checkpoints/step-8"
    with pytest.raises(_Killed):
        fit(run, tmp_path / "run", resume=target, progress=False, until_step=9)
    monkeypatch.undo()
    assert (tmp_path / "run" / trainer.ROLL_BACK).read_text() == "8\n"
    with pytest.raises(ValueError, match=r"a resume of .* from step 8 was stopped while it set the newer history "
                                         r"aside: run it again to finish it \(--resume .*step-8\)"):
        fit(run, tmp_path / "run", resume=True, progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-8", "step-12", "step-16"]  # untouched
    fit(run, tmp_path / "run", resume=target, progress=False, until_step=9)  # the same command finishes it
    assert not (tmp_path / "run" / trainer.ROLL_BACK).exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-8", "step-9"]
    fit(run, tmp_path / "run", resume=True, progress=False, until_step=10)  # and a plain resume goes on from there
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")][-1] == "step-10"


def test_an_empty_or_non_path_out_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    """out_dir="" (an unset variable) trained into the current folder, writing its config, checkpoints and metrics
    there, where `train --out ""`, nl.train and resume="" refuse it; None or a number was a bare TypeError that named
    no argument."""
    run = tiny_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = [("", r"out_dir is empty; name the run directory to write"),
             ("  ", r"out_dir is empty; name the run directory to write"),
             (None, r"out_dir=None: must be a path \(a str or pathlib\.Path\) of the run directory, got NoneType"),
             (3, r"out_dir=3: must be a path \(a str or pathlib\.Path\) of the run directory, got int")]
    for out, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(run, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # nothing written, not even a token cache


def test_settings_that_cannot_do_what_they_say_are_warned_about(tmp_path, caplog):
    """A warmup as long as the run (the default 100 steps with max_steps 4) never reaches lr; distributed: ddp
    outside torchrun trains one process. Both used to pass without a word."""
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(tiny_run(tmp_path, max_steps=4, warmup_steps=100, distributed="ddp"), tmp_path / "run", progress=False)
    assert "train.warmup_steps=100 >= max_steps=4: the learning rate is still warming up" in caplog.text
    assert "train.distributed=ddp, but this process was not started by torchrun" in caplog.text


def test_a_resume_with_other_batches_says_the_data_order_differs(tmp_path, caplog):
    fit(tiny_run(tmp_path, max_steps=4), tmp_path / "run", progress=False)
    with caplog.at_level("INFO", logger="neurallayers"):
        fit(tiny_run(tmp_path, max_steps=6), tmp_path / "run", resume=True, progress=False)
    assert "data order" not in caplog.text and "validation windows" not in caplog.text
    with caplog.at_level("INFO", logger="neurallayers"):
        fit(tiny_run(tmp_path, max_steps=8, batch_size=2, grad_accum=2), tmp_path / "run", resume=True, progress=False)
    assert "took batches of 4 sequences (all processes) x 1 accumulation steps and this run takes 2 x 2" in caplog.text
    # evaluation scores eval_batches x batch_size windows: a best val loss on 8 does not compare with losses on 4
    assert "was measured on 8 validation windows and this run's evaluations score 4" in caplog.text


def test_two_runs_in_one_process_log_to_their_own_mlflow_stores(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri sets $MLFLOW_TRACKING_URI: the second run of a process logged into the first run's
    store, which it took for the user's."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        fit(tiny_run(tmp_path, max_steps=2, eval_interval=0, loggers=["mlflow"]), tmp_path / name, progress=False)
    for name in ("a", "b"):
        client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / name).resolve() / 'mlflow.db'}")
        run_id = (tmp_path / name / "mlflow_run_id").read_text().strip()
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2], name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(tmp_path / 'mine.db').resolve()}")  # the user's
    fit(tiny_run(tmp_path, max_steps=2, eval_interval=0, loggers=["mlflow"]), tmp_path / "c", progress=False)
    assert (tmp_path / "mine.db").is_file() and not (tmp_path / "c" / "mlflow.db").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_processes_split_the_eval_windows_and_each_runs_every_batch():
    """Two ranks with batch 2 score the windows one process with batch 4 scores, each window once; a rank left
    without rows in the last batch still runs it (FSDP gathers weights in every forward), scoring nothing."""
    import torch.distributed as tdist

    from neurallayers.config import ModelConfig
    from neurallayers.training.distributed import DistInfo
    from neurallayers.training.trainer import mean_loss

    torch.manual_seed(0)
    model = neurallayers.models.build_model(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    model.eval()
    tokens = torch.randint(0, 32, (45,)).numpy()  # 5 windows of 8: batches of 4 and 1
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    kw = dict(block_size=8, max_batches=None, device=torch.device("cpu"))
    mean, count = mean_loss(model, tokens, batch_size=4, **kw)
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)  # all_reduce sums one rank
    try:
        parts = []
        for rank in (0, 1):
            calls.clear()
            parts.append(mean_loss(model, tokens, batch_size=2, info=DistInfo(rank=rank, world_size=2), **kw))
            assert len(calls) == 2
    finally:
        tdist.destroy_process_group()
    assert [c for _, c in parts] == [3 * 8, 2 * 8] and count == 5 * 8
    assert sum(m * c for m, c in parts) / count == pytest.approx(mean, rel=1e-6)


def test_a_validation_split_shorter_than_a_window_says_so(tmp_path, caplog):
    """It said "no validation tokens (val_fraction=0.1)", sending the user to val_fraction though the split held
    tokens, only fewer than a window of the block size."""
    corpus = tmp_path / "short.txt"
    corpus.write_text("".join(f"line {i} of a text\n\n" for i in range(60)))
    run = tiny_run(tmp_path, corpus=corpus, max_steps=2, model={"block_size": 128})
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(run, tmp_path / "run", progress=False)
    found = re.search(r"the validation split has (\d+) tokens \(val_fraction=0.1\), fewer than one window of "
                      r"block_size \+ 1 = 129: no evaluation", caplog.text)
    assert found and 0 < int(found.group(1)) < 129, caplog.text


def test_a_run_from_before_document_bos_resumes_with_its_own_tokenization(tmp_path, caplog):
    """Documents now start with bos where the tokenizer's encoding does (a Llama tokenizer.json): a run begun before,
    whose config.yaml does not say, resumes on its own token stream, loss for loss, and says nothing changed."""
    import yaml
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers

    from neurallayers.data import Tokenizer

    corpus = write_corpus(tmp_path / "corpus.txt")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([corpus.read_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>").save(tmp_path / "llama-tok")
    run = tiny_run(tmp_path, corpus=corpus, max_steps=8, save_interval=4, eval_interval=4)
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, tokenizer=str(tmp_path / "llama-tok")))
    fresh = fit(run, tmp_path / "new", progress=False, until_step=2)
    assert RunConfig.from_yaml(tmp_path / "new/config.yaml").data.document_bos is True and fresh.steps == 2
    old = dataclasses.replace(run, data=dataclasses.replace(run.data, document_bos=False))  # as runs were tokenized
    fit(old, tmp_path / "straight", progress=False)
    fit(old, tmp_path / "split", progress=False, until_step=4)
    saved = yaml.safe_load((tmp_path / "split/config.yaml").read_text())
    del saved["data"]["document_bos"]  # a config.yaml written before the field
    (tmp_path / "split/config.yaml").write_text(yaml.safe_dump(saved))
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(RunConfig.from_dict(saved), tmp_path / "split", resume=True, progress=False)
    assert "data settings differ" not in caplog.text
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "straight")


def test_an_error_in_training_closes_the_loggers_and_fails_the_mlflow_run(tmp_path, monkeypatch):
    """The loggers were closed after the loop only when it ended without an error: a crash left the MLflow run
    RUNNING in its store (and W&B's unfinished); a finished run ends FINISHED."""
    mlflow = pytest.importorskip("mlflow")
    from neurallayers.training import trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = trainer._Fit._train_step

    def failing(self):
        if self.step == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(self)

    monkeypatch.setattr(trainer._Fit, "_train_step", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(tiny_run(tmp_path, max_steps=4, eval_interval=0, loggers=["mlflow"]), tmp_path / "a", progress=False)
    assert mlflow.active_run() is None  # ended then, not only when the next run starts
    monkeypatch.setattr(trainer._Fit, "_train_step", real)
    fit(tiny_run(tmp_path, max_steps=2, eval_interval=0, loggers=["mlflow"]), tmp_path / "b", progress=False)
    for name, status in (("a", "FAILED"), ("b", "FINISHED")):
        client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / name).resolve() / 'mlflow.db'}")
        run_id = (tmp_path / name / "mlflow_run_id").read_text().strip()
        assert client.get_run(run_id).info.status == status, name
    assert mlflow.active_run() is None


def test_a_tracker_failing_to_close_after_an_error_leaves_that_error_to_report(tmp_path, monkeypatch, caplog):
    """A full disk stops training with a one-line CheckpointWriteError; a tracker whose close then failed too (its
    store on the same disk) raised its own error in its place, and the CLI printed "[Errno 28] No space left on
    device" instead of which checkpoint failed and that the previous one is intact. That close's failure is a warning
    now; after a run that ended well it is still the error."""
    import errno

    from neurallayers.training import trainer
    from neurallayers.training.checkpoint import CheckpointWriteError

    class Tracker:
        def log(self, metrics, step):
            pass

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(self, *args, **kwargs):
        raise CheckpointWriteError("could not write checkpoint step-2: the disk is full (simulated)")

    run = tiny_run(tmp_path, max_steps=4, eval_interval=0, save_interval=2)
    monkeypatch.setattr(trainer._Fit, "_save", full_disk)
    with caplog.at_level("WARNING", logger="neurallayers"), pytest.raises(CheckpointWriteError, match="simulated"):
        fit(run, tmp_path / "a", loggers=[Tracker()], progress=False)
    assert "No space left on device" in caplog.text
    monkeypatch.undo()
    with pytest.raises(OSError, match="No space left on device"):
        fit(run, tmp_path / "b", loggers=[Tracker()], progress=False)


def test_a_run_ended_at_its_last_checkpoint_keeps_its_final_evaluation(tmp_path):
    """Stopped at step 6 and resumed with max_steps 6 (to end it there: nothing to train), the run evaluated step 6
    after that step's checkpoint was written, which kept the best val loss of step 4 and its weights. The next resume
    went on from them: it said best val loss 3.19 where the session before said 3.12 and model.safetensors held the
    3.12 weights, and a val loss between the two would have replaced them as the best."""
    from neurallayers.weights import torch_load_safe

    out = tmp_path / "run"
    run = tiny_run(tmp_path, max_steps=12, eval_interval=4, save_interval=4)
    fit(run, out, progress=False, until_step=6)
    short = dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=6))
    ended = fit(short, out, resume=True, progress=False)
    vals = {r["step"]: r["val_loss"] for r in read_jsonl(out / "metrics.jsonl") if "val_loss" in r}
    assert ended.best_val_loss == vals[6] < vals[4]  # the final evaluation is the run's best
    state = torch_load_safe(out / "checkpoints/step-6/state.pt")
    assert state["best_val_loss"] == vals[6]
    best = out / "checkpoints/step-6" / ckpt.BEST
    assert best.read_bytes() == (out / "model.safetensors").read_bytes()
    assert fit(short, out, resume=True, progress=False).best_val_loss == vals[6]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-4", "step-6"]


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(tmp_path):
    """Each session wrote its first step to metrics.jsonl (and the trackers): stopped at 4 and resumed, a run with
    log_interval 3 held steps 1, 3, 5, 6 where the uninterrupted run holds 1, 3, 6."""
    run = tiny_run(tmp_path, max_steps=8, log_interval=3, eval_interval=0, save_interval=4)
    fit(run, tmp_path / "straight", progress=False)
    fit(run, tmp_path / "split", until_step=4, progress=False)
    fit(run, tmp_path / "split", resume=True, progress=False)
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "straight")
    assert sorted(step_losses(tmp_path / "straight")) == [1, 3, 6]
