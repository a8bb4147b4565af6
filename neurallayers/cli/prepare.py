"""`neurallayers prepare`: build the tokenizer and token cache that `train` reads, ahead of time."""

from __future__ import annotations

import argparse

from neurallayers.cli.common import non_empty
from neurallayers.cli.field_origins import FieldOrigins
from neurallayers.cli.train import build_run_config

ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=non_empty, help="YAML run config (its data and model sections are used)")
    parser.add_argument("--preset", type=non_empty,
                        help="model preset (its vocab_size sizes a trained BPE tokenizer; default: demo, where no "
                        "--config, --model.* or --init-from names the model)")
    parser.add_argument("--data", type=non_empty,
                        help="corpus: shakespeare, python-stdlib, a text file, folder, glob or .jsonl (default: the "
                        "config's, else shakespeare)")
    parser.add_argument("--tokenizer", type=non_empty,
                        help="bpe, char, gpt2, or a tokenizer.json or model folder (shortcut for --data.tokenizer)")
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary size (shortcut for --data.vocab_size)")
    parser.add_argument("--init-from", type=non_empty,
                        help="a fine-tune's source run or model folder: its tokenizer is used "
                        "(shortcut for --train.init_from)")


def run(args: argparse.Namespace) -> int:
    from neurallayers.training.init_from import data_conflicts, source_tokenizer
    from neurallayers.training.prepare import prepare_data

    flags = []
    if args.tokenizer:
        flags.append(("--tokenizer", "data", "tokenizer", args.tokenizer))
    if args.vocab_size is not None:  # 0 too: DataConfig refuses it, named by the flag
        flags.append(("--vocab-size", "data", "vocab_size", args.vocab_size))
    args.overrides = list(getattr(args, "overrides", []))
    fine_tune = args.init_from or any(a.startswith("--train.init_from") for a in args.overrides)
    if not (args.config or args.preset or fine_tune or any(a.startswith("--model.") for a in args.overrides)):
        args.preset = "demo"
    origins = FieldOrigins()
    run_cfg = build_run_config(args, flags=tuple(flags), origins=origins)
    init_from = run_cfg.train.init_from
    with origins.naming():
        if init_from:  # the tokens train will read: the source's tokenizer's
            data_conflicts(run_cfg.data)
        tokenizer = source_tokenizer(init_from) if init_from else None
        tokenizer, tokens, run_cfg = prepare_data(run_cfg, tokenizer=tokenizer, show_progress=True,
                                                  pretrained=bool(init_from))
    state = "reused" if tokens.cached else "built"
    name = "the init_from model's" if init_from else run_cfg.data.tokenizer
    print(f"corpus: {run_cfg.data.source}  tokenizer: {name} (vocab {tokenizer.vocab_size:,})  "
          f"train tokens: {len(tokens.train):,}  val tokens: {len(tokens.val):,}  cache ({state}): {tokens.path}")
    return 0
