"""Multi-head attention with grouped-query / multi-query support and two kernels sharing one signature:
"sdpa" (torch's fused scaled_dot_product_attention, the default) and "eager" (explicit softmax, can return
the attention weights)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurallayers.nn.cpu import cpu_has_fast_bf16
from neurallayers.nn.kv_cache import KVCache
from neurallayers.nn.positions import apply_rotary

KERNELS = ("sdpa", "eager")
# torch's CPU flash kernel is slow in half precision on short sequences: at (12, 4, 64, 32) bf16 its forward +
# backward takes 6x as long as baddbmm + softmax + bmm, at 512 keys 2.6x; at 1024 they are even. In generation too:
# a bf16 GPT-2 124M prefill of 512 tokens spends 5.5 ms a layer in it against 2.5 ms materialized. The scores are
# held in memory (for the backward pass when training), so the materialized form is kept to at most 2^25 of them
# per layer (64 MB in bf16). All that holds on CPUs with bf16 dot products (AMD Zen 5); on those without (Zen 3),
# baddbmm and bmm in bf16 are torch's slow generic kernels and the flash kernel wins: 9 vs 288 ms at 512 tokens.
_CPU_HALF_SDPA_MIN_KEYS = 1024
_CPU_HALF_MAX_SCORES = 1 << 25
_FAST_CPU_BF16: bool | None = None  # whether the CPU has bf16 dot products: read once, by the first Attention


class Attention(nn.Module):
    """q, k and v come from one fused linear (rows: n_head*head_dim for q, then n_kv_head*head_dim each for
    k and v), so a forward pass is one matmul in and one out. `bias` gives both linears biases; `qkv_bias`, where
    not None, decides the fused one's alone (Qwen2: biases on q, k and v, none on the output projection)."""

    # The dtypes the decode kernel runs here, set by the first fast decode step (which builds it); until then none: a
    # static cache used without one (DecoderLM.new_cache(static=True)) keeps torch's attention.
    decode_dtypes: tuple[torch.dtype, ...] = ()

    def __init__(self, dim: int, *, n_head: int, n_kv_head: int | None = None, head_dim: int | None = None,
                 bias: bool = True, qkv_bias: bool | None = None, dropout: float = 0.0,
                 kernel: str = "sdpa") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head  # 0 is refused, not read as left out
        _check_heads(n_head, n_kv_head)
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = _head_dim(dim, n_head, head_dim)
        if not 0.0 <= dropout <= 1.0:  # it failed at the first training step, in torch, naming no argument
            raise ValueError(f"Attention dropout={dropout!r}: must be a probability in [0, 1]")
        self.kernel = kernel
        self.dropout = dropout
        global _FAST_CPU_BF16
        if _FAST_CPU_BF16 is None:  # here, not in forward: a compiled forward reads a plain bool
            _FAST_CPU_BF16 = cpu_has_fast_bf16()
        self.q_dim, self.kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(dim, self.q_dim + 2 * self.kv_dim, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(self.q_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, *, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, is_causal: bool = False, cache: KVCache | None = None,
                layer: int = 0, input_pos: int | torch.Tensor = 0,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, dim) -> (B, T, dim), and weights (B, n_head, T, S) when need_weights.

        mask: bool (True = attend) or additive float, broadcastable to (B, n_head, T, S); S is the key length
        (T without a cache, the cached length with one). is_causal: hide the future too, the last query aligned
        with the last key (the kernel's own causal mask when there is no mask and T == S); with a cache at tensor
        positions (one start per row), each row's query i sees its keys up to input_pos + i.
        """
        _check_mask_dtype(mask)
        b, t, _ = x.shape
        qkv = self.qkv(x)
        qk, v = qkv.split((self.q_dim + self.kv_dim, self.kv_dim), dim=-1)
        qk = qk.view(b, t, self.n_head + self.n_kv_head, self.head_dim)
        if rope is not None:  # q and k rotated in one pass: half the small kernels, forward and backward
            cos, sin = rope
            qk = apply_rotary(qk, cos.transpose(1, 2), sin.transpose(1, 2))  # tables (B, T, 1, head_dim)
        q, k = qk.transpose(1, 2).split((self.n_head, self.n_kv_head), dim=1)  # (B, heads, T, head_dim)
        v = v.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, input_pos, k, v)
        _check_mask_shape(mask, (b, self.n_head, t, k.shape[-2]))
        if is_causal and (mask is not None or k.shape[-2] != t):
            # torch's own causal mask is dropped beside a mask and aligned top-left (a chunk after cached keys saw
            # one key of the prefix): build it, the last query aligned with the last key, as the eager kernel does.
            mask, is_causal = _and_causal(mask, _causal_for(t, k.shape[-2], cache, input_pos, q.device)), False
        dropout = self.dropout if self.training else 0.0
        # Not in a compiled decode step (generation.fast): there inductor fuses sdpa's math form into its kernels.
        compiled_step = cache is not None and torch.compiler.is_compiling()
        if self.kernel == "sdpa" and not need_weights and self._one_query(q, k, cache, mask, dropout):
            y = torch.ops.neurallayers.decode_attention(q, k, v, mask, 1 / math.sqrt(self.head_dim))
            weights = None
        elif self.kernel == "sdpa" and not need_weights and not compiled_step and _short_cpu_half(q, k):
            y, weights = materialized_attention(q, k, v, mask=mask, is_causal=is_causal, dropout=dropout), None
        elif self.kernel == "sdpa" and not need_weights:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None,
                enable_gqa=self.n_kv_head != self.n_head,
            )
            weights = None
        else:
            y, weights = eager_attention(q, k, v, mask=mask, is_causal=is_causal, dropout=dropout)
        y = y.transpose(1, 2).reshape(b, t, self.q_dim)  # (B, T, n_head*head_dim)
        return self.proj(y), (weights if need_weights else None)


    def _one_query(self, q: torch.Tensor, k: torch.Tensor, cache: KVCache | None, mask: torch.Tensor | None,
                   dropout: float) -> bool:
        """Whether the decode kernel takes this call: one query over a static cache (the fast decode step's, eager
        or compiled) on a CPU where it runs, a head dim it takes, keys of the query's dtype (under autocast a bf16
        query meets the float32 cache's keys, which sdpa casts), a bool or float mask, and no gradients."""
        return (cache is not None and cache.static and q.shape[2] == 1 and q.device.type == "cpu"
                and q.dtype in self.decode_dtypes and k.dtype == q.dtype and self.head_dim <= 256 and not dropout
                and (mask is None or mask.dtype in (torch.bool, torch.float32, torch.bfloat16))
                and not (torch.is_grad_enabled() and q.requires_grad))


def _check_heads(n_head: int, n_kv_head: int) -> None:
    """Head counts that do not group failed only in forward, with a shape error from torch that named neither."""
    if n_head < 1 or not 1 <= n_kv_head <= n_head or n_head % n_kv_head:
        raise ValueError(f"Attention n_head={n_head}, n_kv_head={n_kv_head}: n_head must be >= 1 and n_kv_head in "
                         "[1, n_head] dividing it")


def _head_dim(dim: int, n_head: int, head_dim: int | None) -> int:
    """head_dim, or dim // n_head where it is None. A dim that n_head does not divide lost its remainder silently (30
    wide, 4 heads: q of 28 channels), where transformers refuses it; head_dim=0 was read as None."""
    if head_dim is None:
        if dim % n_head:
            raise ValueError(f"Attention dim={dim}, n_head={n_head}: dim must be divisible by n_head, or give head_dim")
        return dim // n_head
    if head_dim < 1:
        raise ValueError(f"Attention head_dim={head_dim}: must be >= 1, or None for dim // n_head")
    return head_dim


def _check_mask_dtype(mask: torch.Tensor | None) -> None:
    """An integer 0/1 mask was added to the scores as a bias by the eager and materialized kernels (silently wrong)
    and refused by sdpa with torch's own message."""
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"attention mask must be bool (True = attend) or an additive float bias, got {mask.dtype}")


def _check_mask_shape(mask: torch.Tensor | None, scores: tuple[int, int, int, int]) -> None:
    """A mask that does not broadcast over the scores failed inside the kernel with torch's size mismatch (or a
    reshape's), naming neither. Not checked in a compiled step (a comparison there would tie its dynamic sizes)."""
    if mask is None or torch.compiler.is_compiling():
        return
    # broadcasting over the scores leaves them as they are: each of the mask's trailing dims is 1 or the scores'.
    # Compared in Python: torch.broadcast_shapes took 15 us, once per layer and decode step (a 12-layer step: 0.2 ms)
    shape = mask.shape
    if len(shape) > len(scores) or any(m not in (1, s) for m, s in zip(shape[::-1], scores[::-1], strict=False)):
        raise ValueError(f"attention mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
                         f"(B, n_head, T, S)={scores}: S is the key length (the cached prefix included)")


def causal_mask(t: int, s: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool, True = attend: query i (at key position S - T + i) sees keys 0 .. S - T + i."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)


def _causal_for(t: int, s: int, cache: KVCache | None, input_pos: int | torch.Tensor,
                device: torch.device) -> torch.Tensor:
    """The causal mask of T queries over S keys: (T, S), the last query aligned with the last key; or (B, 1, T, S) for
    a cache written at per-row positions, which returns the columns up to the longest row (all of them when static),
    so that aligned with the last column, a row's queries saw the unwritten ones past its own (a row at position 3
    beside one at 5 attended columns 4 and 5; in a static cache of 8 columns, all of 4..7)."""
    if cache is not None and isinstance(input_pos, torch.Tensor):
        q_pos = input_pos.to(device)[:, None] + torch.arange(t, device=device)  # (B, T) each query's own column
        return (torch.arange(s, device=device) <= q_pos[:, :, None])[:, None]  # (B, 1, T, S)
    return causal_mask(t, s, device)


def _and_causal(mask: torch.Tensor | None, causal: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return causal
    # where, not masked_fill: a per-row causal mask (B, 1, T, S) may have more dims than a head bias (1, H, T, S)
    return mask & causal if mask.dtype == torch.bool else torch.where(causal, mask, float("-inf"))


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None,
                    is_causal: bool, dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: softmax(q k^T / sqrt(d) + mask) v, softmax in float32. Returns (y, weights)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if is_causal and mask is None:
        mask = causal_mask(*scores.shape[-2:], q.device)
    dead = None
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        dead = _sees_nothing(mask)
        scores = scores.masked_fill(dead, 0.0)
    weights = scores.softmax(dim=-1).to(q.dtype)
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)
    if dropout:
        weights = F.dropout(weights, p=dropout)
    return weights @ v, weights


def _sees_nothing(mask: torch.Tensor) -> torch.Tensor:
    """(..., T, 1) True for a query whose every key is masked: its softmax (and that softmax's gradient) is NaN, which
    the next layer spreads through that position's key to every query of the row (a left-padded row with is_causal).
    torch's sdpa gives such a query zeros; the other kernels do the same with this."""
    return ~mask.any(dim=-1, keepdim=True) if mask.dtype == torch.bool else mask.isneginf().all(dim=-1, keepdim=True)


def _short_cpu_half(q: torch.Tensor, k: torch.Tensor) -> bool:
    b, h, t, _ = q.shape
    s = k.shape[-2]
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and _FAST_CPU_BF16 is not False
            and s < _CPU_HALF_SDPA_MIN_KEYS and b * h * t * s <= _CPU_HALF_MAX_SCORES)


def materialized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                           mask: torch.Tensor | None = None, is_causal: bool = False,
                           dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with the scores held in memory: three kernels (baddbmm with the mask as
    its additive input, softmax, bmm), the fastest form for short sequences on CPU in half precision.

    q (B, H, T, D), k and v (B, H_kv, S, D) with H a multiple of H_kv. mask: bool (True = attend) or additive
    float, broadcastable to (B, H, T, S) (an ALiBi bias, a padding mask); or is_causal, which aligns the last
    query with the last key. Returns (B, H, T, D).
    """
    b, h, t, d = q.shape
    s = k.shape[-2]
    if h != k.shape[1]:
        k, v = k.repeat_interleave(h // k.shape[1], dim=1), v.repeat_interleave(h // v.shape[1], dim=1)
    if mask is None:
        bias = torch.zeros(t, s, dtype=q.dtype, device=q.device)
        if is_causal:
            bias = bias.masked_fill(~causal_mask(t, s, q.device), float("-inf"))
    elif mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    else:
        bias = mask.to(q.dtype)
    dead = None if mask is None else _sees_nothing(mask)
    if dead is not None:
        bias = bias.masked_fill(dead, 0.0)  # finite: zeroed below, after the matmul
    if bias.dim() > 2:  # (B|1, H|1, T, S) or (H|1, T, S): baddbmm wants one (T, S) slice per batched matrix
        bias = bias.expand(b, h, t, s).reshape(b * h, t, s)
    scores = torch.baddbmm(bias, q.reshape(b * h, t, d), k.reshape(b * h, s, d).transpose(1, 2),
                           alpha=1 / math.sqrt(d))  # (B*H, T, S)
    probs = scores.softmax(dim=-1).to(v.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout)
    y = torch.bmm(probs, v.reshape(b * h, s, d)).view(b, h, t, d)
    return y if dead is None else y.masked_fill(dead, 0.0)
