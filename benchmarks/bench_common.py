"""Shared by the benchmark scripts (imported from beside them)."""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def argument_parser(doc: str, *, whole: bool = False) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph (`whole`: all of it) as the description, and each option's
    default in its help, as the CLI's verbs show theirs (`--new NEW ... (default: 128)`)."""
    from neurallayers.__main__ import HelpFormatter

    return argparse.ArgumentParser(description=doc if whole else doc.split("\n\n")[0], formatter_class=HelpFormatter)


def default_precisions(device: str = "cpu") -> str:
    """"fp32,bf16", or "fp32" alone on a CPU without bf16 dot products (AVX512-BF16 or AMX): there torch's bf16
    matrix products run ~100x slower than fp32 (1 vs 135 GFLOP/s on AMD Zen 3), and a bf16 row would take most of an
    hour. Says which it chose; asking for bf16 by name still runs it."""
    from neurallayers.training.runtime import cpu_has_fast_bf16

    if device != "cpu" or cpu_has_fast_bf16():
        return "fp32,bf16"
    print("this CPU has no bf16 dot products (AVX512-BF16 or AMX), where bf16 matmuls are ~100x slower than fp32: "
          "fp32 rows only (ask for bf16 by name to run it anyway)")
    return "fp32"


def names_of(*allowed: str):
    """An argparse `type` for a comma separated list of `allowed` names, given back as the same text: an unknown name
    is refused in one line before anything runs (it was run as fp32 under its own label, gave an empty table, or died
    with a KeyError after minutes of setup)."""

    def parse(text: str) -> str:
        names = [name.strip() for name in text.split(",")]
        if not all(names) or any(name not in allowed for name in names):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma separated list of {', '.join(allowed)}")
        return ",".join(names)

    return parse


def counts(text: str) -> str:
    """An argparse `type` for a comma separated list of whole numbers >= 1 (batch sizes, draft lengths), given back as
    the same text."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma separated list of whole numbers >= 1")
    return ",".join(str(int(part)) for part in parts)


def at_least(minimum: int):
    """An argparse `type` for a whole number >= `minimum` (steps, rounds, tokens): 0 or less was taken, and after
    minutes of building models gave an empty median (StatisticsError), a division by zero or a table of nothing."""

    def parse(text: str) -> int:
        value = int(text.strip()) if text.strip().lstrip("-").isdigit() else None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {minimum}")
        return value

    return parse


def seconds(*, zero: bool = False):
    """An argparse `type` for a finite number of seconds > 0 (>= 0 with `zero`: "no extra time")."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds {'>=' if zero else '>'} 0")
        return value

    return parse


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def compare(fn_a, fn_b, *, device: str, budget: float, min_pairs: int = 5) -> tuple[float, float]:
    """Median seconds per call of a and b, timed call by call in alternation (a, b, a, b, ...) so a burst of
    load from other processes hits both, after warm-up calls (kernels pick their plans)."""
    for _ in range(3):
        fn_a(), fn_b()
    sync(device)
    ta, tb = [], []
    start = time.perf_counter()
    while len(ta) < min_pairs or time.perf_counter() - start < budget:
        ta.append(timed(fn_a, device))
        tb.append(timed(fn_b, device))
    return statistics.median(ta), statistics.median(tb)
