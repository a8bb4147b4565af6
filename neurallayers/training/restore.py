"""A resume puts the checkpoint's training state back: optimizer (under the current config's settings), GradScaler,
step, best val loss and early-stopping count, RNG. It says what will differ from an uninterrupted run, and plans the
setting aside of a newer history when it goes on from an older checkpoint. A part of trainer._Fit."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path

import numpy as np

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import distributed as dist
from neurallayers.training.resume import after_checkpoint
from neurallayers.weights import CheckpointError

log = logging.getLogger("neurallayers.training")


class RestoreMixin:
    """_Fit's resume from a checkpoint; `_restore` runs once the model and optimizer are built."""

    def _restore(self, model_sd: dict, state: dict, target: Path) -> None:
        self._restore_optimizer(model_sd, state, target)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.data_position = int(state["data_position"])
        self._restore_best(state)
        self.elapsed_before = float(state["elapsed"])
        try:
            ckpt.set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{target / 'state.pt'}: its random-number generator states do not load "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        log.info("resumed from step %d", self.step)
        self._roll_back_plan()
        self._check_batches(state)
        self._say_what_is_left(state)

    def _restore_optimizer(self, model_sd: dict, state: dict, target: Path) -> None:
        """The weights and the optimizer state, under the current config's AdamW settings."""
        # the current config's AdamW settings (a resume may change them, as it may the lr): loading the checkpoint's
        # optimizer state brings back its own, which the run would then go on with silently
        settings = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                    for g in self.optimizer.param_groups]
        try:  # the weights fit (checked): a failure here is the optimizer state's
            dist.load_states(self.wrapped, self.optimizer, model_sd, state["optimizer"], self.info)
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{target}: its optimizer state does not fit this model's trainable parameters ({e}). A masked-LM "
                "checkpoint written before BERT's pooler was frozen in masked-LM training (an older NeuralLayers) is "
                "one such; to go on from its weights with a fresh optimizer: train --init-from <that run> "
                "--out <a new run>") from None
        changed = {}
        for group, now in zip(self.optimizer.param_groups, settings, strict=True):
            for key in ("weight_decay", "betas", "eps"):
                old = group.get(key)
                old = tuple(old) if isinstance(old, list) else old  # FSDP's loader gives betas as a list
                if key in now and old != now[key]:
                    changed.setdefault(key, (old, now[key]))
            group.update(now)
        if changed and self.info.is_main:
            log.info("the optimizer goes on with this config's %s", ", ".join(
                f"{k} {tuple(new) if isinstance(new, list) else new} (the checkpoint's: "
                f"{tuple(old) if isinstance(old, list) else old})" for k, (old, new) in changed.items()))

    def _restore_best(self, state: dict) -> None:
        """The best val loss, early-stopping count and NaN streak; the best starts over where a val loss measured
        before the checkpoint does not compare with this run's (other data, windows, seed or masks)."""
        best = float(state["best_val_loss"])
        self.best_val = None if math.isnan(best) else best
        self.bad_evals = int(state["bad_evals"])
        self.skips_in_a_row = int(state.get("skips_in_a_row", 0))  # checkpoints from before it was recorded: none
        saved_digest = state.get("data_digest")  # checkpoints from before it was recorded: unknown
        if not self.data_changed and saved_digest not in (None, self.data_digest):
            # the same data settings, other tokens: a corpus file edited or replaced in place
            log.warning("the tokens of %s differ from the checkpoint's (a file edited since?): training continues "
                        "on them, and the losses differ from an uninterrupted run", self.run_cfg.data.source)
            self.data_changed = True
        if self.data_changed and self.best_val is not None:  # a val loss on other data does not compare
            log.warning("the best val loss so far (%.4f) was measured on the saved run's data: the best weights and "
                        "early stopping start over on the new data", self.best_val)
            self.best_val, self.bad_evals = None, 0
        saved_windows = state.get("eval_windows")  # evaluation scores batch_size x processes x eval_batches windows
        if saved_windows is not None and int(saved_windows) != self._eval_windows() and self.best_val is not None:
            log.warning("the best val loss so far (%.4f) was measured on %d validation windows and this run's "
                        "evaluations score %d (train.batch_size, eval_batches or the process count changed): the best "
                        "weights and early stopping start over", self.best_val, int(saved_windows),
                        self._eval_windows())
            self.best_val, self.bad_evals = None, 0
        masked = self._eval_mask_batches(state)
        if masked is not None and self.best_val is not None:
            log.warning("the best val loss so far (%.4f) was measured with validation masks drawn for batches of %d "
                        "windows, and this run's evaluations draw them for batches of %d (train.batch_size or the "
                        "process count changed): the best weights and early stopping start over", self.best_val,
                        *masked)
            self.best_val, self.bad_evals = None, 0
        self._check_seed(state)

    def _eval_mask_batches(self, state: dict) -> tuple[int, int] | None:
        """(the checkpoint's, this run's) evaluation batch of an encoder where they mask the validation windows
        differently, else None. A Masker draws a batch's masks by its index and shape, and evaluation batches are
        batch_size x processes windows: the same windows in batches of another size get other masks."""
        if self.run_cfg.model.causal:
            return None
        windows = self._eval_windows()
        batches = (int(state["global_batch"]), self.cfg.batch_size * self.info.world_size)
        before, now = (min(n, windows) for n in batches)
        return (before, now) if before != now else None

    def _check_batches(self, state: dict) -> None:
        """Says where this run's batches or dropout masks differ from the checkpoint's run's."""
        saved_world = int(state.get("world_size", self.info.world_size))
        # the data order follows the batch of all processes and the accumulation: the same, the same windows
        before = (int(state["global_batch"]), int(state["grad_accum"]))
        now = (self.cfg.batch_size * self.info.world_size, self.cfg.grad_accum)
        if before != now:
            log.warning("the checkpoint's run took batches of %d sequences (all processes) x %d accumulation steps and "
                        "this run takes %d x %d: the data order and the losses differ from an uninterrupted run",
                        *before, *now)
        elif saved_world != self.info.world_size and self._has_dropout():
            # each process seeds its own dropout masks (step_seed): other processes, other masks
            log.warning("the checkpoint was written by %d processes and this run has %d: the batches are the same %d "
                        "sequences, but dropout draws other masks, so the losses differ from an uninterrupted run",
                        saved_world, self.info.world_size, now[0])
        elif saved_world != self.info.world_size:
            log.info("the checkpoint was written by %d processes and this run has %d, with the same batches of %d "
                     "sequences", saved_world, self.info.world_size, now[0])

    def _say_what_is_left(self, state: dict) -> None:
        """A run at max_steps has nothing to train; one stopped early (or about to) trains to its next evaluation."""
        if self.step >= self.cfg.max_steps:
            log.info("the run has trained %d steps, max_steps=%d: nothing to train (raise max_steps to train on: "
                     "--train.max_steps N, or demo's --max-steps N)", self.step, self.cfg.max_steps)
        elif self.cfg.early_stopping_patience and self.bad_evals >= self.cfg.early_stopping_patience:
            # a run that reached max_steps or its time budget with as many bad evaluations did not stop early
            if state.get("early_stopped", True):  # checkpoints from before it was recorded: as they said
                log.info("the run stopped early (%d evaluations without a better val loss): training on to the next "
                         "evaluation, which stops it again unless the val loss improves", self.bad_evals)
            else:
                log.info("the run's last %d evaluations found no better val loss (early_stopping_patience=%d): the "
                         "next evaluation stops it unless the val loss improves", self.bad_evals,
                         self.cfg.early_stopping_patience)

    def _check_seed(self, state: dict) -> None:
        """A resume under another train.seed (or an encoder's under another mask_prob) draws other batches, and
        the seed also chooses a documents split's validation pieces and an encoder's validation masks: a val loss
        measured before then does not compare, and documents validated on may have been trained on since."""
        encoder = not self.run_cfg.model.causal
        keys = ("seed", "mask_prob") if encoder else ("seed",)
        changed = {k: state[k] for k in keys if state[k] != getattr(self.cfg, k)}
        if not changed:
            return
        what = ", ".join(f"train.{k} {old} -> {getattr(self.cfg, k)}" for k, old in changed.items())
        log.warning("%s since the checkpoint: the batches%s differ from an uninterrupted run's", what,
                    " and their masks" if encoder else "")
        val_differs = encoder or ("seed" in changed and self.run_cfg.data.split == "documents")
        if val_differs and self.best_val is not None:
            log.warning("the best val loss so far (%.4f) was measured on the validation %s of the checkpoint's %s: "
                        "the best weights and early stopping start over", self.best_val,
                        "masks" if encoder else "documents", "settings" if encoder else "seed")
            self.best_val, self.bad_evals = None, 0

    def _roll_back_plan(self) -> None:
        """A resume from a checkpoint older than the run's newest (after a loss spike, say) starts another history
        from it: the newer checkpoints, and model.safetensors if the newer history wrote it, belong to the old one.
        So does a model.safetensors that a session stopped (killed) after its last checkpoint wrote. Decided here on
        every rank (they must agree on the best val loss); rank 0 moves the files (_claim_run_dir)."""
        from neurallayers.training.loggers import read_metrics

        self.newer_checkpoints = [p for p in ckpt.list_checkpoints(self.out) if ckpt.checkpoint_step(p) > self.step]
        self.weights_from = None  # the checkpoint whose weights become model.safetensors, when it is replaced
        self.weights_name = "model.safetensors"  # which of its files: its own weights, or the run's best then
        self.weights_are_later = False
        if not (self.out / "model.safetensors").is_file():
            return
        rows = [r for r in read_metrics(self.out / "metrics.jsonl") if r.get("best")]
        bests = [int(r["step"]) for r in rows if not after_checkpoint(r, self.step)]
        # a session killed after a better evaluation and before its next checkpoint left that evaluation's weights,
        # which no checkpoint leads to: they are later too, as are those of a time budget's evaluation after this one
        later = len(bests) < len(rows)
        if not self.newer_checkpoints and not later:
            return
        target = self.out / "checkpoints" / f"step-{self.step}"
        if not rows:  # no evaluations: model.safetensors is the newer history's final weights; now this step's
            self.weights_are_later, self.weights_from = True, target
            return
        if not later:
            return
        self.weights_are_later = True
        if self.best_val is not None and (target / ckpt.BEST).is_file():  # the best weights as of this step
            self.weights_from, self.weights_name = target, ckpt.BEST
            return
        source = self.out / "checkpoints" / f"step-{bests[-1]}" if bests else None
        if source is not None and source in ckpt.list_checkpoints(self.out):
            self.weights_from = source
            return
        self.weights_from = target  # the best weights of this history are gone: this step's stand in for them
        if self.best_val is not None:
            log.warning("the best weights of this history (val loss %.4f, step %s) are no longer kept: "
                        "model.safetensors becomes step %d's weights, and the best weights and early stopping start "
                        "over", self.best_val, bests[-1] if bests else "?", self.step)
            self.best_val, self.bad_evals = None, 0

    def _roll_back_files(self) -> None:
        """Carries out _roll_back_plan in an order that a kill at any point leaves for the same command to finish: the
        newer history's weights are linked aside and replaced atomically before its checkpoints move aside (moved
        first, a kill left the run without model.safetensors), and metrics.jsonl loses its later rows only after."""
        later = bool(self.newer_checkpoints) and self.weights_are_later
        if later:
            ckpt.set_aside(self.out, [self.out / "model.safetensors"], link=True)
        if self.weights_from is not None:
            ckpt.copy_model(self.weights_from, self.out, name=self.weights_name)
        if self.newer_checkpoints:
            folder = ckpt.set_aside(self.out, self.newer_checkpoints)
            log.warning("resumed from step %d, before the run's newest checkpoint (%s): the newer checkpoints%s moved "
                        "to %s, so that a later --resume goes on from here", self.step, self.newer_checkpoints[-1].name,
                        " and the weights they led to (model.safetensors)" if later else "", folder)
        elif self.weights_are_later:  # a stopped session's: not set aside, or every kill would leave a model's size
            log.info("model.safetensors held weights evaluated after step %d's checkpoint, which the run goes on "
                     "without: it becomes %s's %s again", self.step, self.weights_from.name,
                     "best weights" if self.weights_name == ckpt.BEST else "weights")

    def _has_dropout(self) -> bool:
        model = self.run_cfg.model
        return max(model.dropout, model.attn_dropout, model.drop_path) > 0

    @functools.cached_property
    def data_digest(self) -> str:
        """A hash of the token counts and an evenly spaced sample of the train and val tokens (a bounded read
        however large the corpus): an insertion shifts every later sample, so an edited file changes it."""
        from neurallayers.training.prepare import token_sample

        h = hashlib.sha256()
        for split in (self.tokens.train, self.tokens.val):
            h.update(f"{len(split)} {split.dtype.str}\0".encode())
            h.update(np.ascontiguousarray(token_sample(split)).tobytes())
        return h.hexdigest()[:16]

