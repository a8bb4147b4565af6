"""Precision and optimizer choices of fit(): "auto" picks bf16 on CPUs with bf16 dot products, fused AdamW."""

import pytest
import torch

from neurallayers.nn import cpu
from neurallayers.training import TrainConfig, runtime
from neurallayers.training.runtime import build_optimizer, cpu_has_fast_bf16, resolve_precision

ZEN5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: spectre\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"
OLD = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


@pytest.mark.parametrize(("cpuinfo", "fast"), [(ZEN5, True), (SAPPHIRE, True), (OLD, False), ("", False)])
def test_cpu_bf16_detection_reads_the_flags_line(cpuinfo, fast):
    assert cpu_has_fast_bf16(cpuinfo) is fast


@pytest.mark.parametrize("fast", [True, False])
def test_auto_precision_on_cpu_follows_bf16_support(monkeypatch, fast):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast)
    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda: fast)
    monkeypatch.setattr(cpu, "_WARNED_BF16", {"TrainConfig.precision='bf16'"})  # warned already (tested below)
    dtype, scaler = resolve_precision("auto", torch.device("cpu"))
    assert dtype == (torch.bfloat16 if fast else None) and scaler is False
    assert resolve_precision("fp32", torch.device("cpu")) == (None, False)
    assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)


def test_auto_optimizer_is_fused_adamw_on_cpu_with_nanogpt_weight_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt, impl = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    assert impl == "fused" and opt.defaults["fused"]
    decay, no_decay = opt.param_groups
    assert [p.ndim for p in decay["params"]] == [2] and decay["weight_decay"] == 0.1
    assert [p.ndim for p in no_decay["params"]] == [1, 1, 1] and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_on_a_cpu_without_bf16_dot_products_warns_once(monkeypatch, recwarn, fast):
    """bf16 matmuls without AVX512-BF16/AMX ran 1 GFLOP/s against fp32's 135 (Zen 3): say so, once per process."""
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast)
    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda: fast)
    monkeypatch.setattr(cpu, "_WARNED_BF16", set())
    for _ in range(2):
        resolve_precision("bf16", torch.device("cpu"))
        runtime.warn_if_slow_bf16(torch.bfloat16, "cpu")
        runtime.warn_if_slow_bf16(torch.float32, "cpu")
        resolve_precision("fp32", torch.device("cpu"))
    messages = [str(w.message) for w in recwarn if "bf16 dot products" in str(w.message)]
    if fast:
        assert messages == []
    else:
        assert len(messages) == 2
        assert messages[0].startswith("TrainConfig.precision='bf16' on a CPU") and "use 'auto' or 'fp32'" in messages[0]
        assert messages[1].startswith("bf16 weights on a CPU") and "use fp32" in messages[1]
