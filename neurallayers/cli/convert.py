"""`neurallayers convert`: a run directory to a Hugging Face folder, or a Hugging Face folder to a run directory."""

from __future__ import annotations

import argparse
import re

from neurallayers.cli.common import non_empty

# transformers' units (save_pretrained's max_shard_size="5GB"): KB, MB, GB are powers of 10, KiB, MiB, GiB of 2
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def shard_size(text: str) -> int:
    """--max-shard-size in bytes: a whole number of MB, or a whole number with its unit as transformers reads one
    (500MB, 2GB, 1GiB). A plain number was read as MiB, 4.9% past the MB the help names."""
    found = re.fullmatch(r"\s*(\d+)\s*([KkMmGg][Ii]?B)?\s*", text)  # 5mb: megabits to transformers
    if found is None or int(found[1]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of MB >= 1, or one with its unit: "
                                         f"{', '.join(SIZE_UNITS).replace('I', 'i')} (500MB, 2GB, 1GiB)")
    return int(found[1]) * SIZE_UNITS[(found[2] or "MB").upper()]


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
