"""LayerNorm and RMSNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2 and BERT have one, nanoGPT's bias=False variant does not)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        """As built (FSDP's per-module reset after to_empty calls this: the meta device holds no values)."""
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, as Llama does, so bf16 runs match the reference."""

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        """As built (see LayerNorm.reset_parameters)."""
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def build_norm(kind: str, dim: int, *, eps: float, bias: bool = True) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps, bias=bias)
    return RMSNorm(dim, eps=eps)
