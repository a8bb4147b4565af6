"""`neurallayers demo` (what `make demo` runs): train the `demo` preset on Shakespeare, then generate from it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
import time
from pathlib import Path

from neurallayers.cli.common import non_empty, positive_float, positive_int, shell_command

PROMPTS = ["ROMEO:\n", "KING HENRY:\nWhat", "First Citizen:\n"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=non_empty, default="runs/demo", help="run directory to write")
    parser.add_argument("--minutes", type=positive_float, default=4.0,
                        help="training time to plan for: the step count is chosen from a short speed measurement so "
                        "the learning-rate schedule completes (a hard cap of minutes + 0.75 stops it in any case)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="fix the step count instead of measuring (with --resume: train on to this step)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo run in --out")


def demo_config(*, max_steps: int, max_minutes: float, batch_size: int = 16):
    """The demo recipe: a ~3.5M-parameter Llama-style model, byte-level BPE (1024) trained on the corpus."""
    from neurallayers.config import ModelConfig
    from neurallayers.training.config import DataConfig, RunConfig, TrainConfig

    train = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=2e-3, min_lr=2e-4,
                        warmup_steps=min(50, max_steps // 4), eval_interval=max(50, max_steps // 5), eval_batches=10,
                        log_interval=10, save_interval=200, max_minutes=max_minutes, sample_prompts=PROMPTS[:1],
                        sample_tokens=200)
    return RunConfig(model=ModelConfig.from_name("demo"), train=train,
                     data=DataConfig(source="shakespeare", tokenizer="bpe", vocab_size=1024))


def measure_step_seconds(run_cfg, *, steps: int = 6) -> float:
    """Median seconds of one training step of `run_cfg` on random tokens (forward, backward, AdamW)."""
    import statistics

    import torch

    from neurallayers.models import build_model
    from neurallayers.training.runtime import autocast, build_optimizer, resolve_device, resolve_precision

    cfg, train = run_cfg.model, run_cfg.train
    device = resolve_device(train.device)
    amp, _ = resolve_precision(train.precision, device)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg).to(device)
        optimizer, _ = build_optimizer(model, train, device)
        x = torch.randint(0, cfg.vocab_size, (train.batch_size, cfg.block_size + 1), device=device)
        times = []
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            with autocast(device, amp):
                loss = model(x[:, :-1], targets=x[:, 1:]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def plan(minutes: float) -> tuple[int, int, float]:
    """(batch size, steps, seconds a step) that fill `minutes` of training on this machine. Batch 16 where that
    makes at least 800 steps; on a slower CPU (no bf16 matrix units) batch 8, for twice the updates: on a Zen 3 host
    in 4 minutes, val loss 3.99 after 803 steps of 8 against 4.20 after 389 steps of 16 (batch 4 reached 3.81 but
    overran the 5 minutes: its fixed costs per step are a larger share)."""
    for batch_size in (16, 8):
        step_s = measure_step_seconds(demo_config(max_steps=1, max_minutes=minutes + 0.75, batch_size=batch_size))
        # ~8% of the time goes to evaluation, checkpoints and samples, and a real step (data, logging) takes ~10%
        # longer than the probe's: plan 85% of the time for the probe's steps
        steps = max(100, min(5000, int(minutes * 60 * 0.85 / step_s)))
        if steps >= 800:
            break
    return batch_size, steps, step_s


def demo_command(flags: str) -> str:
    """The command that runs the demo again with `flags`: through make's DEMO_ARGS when `make demo` started it (make
    sets MAKELEVEL; `make demo --resume` is make's own option error)."""
    if os.environ.get("MAKELEVEL"):
        # make expands "$" in DEMO_ARGS, and the shell \ " $ ` between double quotes: a quoted folder name may hold
        # any of them, so they are escaped for both
        value = re.sub(r'([\\"$`])', r"\\\1", flags.replace("$", "$$"))
        return f'make demo DEMO_ARGS="{value}"'
    return f"{shell_command()} demo {flags}"


def run(args: argparse.Namespace) -> int:
    import logging

    from neurallayers.api import load
    from neurallayers.cli.train import summary
    from neurallayers.generation import generate
    from neurallayers.training.checkpoint import latest_checkpoint, stopped_before_first_checkpoint
    from neurallayers.training.resume import resume_target
    from neurallayers.training.signals import EXIT_CODES
    from neurallayers.training.trainer import fit

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(args.out).expanduser()  # `--out=~/x`: the shell leaves that ~ as it is
    where = shlex.quote(str(out))  # the hints are lines to paste into a shell, whatever the folder's name holds
    resume = demo_command(f"--out {where} --resume")
    # a demo killed before its first checkpoint has a config.yaml and nothing to resume: fit() starts it afresh, as
    # `train` does (refusing it here and refusing --resume there left only `rm -rf`)
    if latest_checkpoint(out) is not None and not args.resume:
        raise ValueError(f"{out} already holds a run; remove it, continue it ({resume}) or choose another --out")
    if not args.resume and not stopped_before_first_checkpoint(out):
        # an --out fit() refuses (a file, a path through one, a folder holding a model): before the speed probe's
        # seconds and its plan line, not after them
        if (out / "model.safetensors").is_file():  # train's message names --init-from, which demo has not
            raise ValueError(f"{out} already holds a model (model.safetensors); choose another output directory "
                             "(--out)")
        resume_target(out, False)
    t0 = time.perf_counter()
    run_cfg = demo_config(max_steps=args.max_steps or 1, max_minutes=args.minutes + 0.75)
    if args.max_steps is None and not args.resume:
        batch_size, steps, step_s = plan(args.minutes)
        print(f"one step of {batch_size} sequences takes {step_s * 1000:.0f} ms here: training {steps} steps "
              f"(~{args.minutes:g} min)")
        run_cfg = demo_config(max_steps=steps, max_minutes=args.minutes + 0.75, batch_size=batch_size)
    elif args.resume:
        from neurallayers.training.config import RunConfig

        if not (out / "config.yaml").is_file():  # as `train --resume` says it
            raise FileNotFoundError(f"cannot resume: {out} holds no demo run (no config.yaml); run "
                                    f"`{demo_command(f'--out {where}')}` to start one")
        saved = RunConfig.from_yaml(out / "config.yaml")  # continue the same schedule
        # --max-steps trains it on to that step, as `train --resume --train.max_steps` does (it was ignored)
        run_cfg = demo_config(max_steps=args.max_steps or saved.train.max_steps, max_minutes=args.minutes + 0.75,
                              batch_size=saved.train.batch_size)
        run_cfg.train = dataclasses.replace(run_cfg.train, warmup_steps=saved.train.warmup_steps)
    result = fit(run_cfg, out, resume=args.resume)
    print(summary(result))
    if result.stopped_reason in EXIT_CODES:  # checkpoint saved; no samples from a half-trained model
        print(f"continue with: {resume}", file=sys.stderr)
        return EXIT_CODES[result.stopped_reason]
    model, tokenizer = load(out)
    gens = generate(model, tokenizer, PROMPTS, max_new_tokens=120, temperature=0.8, top_k=50, seed=1)
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        print(f"\n----- {prompt.splitlines()[0]} -----\n{prompt}{gen.text}")
    print(f"\nfinal val loss {result.final_val_loss:.4f}; wall time {time.perf_counter() - t0:.0f}s; "
          f"run directory {out} (try: {shell_command()} generate {where} 'JULIET:' --stream)")
    return 0
