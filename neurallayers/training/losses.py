"""The losses training and evaluation report: a batch's loss, the mean validation loss, perplexity."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from neurallayers.training import distributed as dist
from neurallayers.training.runtime import autocast


def perplexity(loss: float) -> float:
    """exp(loss); inf where that overflows a float (a diverged run)."""
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < 709.0 else math.inf


def perplexity_text(loss: float) -> str:
    """The perplexity for a log line: 2 decimals, or 4 significant digits once it is large (e+ notation)."""
    value = perplexity(loss)
    return f"{value:.2f}" if value < 1e6 else f"{value:.4g}"


def model_loss(forward, x: torch.Tensor, y: torch.Tensor, *, masked: bool) -> torch.Tensor:
    """The model's mean loss: next-token targets for a decoder, masked-LM labels for an encoder (its head run only
    at the masked positions)."""
    return forward(x, labels=y, logits_at_labels=True).loss if masked else forward(x, targets=y).loss


def mean_loss(model: torch.nn.Module, tokens, *, block_size: int, batch_size: int, max_batches: int | None,
              device: torch.device, amp_dtype: torch.dtype | None = None, progress: bool = False,
              masker: object | None = None, info: dist.DistInfo | None = None) -> tuple[float, int]:
    """(mean loss, tokens scored) over evenly spaced windows of `tokens` (see data.eval_batches).

    The loss is the next-token loss, or with a `masker` (a `data.masking.Masker`, for an encoder) the masked-LM
    loss over the tokens it selects in each window, with the same masks at every call. Used by evaluation during
    training and by `neurallayers eval` (with `progress`: a bar over the batches). The caller puts the model in
    eval mode. Under DDP/FSDP (`info`), `batch_size` is each process's: the processes split the windows of batches
    of batch_size x world_size and sum their losses, so the result is a one-process run's with that batch size.
    """
    from neurallayers.data.datasets import eval_batches, eval_window_count
    from neurallayers.data.masking import EVAL

    rank, world = (info.rank, info.world_size) if info is not None and info.enabled else (0, 1)
    batch_size *= world
    total, count = 0.0, 0
    batches = eval_batches(tokens, block_size=block_size, batch_size=batch_size, max_batches=max_batches)
    if progress:
        windows = eval_window_count(len(tokens), block_size=block_size, batch_size=batch_size, max_batches=max_batches)
        batches = tqdm(batches, total=-(-windows // batch_size), unit="batch", desc="eval", dynamic_ncols=True)
    with torch.no_grad():
        for i, (x, y) in enumerate(batches):
            if masker is not None:
                x, y = masker(x, i, stream=EVAL)  # on the whole batch: the masks of one process
            rows = slice(rank, None, world)
            scored = 1.0 if len(x[rows]) else 0.0  # a process left without rows still joins FSDP's gathers
            x, y = (x[rows], y[rows]) if scored else (x[:1], y[:1])
            with autocast(device, amp_dtype):
                loss = model_loss(model, x.to(device), y.to(device), masked=masker is not None)
            n = int((y != -100).sum()) if masker is not None else y.numel()
            if n:  # a masked batch may select no token: its loss is NaN
                total += float(loss) * n * scored
                count += int(n * scored)
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1), count
