"""`neurallayers convert`: a run directory to a Hugging Face folder, or a Hugging Face folder to a run directory."""

from __future__ import annotations

import argparse

from neurallayers.cli.common import non_empty


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=non_empty,
                        help="a run directory (config.yaml) or a Hugging Face folder (config.json)")
    parser.add_argument("dst", type=non_empty,
                        help="the folder to write (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--to", choices=["hf", "run"], default=None,
                        help="what to write (default: the other kind: a run becomes an HF folder and back)")
    parser.add_argument("--max-shard-size", type=int, default=None, help="largest HF weight shard, in MB")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept an HF folder that only has pytorch_model.bin or its shards (read with "
                             "weights_only=True)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty dst")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"], default=None,
                        help="the written weights' dtype (default: the source's, as transformers keeps it)")


def run(args: argparse.Namespace) -> int:
    from neurallayers.interop.convert import convert

    if args.max_shard_size is not None and args.max_shard_size < 1:
        raise ValueError(f"--max-shard-size {args.max_shard_size}: must be a positive number of MB")
    shard = None if args.max_shard_size is None else args.max_shard_size * 1024 * 1024
    out = convert(args.src, args.dst, to=args.to, max_shard_size=shard, allow_pickle=args.allow_pickle,
                  overwrite=args.overwrite, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
