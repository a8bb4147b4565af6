"""`neurallayers prepare`: build the tokenizer and token cache that `train` reads, ahead of time."""

from __future__ import annotations

import argparse

from neurallayers.cli.train import build_run_config

ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (its data and model sections are used)")
    parser.add_argument("--preset", help="model preset (its vocab_size sizes a trained BPE tokenizer)")
    parser.add_argument("--data", help="corpus: shakespeare, python-stdlib, a text file, folder, glob or .jsonl")
    parser.add_argument("--tokenizer", help="bpe, char, gpt2 or a tokenizer.json path (shortcut for --data.tokenizer)")
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary size (shortcut for --data.vocab_size)")


def run(args: argparse.Namespace) -> int:
    from neurallayers.training.prepare import prepare_data

    extra = []
    if args.tokenizer:
        extra += ["--data.tokenizer", args.tokenizer]
    if args.vocab_size:
        extra += ["--data.vocab_size", str(args.vocab_size)]
    args.overrides = list(getattr(args, "overrides", [])) + extra
    if not (args.config or args.preset or any(a.startswith("--model.") for a in args.overrides)):
        args.preset = "demo"
    run_cfg = build_run_config(args)
    tokenizer, tokens, run_cfg = prepare_data(run_cfg, show_progress=True)
    state = "reused" if tokens.cached else "built"
    print(f"corpus: {run_cfg.data.source}  tokenizer: {run_cfg.data.tokenizer} (vocab {tokenizer.vocab_size:,})  "
          f"train tokens: {len(tokens.train):,}  val tokens: {len(tokens.val):,}  cache ({state}): {tokens.path}")
    return 0
