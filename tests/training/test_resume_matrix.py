"""Exact resume in every training mode, through the CLI in fresh processes (RELIABILITY item 8).

Each cell trains a tiny run twice: straight to max_steps, and stopped at step K by a real signal (SIGTERM, Ctrl-C's
SIGINT, SIGKILL between checkpoints or right after one) or by train.max_minutes, then `train --out RUN --resume` in a
new process. Both must log the same metrics.jsonl rows (loss, lr, grad norm, val loss, skips, early stop) and end with
bit-equal weights, optimizer state and samples, the split run keeping keep_last checkpoints. The processes run every
cell's session of one kind in turn (a fresh process per kind, the straight runs beside the stopped ones; a SIGKILL
ends its own), which keeps the matrix to a few processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from nl_train_helpers import ENCODER, child_env, read_jsonl, tiny_run, write_corpus

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit
from neurallayers.weights import read_safetensors

# Runs `neurallayers train` once per job of the JSON list in argv[1], in this one process. A job may stop its run with
# a real signal right after step `stop_at` (as `kill` would, between steps), or right after that step's checkpoint
# ("SIGKILL@save"), or spend its time budget in that step ("budget"); and make the loss of the steps `nan_at`
# non-finite.
CHILD = r"""
import json, os, signal, sys
from neurallayers.__main__ import main
from neurallayers.training import losses, trainer

job = {}
train_step, loss = trainer._Fit._train_step, losses.model_loss
save, elapsed = trainer._Fit._save, trainer._Fit._elapsed

def step(self):
    job["step"] = self.step + 1
    out = train_step(self)
    if job["step"] == job.get("stop_at") and job["signal"] == "budget":
        job["spent"] = True  # train.max_minutes runs out in this step
    elif job["step"] == job.get("stop_at") and not job["signal"].endswith("@save"):
        os.kill(os.getpid(), getattr(signal, job["signal"]))
    return out

def save_then_kill(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if self.step == job.get("stop_at") and job["signal"].endswith("@save"):
        os.kill(os.getpid(), getattr(signal, job["signal"].removesuffix("@save")))

def clock(self, t0):
    return elapsed(self, t0) + (1e9 if job.get("spent") else 0.0)

def nan_loss(*args, **kwargs):
    value = loss(*args, **kwargs)
    return value * float("nan") if job.get("step") in job.get("nan_at", ()) else value

trainer._Fit._train_step, losses.model_loss = step, nan_loss
trainer._Fit._save, trainer._Fit._elapsed = save_then_kill, clock
for spec in json.loads(open(sys.argv[1]).read()):
    job.clear()
    job.update(spec)
    print("RC", main(["train", *spec["argv"], "--no-progress"]), flush=True)
"""

DROPOUT = dict(dropout=0.1, attn_dropout=0.1, drop_path=0.2)
MASKED_LM = dict(ENCODER, **DROPOUT)
# early stopping at lr 3e-2: the val loss is best at step 3 and worse at 4, 5 and 6, so patience 3 stops at step 6,
# after the stop at 5 with two bad evaluations counted
EARLY = dict(lr=3e-2, min_lr=3e-2, schedule="constant", warmup_steps=0, eval_interval=1, early_stopping_patience=3,
             max_steps=40, save_interval=2)

# name: (train overrides, model overrides, stop step K, signal, first session's expected exit code)
CELLS = {
    "fp32-dropout-cosine-warmup": (dict(schedule="cosine", warmup_steps=6, sample_tokens=8), DROPOUT, 4, "SIGTERM",
                                   143),
    "bf16-accum3-checkpointing-linear": (dict(precision="bf16", grad_accum=3, gradient_checkpointing=True,
                                              schedule="linear", warmup_steps=6), DROPOUT, 5, "SIGTERM", 143),
    "nan-skip-before-resume-constant": (dict(schedule="constant", warmup_steps=6, nan_policy="skip"), {}, 4,
                                        "SIGTERM", 143),
    "inverse-sqrt-ctrl-c": (dict(schedule="inverse_sqrt", warmup_steps=6), {}, 4, "SIGINT", 130),
    "masked-lm-accum2": (dict(grad_accum=2, sample_tokens=8), MASKED_LM, 4, "SIGTERM", 143),
    "fine-tune-init-from": ({}, None, 4, "SIGTERM", 143),
    "folder-corpus-bpe": ({}, dict(vocab_size=300), 4, "SIGTERM", 143),
    "early-stopping-patience": (EARLY, {}, 5, "SIGTERM", 143),
    "older-checkpoint": (dict(max_steps=12, save_interval=2), {}, 8, "SIGTERM", 143),
    # killed at step 5, after step 4's evaluation wrote better weights than the step-3 checkpoint's
    "sigkill-between-checkpoints": (dict(save_interval=3), {}, 5, "SIGKILL", -9),
    # killed as soon as step 4's checkpoint is on disk, before step 5 prunes the one kept beside it (step 2, past
    # keep_last=1: the newest before the last update)
    "sigkill-right-after-a-checkpoint": (dict(save_interval=2, keep_last=1), {}, 4, "SIGKILL@save", -9),
    # the budget runs out at step 3, between evaluations (every 2 steps): the session saves, then evaluates on the
    # way out, and finds weights better than any the run evaluates later (at lr 3e-2)
    "time-budget-between-evaluations": (dict(EARLY, eval_interval=2, max_steps=4, early_stopping_patience=2,
                                             max_minutes=60.0), {}, 3, "budget", 0),
    # every step clipped (grad norms ~1 at lr 3e-3), and only the newest checkpoint kept
    "tight-grad-clip-keep-last-1": (dict(grad_clip=0.05, keep_last=1, save_interval=2), {}, 5, "SIGTERM", 143),
    "fine-tune-hugging-face-folder": ({}, None, 4, "SIGTERM", 143),
}
NAN_AT = {"nan-skip-before-resume-constant": [3]}


def _config(root: Path, name: str, train: dict, model: dict | None) -> Path:
    """The cell's config.yaml: the tiny char-level run of nl_train_helpers.tiny_run, as the CLI reads it."""
    corpus = write_corpus(root / "corpus.txt")
    cfg = {"model": dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1),
           "train": dict(max_steps=8, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=2,
                         eval_batches=2, log_interval=1, save_interval=4, keep_last=3, sample_tokens=0, device="cpu",
                         precision="fp32", seed=7),
           "data": dict(source=str(corpus), tokenizer="char", val_fraction=0.1)}
    cfg["train"].update(train)
    if model is None:  # a fine-tune: the source's model and tokenizer
        del cfg["model"], cfg["data"]["tokenizer"]
        cfg["train"]["init_from"] = str(_source(root, hf=name.endswith("hugging-face-folder")))
    else:
        cfg["model"].update(model)
    if name == "folder-corpus-bpe":  # a folder with a subfolder, read as documents, and a BPE trained on it
        docs = root / "docs"
        (docs / "sub").mkdir(parents=True)
        for i in range(6):
            write_corpus(docs / ("sub" if i % 2 else "") / f"doc{i}.txt", n_lines=60, seed=i)
        cfg["data"].update(source=str(docs), tokenizer="bpe", vocab_size=300)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _source(root: Path, *, hf: bool = False) -> Path:
    """A 4-step run to fine-tune from (in this process: the source is not what the cell tests), or its conversion to a
    Hugging Face folder."""
    from neurallayers.interop.convert import convert

    fit(tiny_run(root, max_steps=4, eval_interval=2), root / "source", progress=False)
    if hf:
        convert(root / "source", root / "hf")
    return root / "hf" if hf else root / "source"


def _run_jobs(root: Path, name: str, jobs: list[dict]) -> subprocess.Popen:
    spec = root / f"{name}.json"
    spec.write_text(json.dumps(jobs))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(spec)], env=child_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> tuple[list[int], str]:
    out, err = proc.communicate(timeout=600)
    codes = [int(line.split()[1]) for line in out.splitlines() if line.startswith("RC ")]
    return codes + ([proc.returncode] if proc.returncode else []), err


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, dict]:
    """Every cell's straight and stopped runs (two processes side by side), then every resume (a third)."""
    root = tmp_path_factory.mktemp("matrix")
    cells = {}
    for name, (train, model, stop_at, signal, code) in CELLS.items():
        (root / name).mkdir()
        cfg = _config(root / name, name, train, model)
        cells[name] = dict(cfg=cfg, dir=root / name, stop_at=stop_at, code=code,
                           first=dict(argv=["--config", str(cfg), "--out", str(root / name / "split")],
                                      stop_at=stop_at, signal=signal, nan_at=NAN_AT.get(name, [])))
    # SIGKILL ends its process: each such session has one of its own
    killed = [n for n in cells if cells[n]["first"]["signal"].startswith("SIGKILL")]
    order = [n for n in cells if n not in killed] + killed
    straight = _run_jobs(root, "straight", [dict(argv=["--config", str(cells[n]["cfg"]), "--out",
                                                       str(root / n / "straight")], nan_at=NAN_AT.get(n, []))
                                            for n in order])
    firsts = [_run_jobs(root, "first", [cells[n]["first"] for n in order if n not in killed])]
    firsts += [_run_jobs(root, f"first-{n}", [cells[n]["first"]]) for n in killed]
    straight_codes, straight_err = _wait(straight)
    first_codes, first_err = [], ""
    for proc in firsts:
        codes, err = _wait(proc)
        first_codes, first_err = first_codes + codes, first_err + err
    assert straight_codes == [0] * len(order), straight_err[-3000:]
    assert first_codes == [cells[n]["code"] for n in order], first_err[-3000:]
    resumes = []
    for n in order:  # the run's own config.yaml, as `train --out RUN --resume` reads it
        target = (["--resume", str(root / n / "split" / "checkpoints" / "step-4")] if n == "older-checkpoint"
                  else ["--out", str(root / n / "split"), "--resume"])
        cells[n]["after_stop"] = [p.name for p in ckpt.list_checkpoints(root / n / "split")]
        cells[n]["rows_after_stop"] = _rows(root / n / "split")
        resumes.append(dict(argv=target, nan_at=NAN_AT.get(n, [])))
    resume_codes, resume_err = _wait(_run_jobs(root, "resume", resumes))
    assert resume_codes == [0] * len(order), resume_err[-3000:]
    return cells


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    clock = ("tokens_per_sec", "elapsed")
    return [{k: v for k, v in r.items() if k not in clock} for r in read_jsonl(run / "metrics.jsonl")]


def _equal(a, b) -> bool:
    """Bit-equal nested states (NaN equal to NaN); the scheduler's call count is not state a resume needs."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and (torch.equal(a, b) or bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())))
    if isinstance(a, dict):
        keys = a.keys() - {"_step_count"}
        return isinstance(b, dict) and keys == b.keys() - {"_step_count"} and all(_equal(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b or (a != a and b != b)


def assert_same_run(straight: Path, split: Path) -> None:
    """The same metrics rows, final checkpoint (weights and training state), best weights and samples."""
    assert _rows(split) == _rows(straight)
    last = ckpt.latest_checkpoint(straight)
    assert ckpt.latest_checkpoint(split).name == last.name
    wa, wb = read_safetensors(last / "model.safetensors"), read_safetensors(split / "checkpoints" / last.name /
                                                                            "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(p / "checkpoints" / last.name / "state.pt", weights_only=True) for p in (straight, split))
    for key in ("optimizer", "scheduler", "scaler", "rng", "best_val_loss", "bad_evals", "skips_in_a_row",
                "early_stopped"):
        assert _equal(sa[key], sb[key]), key
    ma, mb = read_safetensors(straight / "model.safetensors"), read_safetensors(split / "model.safetensors")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    if (straight / "samples.txt").exists():
        assert (split / "samples.txt").read_text() == (straight / "samples.txt").read_text()


@pytest.mark.parametrize("name", CELLS)
def test_a_resumed_run_equals_an_uninterrupted_one(matrix, name):
    cell = matrix[name]
    straight, split = cell["dir"] / "straight", cell["dir"] / "split"
    assert_same_run(straight, split)
    rows = _rows(straight)
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert len(set(losses.values())) == len(losses) > cell["stop_at"]  # steps on both sides of the stop, all logged
    # where the first session stopped: step K's checkpoint (a signal), or the last one before K (SIGKILL)
    stopped = "step-3" if name == "sigkill-between-checkpoints" else f"step-{cell['stop_at']}"
    assert cell["after_stop"][-1] == stopped
    # keep_last: the straight run's newest checkpoints, the stop's own among them while it is one of the newest
    kept = {ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(straight)} | {ckpt.checkpoint_step(stopped)}
    keep_last = CELLS[name][0].get("keep_last", 3)
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(split)] == sorted(kept)[-keep_last:]
    if name.startswith("nan-skip"):
        assert [r["step"] for r in rows if "nan_guard" in r] == [3]
    if name.startswith("early-stopping"):  # stopped early after the resume point, with bad evaluations carried over
        stops = [r["step"] for r in rows if "early_stopping" in r]
        assert len(stops) == 1 and cell["stop_at"] < stops[0] < EARLY["max_steps"]
    if name == "sigkill-right-after-a-checkpoint":  # the kill left the one kept beside it past keep_last
        assert cell["after_stop"] == ["step-2", "step-4"]
    if name.startswith("time-budget"):  # the session's evaluation on the way out, undone by the resume
        undone = [r for r in cell["rows_after_stop"] if r.get("time_budget")]
        assert [(r["step"], r["best"]) for r in undone] == [(cell["stop_at"], True)]
        later = [r["val_loss"] for r in rows if "val_loss" in r and r["step"] > cell["stop_at"]]
        assert later and min(later) > undone[0]["val_loss"]  # its weights would have stayed model.safetensors
    if name.startswith("tight-grad-clip"):  # clipping acted on every step (the logged norm is before clipping)
        assert all(r["grad_norm"] > 0.05 for r in rows if "grad_norm" in r)
    if name == "older-checkpoint":
        # the newer history set aside: its checkpoints and the best weights it led to
        assert sorted(p.name for p in (split / "abandoned").iterdir()) == ["model.safetensors", "step-6", "step-8"]
    if CELLS[name][0].get("warmup_steps") == 6:  # the resume falls inside the warmup: the rate still rises there
        rates = {r["step"]: r["lr"] for r in rows if "lr" in r}
        assert rates[cell["stop_at"]] < rates[cell["stop_at"] + 1]


@pytest.mark.slow
def test_a_compiled_masked_lm_resumes_exactly(tmp_path):
    """torch.compile (train.compile) on a masked LM, whose head runs at a count of masked positions that changes
    every step: a resumed session's first step compiled a graph for its own count, which the uninterrupted run had
    compiled for dynamic counts at its second step, and logged another loss at step 5."""
    name = "compiled-masked-lm"
    cfg = _config(tmp_path, name, dict(compile=True), MASKED_LM)
    out = tmp_path / "split"
    # the straight run and the stopped one in one process, one after the other: the second reuses the first's
    # compiled graph instead of compiling it again beside it; the resume, where the bug was, is a fresh process
    codes, err = _wait(_run_jobs(tmp_path, "sessions", [
        dict(argv=["--config", str(cfg), "--out", str(tmp_path / "straight")]),
        dict(argv=["--config", str(cfg), "--out", str(out)], stop_at=4, signal="SIGTERM")]))
    assert codes == [0, 143], err[-3000:]
    codes, err = _wait(_run_jobs(tmp_path, "resume", [dict(argv=["--out", str(out), "--resume"])]))
    assert codes == [0], err[-3000:]
    assert_same_run(tmp_path / "straight", out)
