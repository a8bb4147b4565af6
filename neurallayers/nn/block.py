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
    """Stochastic depth (torchvision's stochastic_depth, mode "row"): drop a whole residual branch per sample, rescale
    the survivors by 1 / (1 - p). At p=1 every branch is dropped (zeros: there is no survivor to rescale)."""
    _check_rate("drop_path p", p)
    if p == 0.0 or not training:
        return x
    survival = 1.0 - p
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(survival)
    if survival > 0.0:  # 0 / 0 made NaN of a dropped branch, then of the whole model
        keep.div_(survival)
    return x * keep


def _check_rate(name: str, p: float) -> None:
    """A probability out of [0, 1] (or NaN) failed at the first training step with torch's message naming no field."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r}: must be a probability in [0, 1]")


class Block(nn.Module):
    """pre-norm:  x + attn(norm1(x)), then + mlp(norm2(x))   (GPT-2, Llama)
    post-norm: norm1(x + attn(x)), then norm2(x + mlp(x))    (BERT)"""

    def __init__(self, *, attn: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module, dim: int,
                 prenorm: bool = True, dropout: float = 0.0, drop_path: float = 0.0,
                 layer_scale: float | None = None) -> None:
        super().__init__()
        _check_rate("Block dropout", dropout)
        _check_rate("Block drop_path", drop_path)
        self.attn, self.mlp, self.norm1, self.norm2 = attn, mlp, norm1, norm2
        self.prenorm = prenorm
        self.drop = nn.Dropout(dropout)
        self.drop_path = drop_path
        # None is off; 0.0 is a scale that starts at zero (it was read as off too)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

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
