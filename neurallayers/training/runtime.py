"""Device, precision, optimizer and seeding choices of `fit()`, each a small function of the TrainConfig."""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import torch
from torch import nn

from neurallayers.nn.cpu import cpu_has_fast_bf16, warn_if_slow_bf16
from neurallayers.training.config import TrainConfig


def resolve_device(name: str | torch.device, *, local_rank: int = 0, what: str = "TrainConfig.device") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; an explicit device ("cpu", "cuda", "cuda:1", "mps") that is not there is
    an error naming `what`. A bare "cuda" is this process's GPU (`local_rank` under torchrun)."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what}={name!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
        if device.index is None:
            return torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}={name!r} but MPS is not available; use 'auto' or 'cpu'")
    return device


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether to use a GradScaler).

    auto: bf16 on CUDA with bf16 support, fp16 + GradScaler on older CUDA, bf16 on a CPU with fast bf16, else fp32.
    """
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif kind == "cpu":
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            precision = "fp32"
    if precision == "fp32":
        return None, False
    if precision == "fp16":
        if kind != "cuda":
            raise ValueError(f"TrainConfig.precision='fp16' needs CUDA (device is {kind}); use 'bf16' or 'fp32'")
        return torch.float16, True
    warn_if_slow_bf16(torch.bfloat16, device, what="TrainConfig.precision='bf16'",
                      advice="training will be slow; use 'auto' or 'fp32'")
    return torch.bfloat16, False


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """nanoGPT's split: weight decay on >= 2-D tensors (matmul weights, embeddings), none on biases and norms."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[torch.optim.AdamW, str]:
    """AdamW over `param_groups`; (optimizer, implementation used).

    "auto" takes the fused kernel where torch has one for the device (cpu, cuda, mps) and falls back to foreach.
    """
    groups = param_groups(model, cfg.weight_decay)
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    impl = cfg.optimizer_impl
    if impl in ("auto", "fused"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw), "fused"
        except (RuntimeError, ValueError, TypeError) as e:
            if impl == "fused":
                raise ValueError(f"TrainConfig.optimizer_impl='fused' is not supported on {device.type}: {e}") from e
        impl = "foreach"
    return torch.optim.AdamW(groups, foreach=impl == "foreach", **kw), impl


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_device(device: torch.device, seed: int) -> None:
    """Seeds the generators a training step on `device` draws from (dropout): the CPU one, and the device's own.
    `torch.manual_seed` does the same for every backend torch knows and costs 100 us a call; this costs 2 us."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A torch seed for one optimizer step on one rank: dropout then depends only on (seed, step, rank), so a
    resumed run draws the same masks as an uninterrupted one whatever happened before."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
