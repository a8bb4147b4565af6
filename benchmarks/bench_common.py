"""Shared by the benchmark scripts (imported from beside them)."""

from __future__ import annotations


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
