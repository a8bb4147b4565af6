"""The run directory's files besides checkpoints under faults: the loss plot, what a kill left behind."""

import dataclasses
import errno
import importlib.util
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from nl_train_helpers import ENCODER, read_jsonl, run_fit_process, tiny_run, val_losses

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit
from neurallayers.weights import read_safetensors


def test_a_failed_loss_plot_keeps_the_old_plot_and_the_finished_run(tmp_path, monkeypatch, caplog):
    """loss.png was written in place, and a failed write raised out of fit() after the run had finished: a full
    disk or a kill mid-save left a torn PNG where the old plot was, and the CLI reported the finished run failed."""
    figure = pytest.importorskip("matplotlib.figure")
    run = tiny_run(tmp_path, max_steps=4, eval_interval=2)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    before = (out / "loss.png").read_bytes()
    real = figure.Figure.savefig

    def torn(self, fname, *args, **kwargs):  # writes part of the file, then the disk fills up
        real(self, fname, *args, **kwargs)
        Path(fname).write_bytes(Path(fname).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(figure.Figure, "savefig", torn)
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=6))
    with caplog.at_level("WARNING", logger="neurallayers"):
        result = fit(longer, out, resume=True, progress=False)
    assert result.steps == 6 and result.stopped_reason == "max_steps"
    assert "could not write the loss plot" in caplog.text and "No space left on device" in caplog.text
    assert (out / "loss.png").read_bytes() == before
    assert not list(out.glob(".loss.png.tmp-*"))


@pytest.mark.parametrize("model", [None, ENCODER], ids=["decoder", "masked-lm"])
def test_a_failed_samples_write_warns_and_the_run_finishes(tmp_path, monkeypatch, caplog, model):
    """samples.txt, like the plot, comes after the run's last checkpoint: a full disk there raised out of fit(), so
    the CLI reported a finished run failed and its loss plot was never drawn."""
    from neurallayers.training import samples

    real = samples.write_text_atomic

    def full_disk(path, text):
        if Path(path).name == "samples.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(samples, "write_text_atomic", full_disk)
    run = tiny_run(
        tmp_path,
        model=model,
        max_steps=2,
        save_interval=2,
        eval_interval=2,
        warmup_steps=0,
        sample_tokens=4,
        sample_prompts=["the "],
    )
    with caplog.at_level("WARNING", logger="neurallayers"):
        result = fit(run, tmp_path / "run", progress=False)
    assert result.steps == 2 and result.stopped_reason == "max_steps"
    assert "could not write the samples" in caplog.text and "No space left on device" in caplog.text
    assert not (tmp_path / "run/samples.txt").exists()
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "run")] == ["step-2"]
    if importlib.util.find_spec("matplotlib") is not None:  # the plot, drawn after the samples
        assert (tmp_path / "run/loss.png").is_file()


# SIGKILL while the best weights of step 4 are being written (after step-2's checkpoint)
KILL_IN_BEST_WEIGHTS = """
import os, signal
import neurallayers.weights as w
_orig, _seen = w.fsync_file, []
def _hook(path):
    if path.name.startswith(".model.safetensors.tmp-") and "checkpoints" not in path.parts:
        _seen.append(path)
        if len(_seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    _orig(path)
w.fsync_file = _hook
"""


def test_a_resume_removes_the_temp_files_a_kill_left(tmp_path):
    """A kill while model.safetensors was written left `.model.safetensors.tmp-<pid>`, as large as the model, in
    the run directory for good: one more per kill of a preempted run."""
    run = tiny_run(tmp_path, max_steps=6, eval_interval=2, save_interval=2)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    proc = run_fit_process(tmp_path, cfg, out, prelude=KILL_IN_BEST_WEIGHTS)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in out.glob(".model.safetensors.tmp-*")]
    (out / ".notes.txt.tmp-1").write_text("the user's")  # not the temp name of a file a run writes: stays
    proc = run_fit_process(tmp_path, cfg, out, resume=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in out.glob(".*.tmp-*")] == [".notes.txt.tmp-1"]


# SIGKILL after the last checkpoint (step 6) landed, before the older ones beyond keep_last were pruned
KILL_BEFORE_PRUNING = """
import os, signal
import neurallayers.training.checkpoint as c
_prune = c.prune_checkpoints
def _hook(run_dir, **kw):
    if c.latest_checkpoint(run_dir).name == "step-6":
        os.kill(os.getpid(), signal.SIGKILL)
    _prune(run_dir, **kw)
c.prune_checkpoints = _hook
"""


def test_a_resume_prunes_what_a_kill_left_beyond_keep_last(tmp_path):
    """Pruning followed each save only: a run killed between its last checkpoint's rename and the pruning kept one
    checkpoint more than keep_last for good, as its resume had nothing to train and saved nothing."""
    run = tiny_run(tmp_path, max_steps=6, eval_interval=3, save_interval=2, keep_last=2)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    proc = run_fit_process(tmp_path, cfg, out, prelude=KILL_BEFORE_PRUNING)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    proc = run_fit_process(tmp_path, cfg, out, resume=True)
    assert proc.returncode == 0 and "STEPS 6 max_steps" in proc.stdout, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]
    assert (out / "loss.png").is_file()  # and the finished run's last files were written


def test_fixed_length_samples_keep_the_space_after_their_prompt(tmp_path, monkeypatch):
    """Under FSDP every rank samples a fixed number of tokens and the text is cut at eos afterwards: it was decoded
    alone there, so a SentencePiece first word lost its space ("Hello" + "world") where every other run's samples,
    decoded after their prompt as generate() decodes, read "Hello world"."""
    import importlib
    from types import SimpleNamespace

    import torch
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.training.samples import write_samples

    vocab = {"</s>": 0, "▁Hello": 1, "▁world": 2, "▁x": 3}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="</s>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok = Tokenizer(hf, kind="file", eos_token="</s>")
    assert tok.decode([2]) == "world" and tok.decode([1, 2]) == "Hello world"
    outs = [SimpleNamespace(token_ids=[2, 0, 3], text=" world x")]  # generate()'s text holds what follows eos
    gen_module = importlib.import_module("neurallayers.generation.generate")  # the package's `generate` is the function
    monkeypatch.setattr(gen_module, "generate", lambda *args, **kwargs: outs)
    model = SimpleNamespace(config=SimpleNamespace(block_size=16), eval=lambda: None)
    cfg = SimpleNamespace(sample_prompts=["Hello"], sample_tokens=3, seed=0)
    path = tmp_path / "samples.txt"
    write_samples(model, tok, cfg, path, torch.device("cpu"), fixed_length=True)
    assert "\nHello world\n" in path.read_text()


# SIGKILL while the last checkpoint (step 8) is written, after the final evaluation wrote its (best) weights
KILL_IN_LAST_CHECKPOINT = """
import os, signal
import neurallayers.training.checkpoint as c
_save = c.save_checkpoint
def _hook(run_dir, *, step, **kw):
    if step == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(run_dir, step=step, **kw)
c.save_checkpoint = _hook
"""


def test_a_resume_replaces_the_best_weights_a_killed_session_left_without_a_checkpoint(tmp_path):
    """Killed after a better evaluation and before its checkpoint, a session left model.safetensors holding weights
    no checkpoint leads to: a resume from step 4 kept them as the run's model while its log said step 4 was best
    (and a resume that trains on gave them up only if its own evaluations beat step 4's)."""
    run = tiny_run(tmp_path, max_steps=8, eval_interval=2, save_interval=4, warmup_steps=0)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    proc = run_fit_process(tmp_path, cfg, out, prelude=KILL_IN_LAST_CHECKPOINT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    bests = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("best")]
    assert bests[-1] == 8 and [p.name for p in ckpt.list_checkpoints(out)] == ["step-4"], bests
    killed = read_safetensors(out / "model.safetensors")
    shorter = dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=4))  # nothing more to train
    result = fit(shorter, out, resume=True, progress=False)
    assert result.steps == 4 and result.best_val_loss == val_losses(out)[4]
    best = read_safetensors(out / "checkpoints/step-4/model.safetensors")  # step 4's evaluation was the best
    assert all(torch.equal(best[k], v) for k, v in read_safetensors(out / "model.safetensors").items())
    assert not (out / "abandoned").exists()  # the resumed run evaluates those steps again: no copy kept per kill
    assert any(not torch.equal(killed[k], best[k]) for k in best)


class _FillingDisk:
    """metrics.jsonl's file on a disk that is full after `room` lines: the flush fails, as a real one does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, text: str) -> int:
        self.room -= 1
        return self.f.write(text)

    def flush(self) -> None:
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.f.flush()

    def close(self) -> None:
        self.flush()
        self.f.close()


def test_a_full_disk_under_metrics_jsonl_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    """A disk that filled between checkpoints failed the next metrics.jsonl line with a traceback (OSError)."""
    from neurallayers.__main__ import main
    from neurallayers.training import loggers

    run = tiny_run(tmp_path, max_steps=8, eval_interval=4, save_interval=4)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    init = loggers.JSONLLogger.__init__

    def on_a_filling_disk(self, run_dir):
        init(self, run_dir)
        self._f = _FillingDisk(self._f, room=6)  # steps 1-4, step 4's evaluation and step 5

    monkeypatch.setattr(loggers.JSONLLogger, "__init__", on_a_filling_disk)
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"neurallayers train: error: could not write {out / 'metrics.jsonl'}: No space left on device; "
        "the run resumes from its last checkpoint"
    )
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-4"]
    monkeypatch.setattr(loggers.JSONLLogger, "__init__", init)  # space freed
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert sorted(r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r) == list(range(1, 9))


# evaluations give these val losses by step; a SIGKILL before the training of step $KILL_AT + 1 (unset: none)
SCRIPTED_EVALS = """
import os, signal
from neurallayers.training import losses, trainer as T
VALS = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.6, 5: 1.0, 6: 1.5}
losses.mean_loss = lambda model, tokens, **kw: (VALS[T._STEP], 1)
_evaluate, _train_step = T._Fit._evaluate, T._Fit._train_step
def _eval(self):
    T._STEP = self.step
    return _evaluate(self)
def _step(self):
    if self.step == int(os.environ.get("KILL_AT", "-1")):
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_step(self)
T._Fit._evaluate, T._Fit._train_step = _eval, _step
"""


def test_a_kill_after_a_new_best_resumes_with_the_best_weights_of_the_checkpoint(tmp_path):
    """Best at step 2 (no checkpoint of it), checkpoint at 3, a better evaluation at 5 replaced model.safetensors,
    then a SIGKILL: step 2's weights were gone, so the resume from step 3 made step 3's weights the model, started
    the best val loss over and logged step 4 as a best, which the uninterrupted run did not (early stopping counted
    afresh too). With the default intervals (evaluate every 200 steps, save every 500) most kills hit this."""
    def weights(path):
        return read_safetensors(path / "model.safetensors")

    run = tiny_run(tmp_path, max_steps=6, eval_interval=1, save_interval=3, early_stopping_patience=3)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    full, out = tmp_path / "full", tmp_path / "run"

    def uninterrupted():  # the two sessions of the run to compare with, beside the killed run
        first = run_fit_process(tmp_path, cfg, full, until=4, prelude=SCRIPTED_EVALS)
        best_at_4 = weights(full)  # step 2's
        return first, best_at_4, run_fit_process(tmp_path, cfg, full, resume=True, prelude=SCRIPTED_EVALS)

    with ThreadPoolExecutor(1) as pool:
        side = pool.submit(uninterrupted)
        kill_at_5 = 'import os\nos.environ["KILL_AT"] = "5"\n'  # in the child: the other thread's child must not see it
        killed = run_fit_process(tmp_path, cfg, out, prelude=kill_at_5 + SCRIPTED_EVALS)
        first, best_at_4, second = side.result()
    assert first.returncode == 0 and second.returncode == 0, (first.stderr + second.stderr)[-3000:]
    assert killed.returncode == -signal.SIGKILL
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("best")] == [1, 2, 5]
    proc = run_fit_process(tmp_path, cfg, out, resume=True, until=4, prelude=SCRIPTED_EVALS)
    assert proc.returncode == 0 and "no longer kept" not in proc.stderr, proc.stderr[-2000:]
    assert all(torch.equal(best_at_4[k], v) for k, v in weights(out).items())
    assert run_fit_process(tmp_path, cfg, out, resume=True, prelude=SCRIPTED_EVALS).returncode == 0

    def rows(path):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed")}
                for r in read_jsonl(path / "metrics.jsonl")]
    assert rows(out) == rows(full)
    assert all(torch.equal(weights(full)[k], v) for k, v in weights(out).items())
