"""generation/attention.cpp: one query's attention over a KV cache equals the float64 reference, never reads hidden
columns, and the fast decode step (eager and compiled) uses it with the plain model's logits."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nl_gen_helpers import next_logits, recording, tiny_lm

from neurallayers.generation import rowdot
from neurallayers.generation.fast import decode_step_for, prepare_for_decode
from neurallayers.generation.generate import forward_step
from neurallayers.nn.attention import Attention

DTYPES = rowdot.attention_dtypes()


def _needs(dtype: torch.dtype) -> None:
    if dtype not in DTYPES:
        pytest.skip(f"the decode attention kernel does not run {dtype} on this CPU (needs x86-64 with AVX-512)")


def _reference(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v in float64, zeros for a query that sees no key (as torch's sdpa)."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    dead = torch.isneginf(s).all(-1, keepdim=True)
    return s.masked_fill(dead, 0).softmax(-1).masked_fill(dead, 0) @ v


def _case(dtype, *, b, h_kv, groups, d, s, mask_kind, gen):
    """q (B, H, 1, D) cut from a (B, 1, H, D) tensor, k and v windows of a longer cache, and a mask."""
    h = h_kv * groups
    k = torch.randn(b, h_kv, s + 5, d, generator=gen).mul(2).to(dtype)[:, :, :s]
    v = torch.randn(b, h_kv, s + 5, d, generator=gen).to(dtype)[:, :, :s]
    q = torch.randn(b, 1, h, d, generator=gen).mul(2).to(dtype).transpose(1, 2)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "bool":
        mask = torch.rand(b, 1, 1, s, generator=gen) < 0.7
        mask[..., -1] = True
    elif mask_kind == "bool, a row sees nothing":
        mask = torch.rand(b, 1, 1, s, generator=gen) < 0.7
        mask[0] = False
    elif mask_kind == "bool, one row for all":
        mask = torch.rand(1, 1, 1, s, generator=gen) < 0.5
    else:  # an additive per-head bias with hidden keys, as ALiBi's
        mask = torch.randn(1, h, 1, s, generator=gen).mul(3).to(dtype)
        mask[..., ::3] = float("-inf")
    return q, k, v, mask


MASKS = ["none", "bool", "bool, a row sees nothing", "bool, one row for all", "float bias"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_kernel_equals_reference(dtype, mask_kind):
    """Random shapes: batches, grouped-query heads (1-3 per key head), head dims 8-128 (whole 16-wide vectors and a
    tail), 1-300 keys (a tail of the 16-wide exp, and none); float32 within float rounding, bfloat16 within half a
    bf16 step of the exact value."""
    _needs(dtype)
    gen = torch.Generator().manual_seed(MASKS.index(mask_kind))
    for trial in range(40):
        shape = dict(b=1 + trial % 3, h_kv=1 + trial % 2, groups=1 + trial % 3,
                     d=[8, 16, 24, 64, 80, 100, 128][trial % 7], s=[1, 15, 16, 17, 97, 300][trial % 6])
        q, k, v, mask = _case(dtype, **shape, mask_kind=mask_kind, gen=gen)
        scale = 1 / math.sqrt(shape["d"])
        got = torch.ops.neurallayers.decode_attention(q, k, v, mask, scale)
        want = _reference(q, k, v, mask, scale)
        assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
        if dtype == torch.float32:
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
        else:  # rounded once from float32: at most half a bf16 step (2^-8 relative) off, plus float32's sums
            assert ((got.double() - want).abs() <= want.abs() * 2 ** -8 + 1e-5).all(), shape
        if mask_kind == "bool, a row sees nothing":
            assert not got[0].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hidden_columns_are_never_read(dtype):
    """A static cache's unwritten columns may hold anything: NaN keys and values there leave the output finite."""
    _needs(dtype)
    gen = torch.Generator().manual_seed(0)
    q, k, v, mask = _case(dtype, b=2, h_kv=2, groups=2, d=64, s=40, mask_kind="bool", gen=gen)
    k, v = k.clone(), v.clone()
    k.masked_fill_(~mask[:, 0, 0, :, None].unsqueeze(1), float("nan"))
    v.masked_fill_(~mask[:, 0, 0, :, None].unsqueeze(1), float("nan"))
    got = torch.ops.neurallayers.decode_attention(q, k, v, mask, 0.125)
    assert torch.isfinite(got).all()
    clean = _reference(q, k.nan_to_num(), v.nan_to_num(), mask, 0.125)
    torch.testing.assert_close(got.double(), clean, atol=0.05, rtol=0.02)


def test_kernel_refuses_bad_input():
    _needs(torch.float32)
    op = torch.ops.neurallayers.decode_attention
    q, k, wide = torch.randn(1, 4, 1, 64), torch.randn(1, 2, 9, 64), torch.randn(1, 2, 9, 300)
    for args, match in (((torch.randn(1, 4, 2, 64), k, k), "q \\(B, H, 1, D\\)"),
                        ((torch.randn(1, 4, 1, 300), wide, wide), "in \\[1, 256\\]"),
                        ((q, torch.randn(1, 3, 9, 64), torch.randn(1, 3, 9, 64)), "do not match"),
                        ((q, k.bfloat16(), k.bfloat16()), "must all be float32 or all bfloat16"),
                        ((q.half(), k.half(), k.half()), "must all be float32 or all bfloat16")):
        with pytest.raises(RuntimeError, match=match):
            op(*args, None, 0.125)
    with pytest.raises(RuntimeError, match="bool, float32 or bfloat16"):
        op(q, k, k, torch.ones(1, 1, 1, 9, dtype=torch.long), 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_fast_step_uses_the_kernel(dtype):
    """compile=False: each layer's attention of a one-token step goes through the kernel, with the plain model's
    logits for one row and for a batch of three."""
    _needs(dtype)
    plain, fast = tiny_lm(seed=8), prepare_for_decode(tiny_lm(seed=8), dtype=dtype, compile=False)
    plain.to(dtype)
    for rows in (1, 3):
        call, seen = recording(decode_step_for(fast))
        want = next_logits(plain, functools.partial(forward_step, plain), rows)
        got = next_logits(fast, call, rows)
        assert seen.count("neurallayers.decode_attention.default") == fast.config.n_layer
        tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16: the plain path rounds scores and weights to bf16
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.slow
def test_compiled_step_calls_the_kernel_on_the_caches_own_columns():
    """The compiled batch-1 step calls the kernel once a layer, on views of the cache (flexible_layout): no copy of
    a layer's keys and values (a copy per layer made the step slower than inductor's own attention)."""
    _needs(torch.bfloat16)
    from torch._inductor.utils import run_and_get_code

    plain, fast = tiny_lm(seed=9), prepare_for_decode(tiny_lm(seed=9), dtype=torch.bfloat16)
    plain.to(torch.bfloat16)
    want = next_logits(plain, functools.partial(forward_step, plain))
    got, code = next_logits(fast, functools.partial(run_and_get_code, decode_step_for(fast)))
    code = "".join(code)
    assert code.count('aoti_torch_call_dispatcher("neurallayers::decode_attention"') == fast.config.n_layer
    assert "reinterpret_tensor_wrapper(arg" in code  # the cache's columns themselves, not buffers filled for it
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_other_calls_keep_sdpa():
    """The kernel takes only one query over a static cache without gradients, with keys of its dtype: prompts, the
    plain path's growing cache, training and a bf16 query under autocast over a float32 cache keep torch's
    attention."""
    _needs(torch.float32)
    prepare_for_decode(tiny_lm(), compile=False)  # loads the kernels and sets the dtypes they run
    layer = Attention(64, n_head=4)
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 4, 8, 16)
    static = tiny_lm().new_cache(1, 8, static=True)
    assert layer._one_query(q, k, static, None, 0.0)
    assert not layer._one_query(torch.randn(1, 4, 2, 16), k, static, None, 0.0)  # a prompt
    assert not layer._one_query(q, k, tiny_lm().new_cache(1, 8), None, 0.0)  # the plain path's cache
    assert not layer._one_query(q, k, static, None, 0.1)  # dropout
    assert not layer._one_query(q.requires_grad_(), k, static, None, 0.0)  # gradients: the op has no backward
    assert not layer._one_query(q.detach().half(), k.half(), static, None, 0.0)
    if torch.bfloat16 in DTYPES:  # autocast: the kernel refused the mix ("q, k and v must all be float32 or ...")
        assert layer._one_query(q.detach().bfloat16(), k.bfloat16(), static, None, 0.0)
        assert not layer._one_query(q.detach().bfloat16(), k, static, None, 0.0)


def test_static_cache_without_a_fast_step():
    """A static cache from DecoderLM.new_cache in a process that never made a fast step (so never built the kernel)
    decodes with torch's attention: it raised AttributeError for Attention.decode_dtypes."""
    script = """
import torch
from nl_gen_helpers import tiny_lm
model = tiny_lm()
static, grown = model.new_cache(1, 8, static=True), model.new_cache(1, 8)
with torch.inference_mode():
    for cache in (static, grown):
        model(torch.tensor([[1, 2, 3]]), cache=cache, input_pos=0)
    got = model(torch.tensor([[4]]), cache=static, input_pos=torch.tensor([3])).logits[:, -1]
    want = model(torch.tensor([[4]]), cache=grown, input_pos=3).logits[:, -1]
torch.testing.assert_close(got, want)
"""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-2000:]
