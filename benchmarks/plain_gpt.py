"""A plain-PyTorch GPT and training loop in the manner of nanoGPT's `train.py` (its model: no biases, exact GELU,
tied embeddings, residual projections initialised at 0.02 / sqrt(2 * n_layer); its loop: random windows, AdamW with
weight decay on matrices only, clipping, warmup + cosine learning rate, fp32 on CPU). `benchmarks/train.py` runs it
next to `fit()` as an in-process baseline: on a shared machine only a comparison taken at the same time is fair.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Shape:
    vocab: int = 65
    block: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    batch: int = 12


class Block(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.n_head = s.n_head
        self.ln1, self.ln2 = nn.LayerNorm(s.n_embd, bias=False), nn.LayerNorm(s.n_embd, bias=False)
        self.qkv = nn.Linear(s.n_embd, 3 * s.n_embd, bias=False)
        self.attn_proj = nn.Linear(s.n_embd, s.n_embd, bias=False)
        self.fc = nn.Linear(s.n_embd, 4 * s.n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * s.n_embd, s.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x))))


class PlainGPT(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(s.vocab, s.n_embd), nn.Embedding(s.block, s.n_embd)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layer))
        self.ln_f = nn.LayerNorm(s.n_embd, bias=False)
        self.head = nn.Linear(s.n_embd, s.vocab, bias=False)
        self.wte.weight = self.head.weight
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                std = 0.02 / math.sqrt(2 * s.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


class PlainTrainer:
    """nanoGPT's recipe on (train, val) id tensors; `step()` does one iteration, `evaluate()` its loss estimate."""

    def __init__(
        self,
        train: torch.Tensor,
        val: torch.Tensor,
        *,
        shape: Shape | None = None,
        max_iters: int = 2000,
        seed: int = 1337,
    ) -> None:
        torch.manual_seed(seed)
        self.shape = shape = shape or Shape()
        self.train_ids, self.val_ids, self.max_iters = train, val, max_iters
        self.model = PlainGPT(shape)
        params = list(self.model.parameters())
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))
        self.it = 0

    def batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.shape
        ix = torch.randint(len(ids) - s.block, (s.batch,))
        return torch.stack([ids[i : i + s.block] for i in ix]), torch.stack([ids[i + 1 : i + 1 + s.block] for i in ix])

    def lr(self, it: int, warmup: int = 100, lr: float = 1e-3, min_lr: float = 1e-4) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = min((it - warmup) / (self.max_iters - warmup), 1.0)
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)

    def step(self) -> float:
        """One iteration; returns its wall time in seconds."""
        t0 = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = self.lr(self.it)
        self.model(*self.batch(self.train_ids)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return time.perf_counter() - t0

    @torch.no_grad()
    def evaluate(self, iters: int = 200) -> float:
        self.model.eval()
        loss = sum(self.model(*self.batch(self.val_ids)).item() for _ in range(iters)) / iters
        self.model.train()
        return loss


def char_split(text: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """nanoGPT's `shakespeare_char` data: sorted characters as ids, the first 90% train, the rest val."""
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:], len(stoi)
