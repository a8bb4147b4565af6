"""`neurallayers demo` (what `make demo` runs): train the `demo` preset on Shakespeare, then generate from it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

PROMPTS = ["ROMEO:\n", "KING HENRY:\nWhat", "First Citizen:\n"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory to write")
    parser.add_argument("--max-steps", type=int, default=1200, help="optimizer steps")
    parser.add_argument("--max-minutes", type=float, default=5.0, help="wall-clock cap for training")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo run in --out")


def demo_config(*, max_steps: int, max_minutes: float):
    """The demo recipe: a ~3.6M-parameter Llama-style model, byte-level BPE (1024) trained on the corpus."""
    from neurallayers.config import ModelConfig
    from neurallayers.training.config import DataConfig, RunConfig, TrainConfig

    train = TrainConfig(max_steps=max_steps, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=50,
                        eval_interval=200, eval_batches=10, log_interval=10, save_interval=200,
                        max_minutes=max_minutes, sample_prompts=PROMPTS[:1], sample_tokens=200)
    return RunConfig(model=ModelConfig.from_name("demo"), train=train,
                     data=DataConfig(source="shakespeare", tokenizer="bpe", vocab_size=1024))


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from neurallayers.api import load
    from neurallayers.cli.train import summary
    from neurallayers.generation import generate
    from neurallayers.training.trainer import fit

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(args.out)
    if (out / "config.yaml").exists() and not args.resume:
        raise ValueError(f"{out} already holds a run; remove it, pass --resume, or choose another --out")
    t0 = time.perf_counter()
    result = fit(demo_config(max_steps=args.max_steps, max_minutes=args.max_minutes), out, resume=args.resume)
    print(summary(result))
    model, tokenizer = load(out)
    gens = generate(model, tokenizer, PROMPTS, max_new_tokens=120, temperature=0.8, top_k=50, seed=1)
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        print(f"\n----- {prompt.splitlines()[0]} -----\n{prompt}{gen.text}")
    print(f"\nfinal val loss {result.final_val_loss:.4f}; wall time {time.perf_counter() - t0:.0f}s; "
          f"run directory {out} (try: neurallayers generate {out} 'JULIET:' --stream)")
    return 0
