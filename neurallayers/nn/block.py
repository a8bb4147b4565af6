"""One transformer layer, composed from the modules it is given (attention, MLP, norms)."""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel learned scale on a residual branch (CaiT), starting small so deep stacks train stably."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.init = init
        # float(): an int (`layer_scale: 1` in YAML) made an int64 tensor, which no Parameter with a gradient can be
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def reset_parameters(self) -> None:
        """As built (FSDP's per-module reset after to_empty calls this: the meta device holds no values)."""
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a whole residual branch per sample, rescale the survivors."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """pre-norm:  x + attn(norm1(x)), then + mlp(norm2(x))   (GPT-2, Llama)
    post-norm: norm1(x + attn(x)), then norm2(x + mlp(x))    (BERT)"""

    def __init__(self, *, attn: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module, dim: int,
                 prenorm: bool = True, dropout: float = 0.0, drop_path: float = 0.0,
                 layer_scale: float | None = None) -> None:
        super().__init__()
        self.attn, self.mlp, self.norm1, self.norm2 = attn, mlp, norm1, norm2
        self.prenorm = prenorm
        self.drop = nn.Dropout(dropout)
        self.drop_path = drop_path
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def _branch(self, y: torch.Tensor, scale: nn.Module) -> torch.Tensor:
        return drop_path(scale(self.drop(y)), self.drop_path, self.training)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, dim); attn_kwargs go to the attention module (rope, mask, cache, ...)."""
        if self.prenorm:
            a, weights = self.attn(self.norm1(x), **attn_kwargs)
            x = x + self._branch(a, self.ls1)
            x = x + self._branch(self.mlp(self.norm2(x)), self.ls2)
        else:
            a, weights = self.attn(x, **attn_kwargs)
            x = self.norm1(x + self._branch(a, self.ls1))
            x = self.norm2(x + self._branch(self.mlp(x), self.ls2))
        return x, weights
