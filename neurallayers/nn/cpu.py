"""What the CPU can do fast, for the kernels to choose (nn/ uses only torch: training and generation ask here too)."""

from __future__ import annotations

import warnings
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


_WARNED_BF16: set[str] = set()


def warn_if_slow_bf16(dtype: torch.dtype | None, device: torch.device | str | None, *, what: str = "bf16 weights",
                      advice: str = "use fp32, or decode with prepare_for_decode (CLI generate/serve --compile), "
                      "whose kernel (x86 with AVX2, built with the C++ compiler) runs bf16 at fp32's speed or "
                      "better here") -> None:
    """Warn, once a process for each `what`, about bf16 on a CPU without bf16 dot products, where every matrix
    product runs ~100x slower than in fp32."""
    if (dtype != torch.bfloat16 or torch.device(device or "cpu").type != "cpu" or what in _WARNED_BF16
            or cpu_has_fast_bf16()):
        return
    _WARNED_BF16.add(what)
    warnings.warn(f"{what} on a CPU without bf16 dot products (AVX512-BF16 or AMX): torch's bf16 matrix products run "
                  f"~100x slower than fp32 here; {advice}", stacklevel=3)
