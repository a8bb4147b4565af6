"""What the CPU can do fast, for the kernels to choose (nn/ uses only torch: training and generation ask here too)."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16), where bf16 autocast pays:
    about 4x the fp32 matmul rate on AMD Zen 5. Without them torch's bf16 matmuls are far slower than fp32 (torch
    2.13 on AMD Zen 3: 1 GFLOP/s against 135).

    torch's own probes are asked first; they can miss CPUs they were not built to know, so on Linux the kernel's
    CPU flags decide as well: `/proc/cpuinfo`, or the text `cpuinfo` when given (for tests).
    """
    if cpuinfo is None:
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            fn = getattr(torch.cpu, probe, None)
            if fn is not None and fn():
                return True
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})
