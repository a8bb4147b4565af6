"""Speculative decoding speed on a trained pair: a 6x384 target and a 2x128 draft, char-level on the built-in
shakespeare corpus, trained with fit() (a few minutes on CPU) or loaded from the cache directory when trained
before. Plain decoding (the target alone over its KV cache, one token per forward) and speculative decoding with
k = 2, 4, 6 draft tokens run alternately prompt by prompt, greedy and sampled.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/speculative.py [--cache-dir DIR] [--new 160] [--retrain]

Prints tokens/s of each, the speed-up, the acceptance rate (accepted / drafted) and tokens per target forward;
greedy rows also say whether the speculative tokens equal plain greedy decoding (they must).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

PROMPTS = ["ROMEO:\nBut soft, what light", "KING HENRY:\nOnce more unto the breach, dear friends,",
           "HAMLET:\nTo be, or not to be", "First Citizen:\nBefore we proceed any further, hear me speak."]


def trained(cache: Path, name: str, model: dict, *, steps: int, minutes: float, lr: float, batch: int,
            retrain: bool):
    """(model, tokenizer) of run `cache/name`, training it first when missing: afresh with `retrain`, else going on
    from the checkpoint of a training that was stopped (fit refuses to start a new run over either)."""
    from neurallayers.api import load
    from neurallayers.config import ModelConfig
    from neurallayers.training import DataConfig, RunConfig, TrainConfig, fit
    from neurallayers.training.checkpoint import latest_checkpoint
    from neurallayers.training.signals import EXIT_CODES

    run_dir = cache / name
    if retrain:
        shutil.rmtree(run_dir, ignore_errors=True)
    if not (run_dir / "model.safetensors").is_file():
        run = RunConfig(
            model=ModelConfig(vocab_size=128, block_size=256, dropout=0.0, **model),
            train=TrainConfig(max_steps=steps, max_minutes=minutes, batch_size=batch, lr=lr, min_lr=lr / 10,
                              warmup_steps=50, eval_interval=0, eval_batches=10, save_interval=0, sample_tokens=0,
                              log_interval=50),
            data=DataConfig(source="shakespeare", tokenizer="char", cache_dir=str(cache / "data")),
        )
        t0 = time.perf_counter()
        result = fit(run, run_dir, progress=False, resume=latest_checkpoint(run_dir) is not None)
        if result.stopped_reason in EXIT_CODES:  # Ctrl-C or SIGTERM: a checkpoint saved, no model, no val loss
            raise SystemExit(f"training {name} stopped ({result.stopped_reason}) at step {result.steps}; run the "
                             "same command to go on from there")
        print(f"trained {name}: {result.steps} steps in {time.perf_counter() - t0:.0f}s, "
              f"val loss {result.final_val_loss:.3f}", flush=True)
    return load(run_dir)


@torch.inference_mode()
def plain_decode(model, prompt: list[int], cfg) -> list[int]:
    """The baseline: the target alone, one token per cached forward, the same processors and sampling."""
    from neurallayers.generation.processors import apply_processors
    from neurallayers.generation.search import build_processors

    procs = build_processors(cfg, [], prompt_width=len(prompt), sampling=not cfg.greedy)
    gen = torch.Generator().manual_seed(cfg.seed or 0)
    cache = model.new_cache(1, len(prompt) + cfg.max_new_tokens)
    logits = model(torch.tensor([prompt]), cache=cache, logits_to_keep=1).logits[0, -1].float()
    ids = list(prompt)
    for i in range(cfg.max_new_tokens):
        if procs:
            logits = apply_processors(procs, torch.tensor([ids]), logits[None])[0]
        tok = int(logits.argmax()) if cfg.greedy else int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        ids.append(tok)
        if i + 1 < cfg.max_new_tokens:
            logits = model(torch.tensor([[tok]]), cache=cache, input_pos=len(ids) - 1).logits[0, -1].float()
    return ids[len(prompt):]


def main() -> None:
    from bench_common import argument_parser, at_least, counts

    p = argument_parser(__doc__)
    p.add_argument("--cache-dir", default=os.path.join(os.environ.get("NEURALLAYERS_CACHE")
                                                        or os.path.expanduser("~/.cache/neurallayers"),
                                                        "bench-speculative"),
                   help="where the trained pair is kept for later runs")
    p.add_argument("--new", type=at_least(1), default=160, help="new tokens per prompt")
    p.add_argument("--ks", type=counts, default="2,4,6", help="draft tokens per round to try")
    p.add_argument("--temperature", type=float, default=0.8, help="for the sampled rows")
    p.add_argument("--target-minutes", type=float, default=4.0, help="training time of the target, when trained here")
    p.add_argument("--draft-minutes", type=float, default=1.5, help="... and of the draft")
    p.add_argument("--retrain", action="store_true", help="train both afresh, not from the cache")
    args = p.parse_args()

    from neurallayers.generation.config import GenerationConfig
    from neurallayers.generation.speculative import speculative_decode

    cache = Path(args.cache_dir).expanduser()
    target, tok = trained(cache, "target-6x384", dict(n_layer=6, n_embd=384, n_head=6), steps=2000,
                          minutes=args.target_minutes, lr=1e-3, batch=4, retrain=args.retrain)
    draft, draft_tok = trained(cache, "draft-2x128", dict(n_layer=2, n_embd=128, n_head=4), steps=3000,
                               minutes=args.draft_minutes, lr=2e-3, batch=8, retrain=args.retrain)
    if draft_tok.encode(PROMPTS[0]) != tok.encode(PROMPTS[0]) or draft_tok.vocab_size != tok.vocab_size:
        raise SystemExit("the draft and target tokenizers differ; rerun with --retrain")
    prompts = [tok.encode(t) for t in PROMPTS]
    room = target.config.block_size - max(map(len, prompts))  # plain decoding cannot go past the target's context
    if args.new > room:
        raise SystemExit(f"--new {args.new}: the longest prompt leaves room for {room} new tokens in the target's "
                         f"context of {target.config.block_size}; use --new {room} or fewer")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, target {target.num_params() / 1e6:.1f}M, "
          f"draft {draft.num_params() / 1e6:.2f}M, vocab {tok.vocab_size}, {len(prompts)} prompts x {args.new} "
          "new tokens")
    print(f"{'mode':8} {'k':>2} {'plain tok/s':>12} {'spec tok/s':>11} {'speed-up':>9} {'accept':>7} "
          f"{'tok/fwd':>8} {'same':>5}")
    for mode, temperature in (("greedy", 0.0), ("sampled", args.temperature)):
        for k in (int(v) for v in args.ks.split(",")):
            cfg = GenerationConfig(max_new_tokens=args.new, temperature=temperature, num_speculative_tokens=k,
                                   ignore_eos=True, seed=0)
            t_plain = t_spec = 0.0
            drafted = accepted = forwards = n_tokens = 0
            same = True
            for prompt in prompts:
                t0 = time.perf_counter()
                want = plain_decode(target, prompt, cfg)
                t1 = time.perf_counter()
                stats: dict = {}
                ((got,),) = speculative_decode(target, draft, [prompt], cfg, eos_ids=[], stats=stats)
                t2 = time.perf_counter()
                t_plain, t_spec = t_plain + t1 - t0, t_spec + t2 - t1
                drafted, accepted = drafted + stats["drafted"], accepted + stats["accepted"]
                forwards, n_tokens = forwards + stats["target_forwards"], n_tokens + len(got.token_ids)
                same &= got.token_ids == want
            n = len(prompts) * args.new
            print(f"{mode:8} {k:2d} {n / t_plain:12.1f} {n_tokens / t_spec:11.1f} "
                  f"{(n_tokens / t_spec) / (n / t_plain):8.2f}x {accepted / drafted:7.2f} {n_tokens / forwards:8.2f} "
                  f"{(str(same) if mode == 'greedy' else '-'):>5}", flush=True)
    print("sample (speculative, sampled):", repr(tok.decode(got.token_ids[:120])))


if __name__ == "__main__":
    main()
