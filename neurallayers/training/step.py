"""One optimizer step of a training session, and the NaN guard's verdict on a non-finite one. A part of
trainer._Fit."""

from __future__ import annotations

import contextlib
import math
import warnings

import torch

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import distributed as dist
from neurallayers.training import losses
from neurallayers.training.runtime import autocast, seed_device, step_seed


class StepMixin:
    """_Fit's step: the data of a step is the grad_accum micro-batches after the data position (s * grad_accum + i
    for step s of a run that kept its grad_accum), and its dropout seed (seed, s, rank)."""

    def _train_step(self) -> tuple[float, float, bool]:
        """One optimizer step over grad_accum micro-batches: (mean loss, grad norm, finite)."""
        cfg, info = self.cfg, self.info
        seed_device(self.device, step_seed(cfg.seed, self.step, info.rank))
        total = dist.all_reduce_mean(self._backward(self._micro_batches()), info)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        # foreach=None: torch's foreach kernels where the device has them (cpu, cuda), tensor by tensor elsewhere;
        # foreach=True raised at every step on MPS, which has none
        norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), max_norm, foreach=None)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        loss_v, norm_v = torch.stack([total.float(), norm.float()]).tolist()  # one device sync for both
        ok = math.isfinite(loss_v) and (self.scaler.is_enabled() or math.isfinite(norm_v))
        if ok:
            self.scaler.step(self.optimizer)  # with a scaler, overflowing grads skip the update by themselves
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._step_schedule()
        return loss_v, norm_v, ok

    def _micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This step's micro-batches of the global batch (every process draws them all), masked for an encoder: the
        next grad_accum after the data position, so a resume under another grad_accum trains on none twice."""
        micros = []
        for micro in range(self.cfg.grad_accum):
            index = self.data_position + micro
            x, y = self.windows.batch(index)
            if self.masker is not None:  # the global batch, so every world size masks alike
                x, y = self.masker(x, index)
            micros.append((x, y))
        return micros

    def _backward(self, micros: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Accumulates this process's gradients over its rows of `micros`; returns its share of the step's loss."""
        cfg, info = self.cfg, self.info
        b = cfg.batch_size
        total = torch.zeros((), device=self.device)
        # a masked LM's micro-batches predict different numbers of tokens: each token weighs the same in the step
        # (the step's mean over all of them), whatever the accumulation and process count, as transformers' Trainer
        # weighs them (num_items_in_batch); every process masks the whole batch, so knows the count. A decoder's
        # micro-batches all hold batch_size x block_size targets (windows, no padding): the mean of their means is
        # already the mean over every token of the step
        predicted = sum(int((y != -100).sum()) for _, y in micros) if self.masker is not None else 0
        for micro, (x, y) in enumerate(micros):
            x = x[info.rank * b:(info.rank + 1) * b].to(self.device, non_blocking=True)
            y = y[info.rank * b:(info.rank + 1) * b].to(self.device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            # DDP: only the last micro-batch all-reduces gradients.
            sync = self.wrapped.no_sync() if info.mode == "ddp" and not last else contextlib.nullcontext()
            # gradients are averaged over the processes: a process's share of the mean is world_size x its tokens'
            mine = int((y != -100).sum()) if predicted else 0
            share = cfg.grad_accum if not predicted else predicted / (max(mine, 1) * info.world_size)
            with sync, autocast(self.device, self.amp_dtype):
                loss = losses.model_loss(self.forward, x, y, masked=self.masker is not None)
            if predicted and not mine:  # a slice of only special tokens: the mean over none is NaN, which cost the
                loss = loss.nan_to_num(0.0)  # step; it weighs nothing (transformers' sum / num_items_in_batch)
            loss = loss / share
            self.scaler.scale(loss).backward()
            total += loss.detach()
        return total

    def _step_schedule(self) -> None:
        if self.stepped_schedule:
            self.scheduler.step()
        else:  # the session's first step, skipped (NaN guard, GradScaler): torch warns that the schedule loses its
            # first rate, which it does not here (the rate is a function of the step, positioned by _schedule). Only
            # once: a filter set every step would reset the registry that shows other warnings once
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
                self.scheduler.step()
            self.stepped_schedule = True

    def _nan_guard(self) -> tuple[bool, str]:
        """(stop?, the note to log) for the non-finite step just taken: it is skipped, or it stops the run (nan_policy
        stop, or max_consecutive_skips skipped in a row: a diverged run, whose every later step would be skipped)."""
        limit = self.cfg.max_consecutive_skips
        if self.cfg.nan_policy == "stop":
            return True, f"stopped at step {self.step}"
        if limit is None or self.skips_in_a_row < limit:
            return False, f"skipped step {self.step}"
        # skipped steps change no weight: every checkpoint from the last update on holds the weights they failed on
        last_update = self.step - self.skips_in_a_row
        good = ckpt.last_checkpoint_before(self.out, last_update)  # _keep_before kept it from pruning
        back = (f"the checkpoints from step {last_update} on hold the weights they failed on: resume with --resume "
                f"{good} and a lower train.lr" if good is not None else
                f"no checkpoint predates step {last_update}, whose weights they failed on: train afresh with a lower "
                "train.lr")
        return True, (f"stopped at step {self.step}: {self.skips_in_a_row} steps in a row had a non-finite loss or "
                      f"grad norm (train.max_consecutive_skips={limit}); {back}")

