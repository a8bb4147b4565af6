"""`neurallayers convert`: a run directory to a Hugging Face folder, or a Hugging Face folder to a run directory."""

from __future__ import annotations

import argparse

from neurallayers.cli.common import non_empty


def shard_size(text: str) -> int:
    """--max-shard-size in bytes: a whole number of MB, or a whole number with its unit as transformers reads one
    (500MB, 2GB, 1GiB). A plain number was read as MiB, 4.9% past the MB the help names."""
    from neurallayers.interop.hf_write import shard_bytes

    try:
        return shard_bytes(text, default_unit="MB")
    except ValueError as e:  # argparse names the flag: the message without the Python argument's name
        raise argparse.ArgumentTypeError(str(e).removeprefix("max_shard_size=")) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=non_empty,
                        help="a run directory (config.yaml) or a Hugging Face folder (config.json)")
    parser.add_argument("dst", type=non_empty,
                        help="the folder to write (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--to", choices=["hf", "run"], default=None,
                        help="what to write (default: the other kind: a run becomes an HF folder and back)")
    parser.add_argument("--max-shard-size", type=shard_size, default=None,
                        help="largest HF weight shard: MB, or a size with its unit as transformers takes it (500MB, "
                        "2GB, 1GiB) (default: one file)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept an HF folder that only has pytorch_model.bin or its shards (read with "
                             "weights_only=True)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty dst")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"], default=None,
                        help="the written weights' dtype (default: the source's, as transformers keeps it)")


def run(args: argparse.Namespace) -> int:
    from neurallayers.interop.convert import convert

    out = convert(args.src, args.dst, to=args.to, max_shard_size=args.max_shard_size, allow_pickle=args.allow_pickle,
                  overwrite=args.overwrite, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
