"""Attention: multi-head equals torch's nn.MultiheadAttention; grouped-query equals multi-head with each key/value
head repeated over its group; multi-query shapes; the sdpa and eager kernels agree and eager's weights are a
probability distribution over the allowed keys."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from neurallayers.nn.attention import Attention, eager_attention, materialized_attention
from neurallayers.nn.kv_cache import KVCache

DIM, HEADS, HEAD_DIM = 32, 4, 8


def causal_bool(t: int, s: int | None = None) -> torch.Tensor:
    s = s or t
    return torch.ones(t, s, dtype=torch.bool).tril(s - t)


def attention(n_kv_head: int, *, kernel: str = "sdpa", seed: int = 0, bias: bool = True) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(DIM, n_head=HEADS, n_kv_head=n_kv_head, head_dim=HEAD_DIM, bias=bias, kernel=kernel).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@torch.no_grad()
def test_multi_head_equals_torch_multihead_attention(kernel):
    ours = attention(HEADS, kernel=kernel)
    ref = nn.MultiheadAttention(DIM, HEADS, batch_first=True).eval()
    ref.in_proj_weight.copy_(ours.qkv.weight)  # the same [q; k; v] row layout
    ref.in_proj_bias.copy_(ours.qkv.bias)
    ref.out_proj.weight.copy_(ours.proj.weight)
    ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 10, DIM, generator=torch.Generator().manual_seed(1))
    want, want_w = ref(x, x, x, attn_mask=~causal_bool(10), need_weights=True, average_attn_weights=False)
    got, w = ours(x, is_causal=True, need_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, want_w, atol=1e-6, rtol=1e-5)
    got, _ = ours(x, is_causal=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@torch.no_grad()
def test_grouped_query_equals_multi_head_with_repeated_kv_heads(n_kv_head, kernel):
    gqa = attention(n_kv_head, kernel=kernel)
    mha = attention(HEADS, kernel=kernel, seed=1)
    group = HEADS // n_kv_head
    q_dim, kv_dim = HEADS * HEAD_DIM, n_kv_head * HEAD_DIM
    for src, dst in ((gqa.qkv.weight, mha.qkv.weight), (gqa.qkv.bias, mha.qkv.bias)):
        q, k, v = src.split((q_dim, kv_dim, kv_dim))
        # kv head j serves query heads j*group .. (j+1)*group-1: repeat each head's rows `group` times
        rep = [t.unflatten(0, (n_kv_head, HEAD_DIM)).repeat_interleave(group, 0).flatten(0, 1) for t in (k, v)]
        dst.copy_(torch.cat((q, *rep)))
    mha.proj.load_state_dict(gqa.proj.state_dict())
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(2))
    mask = causal_bool(9)[None, None] & torch.tensor([[1] * 9, [0, 0, 0] + [1] * 6]).bool()[:, None, None, :]
    mask |= torch.eye(9, dtype=torch.bool)  # padding queries see themselves (as the decoder does)
    for kw in (dict(is_causal=True), dict(mask=mask)):
        torch.testing.assert_close(gqa(x, **kw)[0], mha(x, **kw)[0], atol=1e-5, rtol=1e-5)


def test_n_kv_head_equal_to_n_head_is_plain_multi_head():
    assert attention(HEADS).qkv.weight.shape == (3 * HEADS * HEAD_DIM, DIM)
    assert Attention(DIM, n_head=HEADS).n_kv_head == HEADS  # None means n_head


@torch.no_grad()
def test_multi_query_shapes_and_cached_decoding():
    mqa = attention(1)
    assert mqa.qkv.weight.shape == ((HEADS + 2) * HEAD_DIM, DIM) and mqa.proj.weight.shape == (DIM, HEADS * HEAD_DIM)
    x = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(3))
    full, weights = mqa(x, is_causal=True, need_weights=True)
    assert full.shape == (2, 7, DIM) and weights.shape == (2, HEADS, 7, 7)
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=1, max_len=7, head_dim=HEAD_DIM)
    assert cache.k.shape == (1, 2, 1, 7, HEAD_DIM)  # one cached head, whatever n_head is
    steps = [mqa(x[:, :4], is_causal=True, cache=cache)[0]]
    steps += [mqa(x[:, t:t + 1], cache=cache, input_pos=t)[0] for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("static", [False, True])
@torch.no_grad()
def test_under_autocast_a_float32_cache_stores_the_keys_at_per_row_positions_too(static):
    """Under autocast keys come out in bf16, which a float32 cache stored at an int position; at per-row positions (a
    server's rows, every fast decode step) the write failed: "Index put requires the source and destination dtypes
    match". Both now store the same keys."""
    attn = attention(2)
    x = torch.randn(2, 3, DIM, generator=torch.Generator().manual_seed(4))
    caches = [KVCache(n_layer=1, batch_size=2, n_kv_head=2, max_len=6, head_dim=HEAD_DIM, static=static)
              for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x, cache=caches[0], input_pos=2, is_causal=True)
        attn(x, cache=caches[1], input_pos=torch.tensor([2, 2]), is_causal=True)
    assert caches[0].k.dtype == torch.float32 and caches[0].k[:, :, :, 2:5].abs().sum() > 0
    assert torch.equal(caches[1].k, caches[0].k) and torch.equal(caches[1].v, caches[0].v)


@pytest.mark.parametrize("n_kv_head", [HEADS, 1])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@torch.no_grad()
def test_is_causal_on_a_chunk_after_cached_keys_aligns_the_last_query_with_the_last_key(kernel, n_kv_head):
    """A prefill in chunks, each with is_causal: torch's sdpa aligns its own causal mask top-left, so the second
    chunk's first query saw one key of the cached prefix instead of all of them (eager was right)."""
    attn = attention(n_kv_head, kernel=kernel)
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(7))
    full, _ = attn(x, is_causal=True)
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=n_kv_head, max_len=9, head_dim=HEAD_DIM)
    chunks = [attn(x[:, a:b], is_causal=True, cache=cache, input_pos=a)[0] for a, b in ((0, 4), (4, 7), (7, 9))]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)


def _column_bias(t: int, s: int) -> torch.Tensor:
    """(1, HEADS, T, S) additive bias that depends on the key's column and the head only (as ALiBi's for a query)."""
    return -0.1 * torch.arange(1.0, HEADS + 1)[None, :, None, None] * torch.arange(float(s)).expand(1, HEADS, t, s)


@pytest.mark.parametrize("head_bias", [False, True])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("n_kv_head", [HEADS, 1])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@torch.no_grad()
def test_is_causal_at_per_row_positions_sees_only_each_rows_written_keys(kernel, n_kv_head, static, head_bias):
    """A cache written at tensor positions returns the columns up to the longest row (a static one all of them):
    is_causal aligned its mask with the last column, so a row's queries attended the columns past its own (0.1-0.8
    off the full forward here; a static cache's every unwritten column). Each row's query i now sees its keys up to
    input_pos + i, beside an additive per-head bias too."""
    attn = attention(n_kv_head, kernel=kernel)
    x = torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(5))
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=n_kv_head, max_len=10, head_dim=HEAD_DIM, static=static)
    starts = [3, 5]
    for r, n in enumerate(starts):  # each row's prompt alone
        attn(x[r:r + 1, :n], is_causal=True, cache=cache.rows(r, r + 1))
    for t in (2, 1):  # a chunk, then one token, each row at its own column
        pos = torch.tensor(starts)
        s = 10 if static else max(starts) + t
        chunk = torch.stack([x[r, n:n + t] for r, n in enumerate(starts)])
        mask = _column_bias(t, s) if head_bias else None
        got, _ = attn(chunk, mask=mask, is_causal=True, cache=cache, input_pos=pos)
        for r, n in enumerate(starts):
            full, _ = attn(x[r:r + 1, :n + t], mask=_column_bias(n + t, n + t) if head_bias else None, is_causal=True)
            torch.testing.assert_close(got[r], full[0, n:], atol=1e-5, rtol=1e-5)
        starts = [n + t for n in starts]


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@torch.no_grad()
def test_is_causal_beside_a_padding_mask_hides_the_future_too(kernel, mask_kind):
    """A padding mask (B, 1, 1, S) with is_causal: both kernels dropped is_causal and let every query see its future."""
    attn = attention(2, kernel=kernel)
    x = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(8))
    keep = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    keep[1, ..., :2] = False  # row 1: two padding keys
    pad = keep if mask_kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    got, _ = attn(x, mask=pad, is_causal=True)
    want, _ = attn(x, mask=keep & causal_bool(7))
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, 2:], want[1, 2:], atol=1e-5, rtol=1e-5)  # the padding queries see no key


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
@pytest.mark.parametrize("kernel", ["eager", "materialized"])
def test_a_query_that_sees_no_key_gives_zeros_as_sdpa_does(kernel, mask_kind):
    """Left padding with is_causal leaves the padding queries no key: eager and the bf16 CPU path gave NaN there
    (values and gradients), which a second layer spread through those keys to the whole row; torch's sdpa gives 0."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, HEADS, 5, HEAD_DIM, generator=g, requires_grad=True) for _ in range(3))
    keep = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :] & causal_bool(5)
    mask = keep if mask_kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    if kernel == "eager":
        ours, w = eager_attention(q, k, v, mask=mask, is_causal=False)
        assert (w[0, :, :2] == 0).all()
    else:
        ours = materialized_attention(q, k, v, mask=mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (ours[0, :, :2] == 0).all()
    assert_same_values_and_grads(ours, ref, (q, k, v))


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_two_layers_over_a_left_padded_row_stay_finite(kernel, dtype):
    """The padding queries' NaN became keys of the next layer: every position of a left-padded row was NaN."""
    first, second = attention(HEADS, kernel=kernel).to(dtype), attention(HEADS, kernel=kernel, seed=1).to(dtype)
    x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(7)).to(dtype)
    pad = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    h = x + first(x, mask=pad, is_causal=True)[0]
    y = h + second(h, mask=pad, is_causal=True)[0]
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("n_kv_head", [HEADS, 2, 1])
@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
@torch.no_grad()
def test_sdpa_and_eager_agree_and_eager_weights_sum_to_one(n_kv_head, mask_kind):
    sdpa = attention(n_kv_head)
    eager = attention(n_kv_head, kernel="eager")
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(4))
    allowed = causal_bool(8)[None, None].expand(2, 1, 8, 8).clone()
    allowed[1, :, :, :2] = False  # row 1: two padding keys
    allowed |= torch.eye(8, dtype=torch.bool)
    kw = {"causal": dict(is_causal=True), "bool": dict(mask=allowed),
          "additive": dict(mask=torch.zeros(2, HEADS, 8, 8).masked_fill(~allowed, float("-inf"))
                           - 0.1 * torch.arange(8.0))}[mask_kind]  # additive: a bias (like ALiBi) as well as -inf
    y_sdpa, none = sdpa(x, **kw)
    y_eager, w = eager(x, **kw, need_weights=True)
    assert none is None
    torch.testing.assert_close(y_eager, y_sdpa, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, HEADS, 8, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, HEADS, 8), atol=1e-6, rtol=0)
    expected_allowed = causal_bool(8)[None, None].expand(2, HEADS, 8, 8) if mask_kind == "causal" else \
        allowed.expand(2, HEADS, 8, 8)
    assert (w[~expected_allowed] == 0).all() and (w[expected_allowed] > 0).all()
    # the sdpa module returns the same weights through the eager path when asked for them
    torch.testing.assert_close(sdpa(x, **kw, need_weights=True)[1], w)


def test_eager_attention_function_matches_softmax_definition():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    y, w = eager_attention(q, k, v, mask=None, is_causal=False)
    want_w = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    torch.testing.assert_close(w, want_w)
    torch.testing.assert_close(y, want_w @ v)


def test_unknown_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'; valid: sdpa, eager"):
        Attention(DIM, n_head=HEADS, kernel="flash")


@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("is_causal", [True, False])
def test_materialized_attention_equals_sdpa_values_and_grads(n_kv_head, is_causal):
    """The short-sequence CPU half-precision path: checked in fp32 (exact math) against torch's kernel."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, HEADS, 7, HEAD_DIM, generator=g, requires_grad=True)
    k, v = (torch.randn(2, n_kv_head, 7, HEAD_DIM, generator=g, requires_grad=True) for _ in range(2))
    ours = materialized_attention(q, k, v, is_causal=is_causal)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
                                                           enable_gqa=n_kv_head != HEADS)
    assert_same_values_and_grads(ours, ref, (q, k, v))


@pytest.mark.parametrize("kind", ["padding", "alibi"])
def test_materialized_attention_with_a_mask_equals_sdpa_values_and_grads(kind):
    """Bool masks (B, 1, T, S) and additive biases (1, H, T, S), as the decoder builds for padded batches and
    ALiBi, give torch's kernel's values and gradients."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, HEADS, 6, HEAD_DIM, generator=g, requires_grad=True) for _ in range(3))
    causal = causal_bool(6)[None, None]
    if kind == "padding":
        keep = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
        mask = (causal & keep[:, None, None, :]) | torch.eye(6, dtype=torch.bool)  # every query sees itself
    else:
        distance = torch.arange(6)[None, :] - torch.arange(6)[:, None]
        bias = torch.linspace(0.1, 0.8, HEADS)[:, None, None] * distance
        mask = bias.masked_fill(~causal[0], float("-inf"))[None]
    ours = materialized_attention(q, k, v, mask=mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_same_values_and_grads(ours, ref, (q, k, v))


def test_bf16_attention_on_cpu_takes_the_materialized_path_and_matches_fp32(monkeypatch):
    import neurallayers.nn.attention as module

    calls = []
    def counted(*args, **kwargs):
        calls.append(1)
        return materialized_attention(*args, **kwargs)

    monkeypatch.setattr(module, "materialized_attention", counted)
    monkeypatch.setattr(module, "_FAST_CPU_BF16", True)  # a CPU with bf16 dot products
    attn = attention(2)
    x = torch.randn(3, 10, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, _ = attn(x, is_causal=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, _ = attn(x, is_causal=True)
            masked, _ = attn(x, mask=causal_bool(10)[None, None])  # the same attention as a bool mask
    assert fast.dtype == torch.bfloat16 and len(calls) == 2
    torch.testing.assert_close(fast.float(), ref, atol=0.1, rtol=0.05)
    torch.testing.assert_close(fast.float(), masked.float(), atol=0.1, rtol=0.05)


def test_bf16_attention_on_a_cpu_without_bf16_units_takes_sdpa(monkeypatch):
    """Without bf16 dot products the materialized form's bf16 matrix products are torch's slow generic kernels."""
    import neurallayers.nn.attention as module

    calls = []
    monkeypatch.setattr(module, "materialized_attention", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(module, "_FAST_CPU_BF16", False)
    attn = attention(2).to(torch.bfloat16)
    with torch.no_grad():
        y, _ = attn(torch.randn(2, 9, DIM).to(torch.bfloat16), is_causal=True)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 9, DIM) and calls == []


def test_bf16_cached_prefill_and_decode_take_the_materialized_path_and_match_the_full_forward(monkeypatch):
    """Generation in bf16 on CPU (a prefill into the KV cache, then one token at a time) also avoids torch's slow
    half-precision kernel, and gives what one full causal forward does."""
    import neurallayers.nn.attention as module

    calls = []
    def counted(*args, **kwargs):
        calls.append(1)
        return materialized_attention(*args, **kwargs)

    monkeypatch.setattr(module, "materialized_attention", counted)
    monkeypatch.setattr(module, "_FAST_CPU_BF16", True)  # a CPU with bf16 dot products
    attn = attention(2).to(torch.bfloat16)
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=2, max_len=9, head_dim=HEAD_DIM, dtype=torch.bfloat16)
    with torch.no_grad():
        full, _ = attn(x, is_causal=True)
        prefill, _ = attn(x[:, :6], is_causal=True, cache=cache, input_pos=0)
        steps = [attn(x[:, i:i + 1], cache=cache, input_pos=i)[0] for i in range(6, 9)]
    assert len(calls) == 5
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1).float(), full.float(), atol=0.1, rtol=0.05)


def assert_same_values_and_grads(ours: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), inputs)
    ref_grads = torch.autograd.grad(ref.square().sum(), inputs)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8])
def test_an_integer_mask_is_refused_by_every_kernel(kernel, dtype):
    """eager and the materialized bf16 path added a 0/1 integer mask to the scores (silently wrong weights); sdpa
    raised torch's own message. The kernels share one signature: bool or additive float."""
    attn = attention(2, kernel=kernel)
    x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"attention mask must be bool .* or an additive float bias, got torch\."):
        attn(x, mask=causal_bool(5).to(dtype))
    with pytest.raises(ValueError, match="attention mask must be bool"):
        attn.to(torch.bfloat16)(x.bfloat16(), mask=causal_bool(5).to(dtype))


@pytest.mark.parametrize(("n_head", "n_kv_head"), [(4, 3), (4, 8), (0, None), (6, 4)])
def test_head_counts_that_do_not_group_are_refused_when_built(n_head, n_kv_head):
    """They failed only in forward, with a tensor-size error from torch (eager) or sdpa's own message."""
    with pytest.raises(ValueError, match=rf"Attention n_head={n_head}, n_kv_head="):
        Attention(DIM, n_head=n_head, n_kv_head=n_kv_head, head_dim=HEAD_DIM)


@pytest.mark.parametrize("shape", [(HEADS, 6, 6), (1, 6, 6)])
def test_materialized_attention_takes_a_three_dimensional_mask_as_sdpa_does(shape):
    """A per-head (H, T, S) mask is broadcastable to (B, H, T, S); baddbmm got it unexpanded and failed."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, HEADS, 6, HEAD_DIM, generator=g) for _ in range(3))
    mask = (torch.rand(shape, generator=g) > 0.4) | torch.eye(6, dtype=torch.bool)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(materialized_attention(q, k, v, mask=mask), want, atol=1e-5, rtol=1e-5)
    additive = torch.zeros(shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(materialized_attention(q, k, v, mask=additive), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kwargs", "named"), [
    (dict(dim=30, n_head=4), r"dim=30.*n_head=4"),
    (dict(dim=DIM, n_head=HEADS, head_dim=0), r"head_dim=0"),
    (dict(dim=DIM, n_head=HEADS, n_kv_head=0), r"n_kv_head=0"),
    (dict(dim=DIM, n_head=HEADS, dropout=1.5), r"dropout=1.5.*\[0, 1\]"),
    (dict(dim=DIM, n_head=HEADS, dropout=-0.1), r"dropout=-0.1.*\[0, 1\]"),
])
def test_attention_refuses_bad_sizes_and_rates_when_built(kwargs, named):
    """head_dim=0 and n_kv_head=0 were read as left out (dim // n_head, n_head); a dim that n_head does not divide
    lost its remainder silently (30 wide, 4 heads: q of 28), where transformers refuses it; a dropout outside [0, 1]
    failed at the first training step with torch's message naming no argument."""
    dim = kwargs.pop("dim")
    with pytest.raises(ValueError, match=named):
        Attention(dim, **kwargs)


@pytest.mark.parametrize("field", ["n_layer", "n_kv_head", "head_dim"])
def test_a_kv_cache_of_no_layers_heads_or_channels_is_refused(field):
    """Only batch_size and max_len were checked: a cache of 0 layers failed at the first write with an IndexError."""
    sizes = dict(n_layer=2, batch_size=1, n_kv_head=HEADS, max_len=8, head_dim=HEAD_DIM) | {field: 0}
    with pytest.raises(ValueError, match=f"KV cache {field}=0: must be an int >= 1"):
        KVCache(**sizes)


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("shape", [(4, 4), (2, 1, 3, 3), (1, 3, 3, 3)])
def test_a_mask_that_does_not_broadcast_over_the_scores_is_a_clear_error(kernel, shape):
    """It failed inside the kernel with torch's size mismatch, which named neither the mask nor the shape it needs."""
    attn = attention(HEADS, kernel=kernel)
    x = torch.randn(1, 3, DIM)
    want = re.escape(f"attention mask of shape {tuple(shape)}") + r".*\(B, n_head, T, S\)=\(1, 4, 3, 3\)"
    with pytest.raises(ValueError, match=want):
        attn(x, mask=torch.ones(shape, dtype=torch.bool))
