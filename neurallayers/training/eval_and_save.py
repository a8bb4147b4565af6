"""What a training session keeps as it goes: evaluations (the best weights, the early-stopping count), checkpoints
(the training state beside the weights, for an exact resume) and which of them pruning keeps. A part of trainer._Fit;
checkpoint.py writes and reads the files."""

from __future__ import annotations

import logging
import math

import torch

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import distributed as dist
from neurallayers.training import losses

log = logging.getLogger("neurallayers.training")


class CheckpointMixin:
    """_Fit's evaluations and checkpoints."""

    @torch.no_grad()
    def _evaluate(self, *, time_budget: bool = False) -> float:
        """Mean validation loss over eval_batches; updates best weights and the early-stopping counter.
        `time_budget`: the evaluation on the way out of a session that ran out of train.max_minutes, after its
        checkpoint; its row says so, and a resume undoes it (resume.truncate_metrics, restore._roll_back_plan)."""
        cfg = self.cfg
        self.wrapped.eval()
        val, _ = losses.mean_loss(self.wrapped, self.tokens.val, block_size=self.run_cfg.model.block_size,
                                  batch_size=cfg.batch_size, max_batches=cfg.eval_batches, device=self.device,
                                  amp_dtype=self.amp_dtype, masker=self.masker, info=self.info)
        self.wrapped.train()
        improved = math.isfinite(val) and (self.best_val is None or val < self.best_val)  # NaN is never the best
        # patience restarts only on an improvement of more than min_delta over the best before this evaluation, as
        # transformers' EarlyStoppingCallback compares (its threshold); the best weights follow any improvement
        progress = improved and (self.best_val is None or self.best_val - val > cfg.early_stopping_min_delta)
        self._log({"val_loss": val, "perplexity": losses.perplexity(val), "best": improved, "tokens": self.tokens_seen,
                   **({"time_budget": True} if time_budget else {})})
        if self.info.is_main:
            log.info("step %d: val loss %.4f  perplexity %s%s", self.step, val, losses.perplexity_text(val),
                     "  (best)" if improved else "")
        self.bad_evals = 0 if progress else self.bad_evals + 1
        if improved:
            self.best_val = val
            state = dist.model_state(self.wrapped, self.info)
            dist.on_rank_zero(lambda: ckpt.save_model(self.out, state), self.info)
        return val

    def _save(self, t0: float, *, going_on: bool) -> None:
        info = self.info
        model_sd = dist.model_state(self.wrapped, info)
        optim_sd = dist.optimizer_state(self.wrapped, self.optimizer, info)
        dist.on_rank_zero(lambda: self._write_checkpoint(t0, model_sd, optim_sd, going_on), info)  # every rank waits
        self.last_saved = self.step

    def _write_checkpoint(self, t0: float, model_sd: dict, optim_sd: dict, going_on: bool) -> None:
        """Rank 0's part of `_save`: the training state beside the weights, written atomically."""
        cfg, info = self.cfg, self.info
        state = {
            "step": self.step,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_loss": float("nan") if self.best_val is None else self.best_val,
            "bad_evals": self.bad_evals,
            "skips_in_a_row": self.skips_in_a_row,
            "elapsed": self._elapsed(t0),
            "rng": ckpt.rng_state(),
            "data_position": self.data_position,  # micro-batches consumed: a resume goes on from the next one
            "tokens_seen": self.tokens_seen,  # a resume under another batch size counts on from it
            "world_size": info.world_size,
            "global_batch": cfg.batch_size * info.world_size,
            "grad_accum": cfg.grad_accum,
            "eval_windows": self._eval_windows(),
            "seed": cfg.seed,  # chooses the batches, masks and a documents split's validation pieces
            "mask_prob": cfg.mask_prob,
            "early_stopped": self.early_stopped,
            "data_digest": self.data_digest,  # a resume on edited files says so
        }
        best = self.out / "model.safetensors" if self.best_val is not None else None
        ckpt.save_checkpoint(self.out, step=self.step, model_state=model_sd, state=state, keep_last=cfg.keep_last,
                             best=best if best is not None and best.is_file() else None,
                             keep_before=self._keep_before(going_on=going_on))

    def _keep_before(self, *, going_on: bool) -> int | None:
        """prune_checkpoints' keep_before: the step of the last update, or None. The newest checkpoint before it holds
        weights a finite step trained on; the newer ones hold the current weights, which no step has tried yet, or
        which a streak of skipped steps failed on (a divergence). So it is kept while the run goes on or is in such
        a streak: a diverged run has a checkpoint to go back to, whatever keep_last and save_interval are."""
        return self.step - self.skips_in_a_row if going_on or self.skips_in_a_row else None

    def _eval_windows(self) -> int:
        """How many validation windows an evaluation scores (a best val loss compares only with the same ones)."""
        from neurallayers.data.datasets import eval_window_count

        block = self.run_cfg.model.block_size
        if len(self.tokens.val) <= block:
            return 0
        return eval_window_count(len(self.tokens.val), block_size=block, max_batches=self.cfg.eval_batches,
                                 batch_size=self.cfg.batch_size * self.info.world_size)
