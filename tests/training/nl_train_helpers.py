"""Shared tiny setups for the training tests (imported by the test modules beside it)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from neurallayers import ModelConfig
from neurallayers.training import DataConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]

# Runs one fit() in a fresh interpreter: argv = config.yaml, out_dir, resume (0/1), until_step (0 = none).
FIT_SCRIPT = """
import sys
from neurallayers.training import RunConfig, fit
run = RunConfig.from_yaml(sys.argv[1])
r = fit(run, sys.argv[2], resume=sys.argv[3] == "1", until_step=int(sys.argv[4]) or None, progress=False)
print("STEPS", r.steps, r.stopped_reason)
"""


# BERT's shape of encoder, for tiny_run(model=ENCODER): trained as a masked LM
ENCODER = dict(causal=False, norm_placement="post", position="learned", mlp="gelu", tie_embeddings=True,
               type_vocab_size=2, pad_token_id=0)


def write_corpus(path: Path, *, n_lines: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog and then runs away to find food in the old forest".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(n_lines)) + "\n")
    return path


def tiny_run(tmp_path: Path, *, corpus: Path | None = None, model: dict | None = None, **train) -> RunConfig:
    """A 2-layer, 32-wide char-level model on a small text; `train` overrides TrainConfig fields."""
    corpus = corpus or write_corpus(tmp_path / "corpus.txt")
    mcfg = ModelConfig(**{**dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1),
                          **(model or {})})
    tcfg = dict(max_steps=8, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=4, eval_batches=2,
                log_interval=1, save_interval=4, keep_last=3, sample_tokens=0, device="cpu", precision="fp32",
                seed=7)
    tcfg.update(train)
    data = DataConfig(source=str(corpus), tokenizer="char", val_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    return RunConfig(model=mcfg, train=TrainConfig(**tcfg), data=data)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r}


def child_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NEURALLAYERS_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": str(REPO)}


def run_fit_process(tmp_path: Path, config: Path, out: Path, *, resume: bool = False, until: int = 0,
                    prelude: str = "") -> subprocess.CompletedProcess:
    """fit() in a fresh Python process; `prelude` runs first (e.g. to install a hook)."""
    code = prelude + FIT_SCRIPT
    return subprocess.run([sys.executable, "-c", code, str(config), str(out), "1" if resume else "0", str(until)],
                          env=child_env(tmp_path), capture_output=True, text=True, timeout=120)


class Evil:
    """Pickles to a call that creates `marker` when loaded: the file must never appear."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
