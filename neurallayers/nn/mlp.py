"""Feed-forward blocks: a GELU MLP (GPT-2, BERT) and gated MLPs (SwiGLU for Llama, GeGLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """fc -> GELU -> proj. `gelu_approx` is "tanh" for GPT-2 and "none" (exact erf) for BERT."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True, gelu_approx: str = "tanh") -> None:
        super().__init__()
        if gelu_approx not in ("tanh", "none"):  # it failed at every forward, in torch's F.gelu
            raise ValueError(f"MLP gelu_approx={gelu_approx!r}: valid: 'tanh', 'none'")
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.gelu_approx = gelu_approx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.gelu_approx))


class GatedMLP(nn.Module):
    """act(x W_gate) * (x W_up) -> proj. Gate and up projections are one fused linear (one matmul, not two):
    rows [0, hidden) are the gate, rows [hidden, 2*hidden) the up projection."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False, activation: str = "silu") -> None:
        super().__init__()
        if activation not in ("silu", "gelu", "gelu_tanh"):
            raise ValueError(f"unknown gated activation {activation!r}; valid: silu, gelu, gelu_tanh")
        self.hidden = hidden
        self.fc = nn.Linear(dim, 2 * hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).split(self.hidden, dim=-1)
        if self.activation == "silu":
            gate = F.silu(gate)
        else:
            gate = F.gelu(gate, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.proj(gate * up)
