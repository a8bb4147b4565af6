"""Position encodings: sinusoidal table, RoPE (with linear, dynamic-NTK, Llama-3 and YaRN scaling), ALiBi slopes.

Learned positions are a plain nn.Embedding in the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """(max_len, dim) table of "Attention is all you need": sin on even, cos on odd channels."""
    if max_len < 1 or dim < 1:  # dim 0 was a ZeroDivisionError, max_len 0 a table no position indexes
        raise ValueError(f"sinusoidal_table max_len={max_len}, dim={dim}: both must be ints >= 1")
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


def rope_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype for the rotary tables of a forward whose hidden states are `x`: under autocast q and k come out of
    their linear in the autocast dtype, and tables in it keep the rotation from promoting them to fp32 (which would
    push attention off its half-precision fast path); else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def stale(table: torch.Tensor, was_meta: bool) -> bool:
    """Whether a computed buffer must be computed again after a move (`Module._apply`): a cast rounded it, or
    `to_empty` took it off the meta device as uninitialised memory, which no load_state_dict fills (it is outside the
    state dict): a model built on meta, moved with to_empty and loaded gave wrong logits (ALiBi 3e-2 off, sinusoidal
    NaN), silently."""
    return table.dtype != torch.float32 or (was_meta and not table.is_meta)


class FixedTable(nn.Module):
    """A table computed, not learned (the sinusoidal positions, the ALiBi slopes): `table`, a buffer outside the state
    dict. It stays float32, as RotaryEmbedding's rates do: model.to(torch.bfloat16) rounded it to 8 bits of mantissa,
    and a model cast back (or loaded with float32 weights again) kept the rounded table: sinusoidal logits 3e-3 off.
    It is computed again when `to_empty` moves it off the meta device, and by `reset_parameters`."""

    def __init__(self, make: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self.make = make  # a functools.partial, so the model still pickles
        self.register_buffer("table", make(), persistent=False)

    def reset_parameters(self) -> None:
        """The table computed again where it lies (FSDP's per-module reset after to_empty calls this)."""
        self.table = self.make().to(self.table.device)

    def _apply(self, fn, recurse: bool = True) -> FixedTable:
        was_meta = self.table.is_meta
        super()._apply(fn, recurse)
        if stale(self.table, was_meta):
            self.reset_parameters()
        return self


# The keys each RoPE scaling reads (besides "type"); ModelConfig checks their values, the blocks only their presence.
ROPE_SCALING_NEEDS = {"linear": ("factor",), "dynamic": ("factor",),
                      "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                      "yarn": ("factor", "original_max_position_embeddings")}


def check_rope_scaling(scaling: dict | None) -> dict | None:
    """`scaling` with transformers' "rope_type" spelled "type", once its type is known and its keys are there: an
    unknown type gave plain RoPE, silently, and a missing key (or the "rope_type" spelling) a bare KeyError."""
    if scaling is None:
        return None
    where = f"RotaryEmbedding scaling={scaling!r}"
    if not isinstance(scaling, dict):
        raise ValueError(f"{where}: must be a dict such as {{'type': 'linear', 'factor': 2.0}}, or None")
    if "type" in scaling and "rope_type" in scaling and scaling["type"] != scaling["rope_type"]:
        raise ValueError(f"{where}: 'type' and 'rope_type' name different scalings; give one")
    scaling = {("type" if k == "rope_type" else k): v for k, v in scaling.items()}
    kind = scaling.get("type")
    if kind not in ROPE_SCALING_NEEDS:
        raise ValueError(f"{where}: 'type' must be one of {', '.join(map(repr, ROPE_SCALING_NEEDS))}")
    if missing := sorted(set(ROPE_SCALING_NEEDS[kind]) - set(scaling)):
        raise ValueError(f"{where}: {kind} scaling needs {', '.join(missing)}")
    return scaling


def _check_rope_head_dim(head_dim: int, scaling: dict | None) -> None:
    """An odd head_dim built tables one channel wider than the heads (a size error at the first forward); dynamic NTK
    at head_dim 2 divides by head_dim - 2."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RotaryEmbedding head_dim={head_dim}: must be even and >= 2 (it rotates channel pairs)")
    if scaling and scaling["type"] == "dynamic" and head_dim <= 2:
        raise ValueError(f"RotaryEmbedding head_dim={head_dim}: must be > 2 for dynamic scaling (its base grows by the "
                         "power head_dim / (head_dim - 2))")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with static scaling (linear, llama3, yarn) folded in."""
    scaling = check_rope_scaling(scaling)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv_freq
    kind, factor = scaling["type"], float(scaling["factor"])
    if kind == "yarn":
        return _yarn_inv_freq(head_dim, theta, scaling)
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq  # dynamic: depends on the sequence length, applied in RotaryEmbedding.forward


def _yarn_inv_freq(head_dim: int, theta: float, scaling: dict) -> torch.Tensor:
    """YaRN (arXiv 2309.00071) rates, operation for operation as transformers computes them (its float32 roundings
    too): the fast-rotating dims keep their rates, the slow ones are divided by `factor`, with a linear ramp between
    the dims that turn beta_fast and beta_slow times over the original context. A beta of 0 or None is its default
    there (32 and 1); a truncated ramp starts and ends on whole dims."""
    factor = scaling["factor"]
    old_len = scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def dim_of(rotations: float) -> float:  # the dim that turns `rotations` times over old_len positions
        return (head_dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the rate extrapolates (kept), 0: it interpolates (divided by factor)
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def rope_attention_factor(scaling: dict | None) -> float:
    """The factor YaRN multiplies cos and sin by (so q.k by its square): `attention_factor`, else the paper's
    0.1 ln(factor) + 1, or with both mscale and mscale_all_dim (DeepSeek) the ratio of that rule at each; 1 for the
    other scalings."""
    if not scaling or scaling["type"] != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]
    factor, mscale, mscale_all_dim = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")

    def rule(m: float = 1) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    return float(rule(mscale) / rule(mscale_all_dim)) if mscale and mscale_all_dim else rule()


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions. Half-split layout (rotate_half), the Hugging Face Llama convention,
    so Llama checkpoints load without permuting q/k weights."""

    def __init__(self, head_dim: int, *, theta: float = 10000.0, scaling: dict | None = None,
                 max_position: int = 2048) -> None:
        super().__init__()
        scaling = check_rope_scaling(scaling)
        _check_rope_head_dim(head_dim, scaling)
        self.head_dim, self.theta, self.scaling, self.max_position = head_dim, theta, scaling, max_position
        self.attention_factor = rope_attention_factor(scaling)
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    def reset_parameters(self) -> None:
        """The rates computed again where they lie (FSDP's per-module reset after to_empty calls this)."""
        self.inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling).to(self.inv_freq.device)

    def _apply(self, fn, recurse: bool = True) -> RotaryEmbedding:
        """model.to(torch.bfloat16) casts every floating buffer: rates with 8 bits of mantissa turn position 1000 up to
        half a radian the wrong way. They stay float32, as transformers keeps them, and follow the device only; to_empty
        from the meta device computes them again (see `stale`)."""
        was_meta = self.inv_freq.is_meta
        super()._apply(fn, recurse)
        if stale(self.inv_freq, was_meta):
            self.reset_parameters()
        return self

    def _dynamic_inv_freq(self, seq_len: torch.Tensor) -> torch.Tensor:
        """Dynamic NTK: each row's base grows once its sequence (seq_len (B, 1)) passes the trained length ->
        (B, head_dim/2). Per row, so a row's rates do not depend on the other rows of a batch (transformers takes
        the batch's longest); in tensor arithmetic without a branch on the value, so a compiled step traces it;
        the base in float64, as Python floats would compute it."""
        old_len = self.scaling.get("original_max_position_embeddings", self.max_position)
        factor = float(self.scaling["factor"])
        n = seq_len.to(torch.float64)
        base = self.theta * ((factor * n / old_len) - (factor - 1)) ** (self.head_dim / (self.head_dim - 2))
        exps = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=self.inv_freq.device).float()
        grown = 1.0 / torch.pow(base.float(), exps / self.head_dim)
        return torch.where(n > old_len, grown, self.inv_freq)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin of shape (B, 1, T, head_dim)."""
        inv_freq = self.inv_freq
        if self.scaling and self.scaling["type"] == "dynamic":
            inv_freq = self._dynamic_inv_freq(position_ids.amax(dim=-1, keepdim=True) + 1)[:, None, :]
        freqs = position_ids[..., None].float() * inv_freq.float()  # (B, T, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, head_dim)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:  # YaRN: in float32 before the cast, as transformers
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x rotated by the cos/sin tables, which broadcast against it (the last dim is head_dim): x * cos +
    rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) for the halves x1, x2 of the last dim."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, rotated, sin)  # one kernel fewer than x * cos + rotated * sin


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head ALiBi slopes (n_head,), including the interleaving for head counts that are not powers of 2."""
    if n_head < 1:  # it was log2's bare "math domain error"
        raise ValueError(f"alibi_slopes n_head={n_head}: must be an int >= 1")

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_2(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    extra = power_of_2(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(power_of_2(closest) + extra)
