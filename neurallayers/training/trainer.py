"""`fit()`: train a model from a RunConfig into a run directory, resumable loss for loss.

Decisions worth knowing:
- The data position is the step count: micro-batch i of step s is `RandomWindows.batch(s * grad_accum + i)`,
  drawn for all ranks at once and sliced per rank, so ranks see disjoint parts of one global batch.
- Dropout is reseeded from (seed, step, rank) at the start of every step: a resumed run draws the same masks.
- An encoder config trains as a masked LM (BERT's objective): micro-batch i of step s is masked by
  `Masker(..., seed)(windows, s * grad_accum + i)` before it is sliced per rank, so its masks too depend only on
  the step; validation masks are fixed (the EVAL stream), so evaluations compare.
- NaN/Inf guard: a non-finite loss (or grad norm, when no GradScaler is in use) either skips the step (grads
  zeroed, no optimizer update; the step counter, data position and learning-rate schedule still advance, so a
  skipped step is not retried on the same bad batch) or stops the run, per `nan_policy`; both are logged. Skipping
  stops too after `max_consecutive_skips` steps in a row (a diverged run would skip every step to max_steps). As
  skipped steps change no weight, every checkpoint from the last update on holds the weights the streak failed on:
  pruning keeps the newest from before it beyond keep_last (_keep_before), and the stop names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import os
import statistics
import time
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from neurallayers.config import ModelConfig
from neurallayers.files import exclusive, file_in_the_way, write_text_atomic
from neurallayers.training import checkpoint as ckpt
from neurallayers.training import distributed as dist
from neurallayers.training.config import RunConfig
from neurallayers.training.runtime import (
    autocast,
    build_optimizer,
    resolve_device,
    resolve_precision,
    seed_all,
    seed_device,
    step_seed,
)
from neurallayers.training.signals import StopRequest
from neurallayers.weights import CheckpointError, check_state_dict

log = logging.getLogger("neurallayers.training")
LOCK = ".train.lock"  # held by rank 0 while a session writes the run directory


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # optimizer steps done in total (resumed runs included)
    best_val_loss: float | None
    final_val_loss: float | None
    tokens_per_second: float  # training throughput of this process's session, all ranks together
    wall_seconds: float
    median_step_seconds: float  # median wall time of one optimizer step this session (robust on a busy machine)
    first_step_seconds: float  # the session's first step: warm-up, and torch.compile's compilation when on
    stopped_reason: str  # max_steps | until_step | early_stopping | time_budget | nan | interrupted | terminated


def fit(run: RunConfig, out_dir: str | os.PathLike, *, resume: bool | str | os.PathLike = False,
        loggers: list | None = None, progress: bool = True, until_step: int | None = None) -> TrainResult:
    """Trains `run.model` on `run.data` with `run.train` and writes the run directory `out_dir`.

    A decoder learns the next token; an encoder (causal=False, head "none" or "mlm") is pretrained as a masked LM
    (BERT's masking of `train.mask_prob` of the tokens; see data.masking and training.prepare).

    Args:
        run: the whole configuration. model.vocab_size is replaced by the tokenizer's.
        out_dir: the run directory (config.yaml, tokenizer.json, model.safetensors, checkpoints/, metrics.jsonl,
            samples.txt, loss.png).
        resume: True continues from the newest complete checkpoint in out_dir; a path names a checkpoint folder
            (`.../checkpoints/step-N`). The saved config's model must equal `run.model`.
        loggers: tracker names ("tensorboard", "mlflow", "wandb") or logger objects with log()/close();
            None takes `run.train.loggers`. metrics.jsonl is always written.
        progress: show a tqdm bar (rank 0 only).
        until_step: stop after this many steps as if interrupted (checkpoint saved, no final evaluation); the
            schedule still runs to max_steps, so a later resume continues exactly.

    Ctrl-C and SIGTERM (in the main thread, where their handlers are Python's defaults) end the loop after the
    step in flight: its checkpoint is saved and the result says `interrupted` / `terminated`. A second Ctrl-C
    raises KeyboardInterrupt at once, saving nothing.

    Raises:
        ValueError / FileNotFoundError / CheckpointError: bad config or resume target, before the first step.
        KeyboardInterrupt: a second Ctrl-C.
    """
    if until_step is not None and until_step < 1:
        raise ValueError(f"until_step={until_step} must be >= 1 or None")
    if not run.model.causal and run.model.head not in ("none", "mlm"):
        raise ValueError(f"ModelConfig.head={run.model.head!r}: training an encoder pretrains it as a masked LM, "
                         "with head 'mlm' (or 'none', which trains one); a classification head needs labelled data")
    cfg = run.train
    info = dist.init_distributed(cfg.distributed, resolve_device(cfg.device).type)
    try:
        with contextlib.ExitStack() as run_lock:  # rank 0 holds the run directory's lock from its first write on
            result = _Fit(run, Path(out_dir), info, resume=resume, loggers=loggers, progress=progress,
                          until_step=until_step, run_lock=run_lock).run()
        dist.finish(info)
        return result
    finally:
        dist.cleanup(info)


class _Fit:
    """One training session; state lives here so the loop in `run` reads top to bottom."""

    def __init__(self, run: RunConfig, out: Path, info: dist.DistInfo, *, resume: bool | str | os.PathLike,
                 loggers: list | None, progress: bool, until_step: int | None,
                 run_lock: contextlib.ExitStack) -> None:
        from neurallayers.data import RandomWindows, Tokenizer
        from neurallayers.models import build_model
        from neurallayers.models.encoder import drop_unused_pooler
        from neurallayers.training.prepare import model_changes, prepare_data

        self.info, self.out, self.progress, self.until_step = info, out, progress, until_step
        self.run_lock = run_lock
        from neurallayers.data.corpora import absolute_spec

        # config.yaml names the corpus by an absolute path: eval and --resume find it from any directory
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, source=absolute_spec(run.data.source)))
        if info.enabled and ":" in run.train.device:  # one GPU named for every process
            raise ValueError(f"TrainConfig.device={run.train.device!r} under torchrun: use 'cuda', which gives each "
                             "process its LOCAL_RANK's GPU (CUDA_VISIBLE_DEVICES picks which GPUs)")
        self.device = resolve_device(run.train.device, local_rank=info.local_rank)
        self.amp_dtype, use_scaler = resolve_precision(run.train.precision, self.device)
        target = _resume_target(out, resume)
        self.checkpoints = ckpt.checkpoint_identities(out)  # as read here: _open_loggers checks them under the lock
        saved = _saved_config(out) if target is not None else None
        if saved is not None:
            run = _as_saved(saved, run)
        # A fresh start from pretrained weights takes the source's tokenizer; a resume, the run's own.
        source = _init_source(run) if target is None and run.train.init_from else None
        tokenizer = Tokenizer.load(out) if target is not None else source.tokenizer if source else None
        pretrained = bool(run.train.init_from)
        if saved is not None:  # before the corpus is read and tokenized (minutes for a large one)
            _check_same_model(out, saved, run.model.replace(**model_changes(run, tokenizer, pretrained=pretrained)))
        # Data: rank 0 builds tokenizer and token cache first; the others then find them cached (or raise its error).
        prepared = dist.on_rank_zero(lambda: prepare_data(run, tokenizer=tokenizer, show_progress=progress,
                                                          pretrained=pretrained), info)
        if info.is_main:
            tokenizer, self.tokens, run = prepared
        else:
            tokenizer, self.tokens, run = prepare_data(run, tokenizer=tokenizer, show_progress=False,
                                                       pretrained=pretrained)
        self.run_cfg, self.cfg, self.tokenizer = run, run.train, tokenizer
        cfg = self.cfg
        model_sd = state = None
        self.data_changed = False
        if target is not None:
            model_sd, state, run, self.data_changed = _check_resume(out, target, run, saved)
            self.run_cfg = run
        seed_all(cfg.seed)
        self.model = build_model(run.model)
        if not hasattr(self.model, "gradient_checkpointing"):
            raise ValueError(f"{type(self.model).__name__} does not support TrainConfig.gradient_checkpointing")
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        if model_sd is not None:  # a masked-LM checkpoint from before the pooler left: its frozen pooler dropped
            model_sd = drop_unused_pooler(run.model, model_sd, source=str(target / "model.safetensors"))
            check_state_dict(self.model, model_sd, source=str(target / "model.safetensors"))
        if source is not None:
            source.load_into(self.model)
            log.info("initialised from %s (%s parameters)", run.train.init_from,  # as the user named it
                     f"{sum(p.numel() for p in self.model.parameters()):,}")
        self.model.to(self.device)
        self.wrapped = dist.wrap_model(self.model, info, self.device)
        self.optimizer, self.optimizer_impl = build_optimizer(self.wrapped, cfg, self.device)
        for group in self.optimizer.param_groups:  # the key the scheduler adds: FSDP's loader wants saved groups'
            group["initial_lr"] = cfg.lr             # keys to match
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.step, self.best_val, self.bad_evals, self.elapsed_before = 0, None, 0, 0.0
        self.skips_in_a_row = 0  # the NaN guard's streak (max_consecutive_skips): training state, kept by checkpoints
        self.early_stopped = False  # the session ended by early stopping (its last checkpoint says so)
        if state is not None:
            self._restore(model_sd, state, target)
        self.scheduler = self._schedule(None if state is None else state["scheduler"])
        self.stepped_schedule = False  # by this session (_train_step)
        # a masked LM's head runs at the masked positions, whose count changes every step: torch compiled a graph for
        # the session's first count, then one for any count, and a step ran one or the other by where its session
        # started (a resume logged other losses). Dynamic sizes from the first call: the same graph in every session
        dynamic = True if not run.model.causal else None
        self.forward = torch.compile(self.wrapped, dynamic=dynamic) if cfg.compile else self.wrapped
        global_batch = cfg.batch_size * info.world_size
        self.windows = RandomWindows(self.tokens.train, block_size=run.model.block_size, batch_size=global_batch,
                                     seed=cfg.seed)
        self.tokens_per_step = global_batch * cfg.grad_accum * run.model.block_size
        self.masker = None
        if not run.model.causal:
            from neurallayers.data.masking import Masker

            self.masker = Masker.for_tokenizer(tokenizer, prob=cfg.mask_prob, seed=cfg.seed)
        self.has_val = len(self.tokens.val) > run.model.block_size
        if not self.has_val:
            log.warning("the validation split has %d tokens (val_fraction=%s), fewer than one window of block_size + 1 "
                        "= %d: no evaluation; model.safetensors = final weights", len(self.tokens.val),
                        run.data.val_fraction, run.model.block_size + 1)
        dist.barrier(info)  # every rank has read the run's files (_restore) before rank 0 changes them
        self.loggers = dist.on_rank_zero(lambda: self._open_loggers(loggers), info) or []
        self.last_saved = self.step if state is not None else -1

    # ----- setup helpers -----
    def _restore(self, model_sd: dict, state: dict, target: Path) -> None:
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
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
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
        self._check_seed(state)
        self.elapsed_before = float(state["elapsed"])
        try:
            ckpt.set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{target / 'state.pt'}: its random-number generator states do not load "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        log.info("resumed from step %d", self.step)
        self._roll_back_plan()
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
        every rank (they must agree on the best val loss); rank 0 moves the files (_open_loggers)."""
        from neurallayers.training.loggers import read_metrics

        self.newer_checkpoints = [p for p in ckpt.list_checkpoints(self.out) if ckpt.checkpoint_step(p) > self.step]
        self.weights_from = None  # the checkpoint whose weights become model.safetensors, when it is replaced
        self.weights_name = "model.safetensors"  # which of its files: its own weights, or the run's best then
        self.weights_are_later = False
        if not (self.out / "model.safetensors").is_file():
            return
        bests = [int(r["step"]) for r in read_metrics(self.out / "metrics.jsonl") if r.get("best")]
        # a session killed after a better evaluation and before its next checkpoint left that evaluation's weights,
        # which no checkpoint leads to: they are later too
        if not self.newer_checkpoints and not (bests and bests[-1] > self.step):
            return
        target = self.out / "checkpoints" / f"step-{self.step}"
        if not bests:  # no evaluations: model.safetensors is the newer history's final weights; now this step's
            self.weights_are_later, self.weights_from = True, target
            return
        if bests[-1] <= self.step:
            return
        self.weights_are_later = True
        if self.best_val is not None and (target / ckpt.BEST).is_file():  # the best weights as of this step
            self.weights_from, self.weights_name = target, ckpt.BEST
            return
        earlier = [b for b in bests if b <= self.step]
        source = self.out / "checkpoints" / f"step-{earlier[-1]}" if earlier else None
        if source is not None and source in ckpt.list_checkpoints(self.out):
            self.weights_from = source
            return
        self.weights_from = target  # the best weights of this history are gone: this step's stand in for them
        if self.best_val is not None:
            log.warning("the best weights of this history (val loss %.4f, step %s) are no longer kept: "
                        "model.safetensors becomes step %d's weights, and the best weights and early stopping start "
                        "over", self.best_val, earlier[-1] if earlier else "?", self.step)
            self.best_val, self.bad_evals = None, 0

    def _roll_back_files(self) -> None:
        if self.newer_checkpoints:
            later = [self.out / "model.safetensors"] if self.weights_are_later else []
            folder = ckpt.set_aside(self.out, [*self.newer_checkpoints, *later])
            log.warning("resumed from step %d, before the run's newest checkpoint (%s): the newer checkpoints%s moved "
                        "to %s, so that a later --resume goes on from here", self.step, self.newer_checkpoints[-1].name,
                        " and the weights they led to (model.safetensors)" if later else "", folder)
        elif self.weights_are_later:  # a stopped session's: not set aside, or every kill would leave a model's size
            log.info("model.safetensors held weights evaluated after step %d, which no checkpoint kept: it becomes "
                     "%s's %s again", self.step, self.weights_from.name,
                     "best weights" if self.weights_name == ckpt.BEST else "weights")
        if self.weights_from is not None:
            ckpt.copy_model(self.weights_from, self.out, name=self.weights_name)

    def _has_dropout(self) -> bool:
        model = self.run_cfg.model
        return max(model.dropout, model.attn_dropout, model.drop_path) > 0

    def _eval_windows(self) -> int:
        """How many validation windows an evaluation scores (a best val loss compares only with the same ones)."""
        from neurallayers.data.datasets import eval_window_count

        block = self.run_cfg.model.block_size
        if len(self.tokens.val) <= block:
            return 0
        return eval_window_count(len(self.tokens.val), block_size=block, max_batches=self.cfg.eval_batches,
                                 batch_size=self.cfg.batch_size * self.info.world_size)

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

    def _schedule(self, saved: dict | None) -> torch.optim.lr_scheduler.LambdaLR:
        """The current config's learning-rate schedule, positioned at self.step. A resume may change max_steps, lr
        or the schedule (to train longer, say): the next step follows the new schedule at once rather than the
        checkpoint's (whose base lr and last rate the optimizer state carries); unchanged, the rates are the same
        numbers as an uninterrupted run's."""
        cfg = self.cfg
        if cfg.warmup_steps >= cfg.max_steps > self.step and self.info.is_main:
            log.warning("train.warmup_steps=%d >= max_steps=%d: the learning rate is still warming up when training "
                        "ends (it reaches %.3g of lr=%.3g) and never decays; set --train.warmup_steps lower",
                        cfg.warmup_steps, cfg.max_steps, cfg.lr_at(cfg.max_steps - 1), cfg.lr)
        for group in self.optimizer.param_groups:  # a checkpoint's groups carry its own
            group["initial_lr"] = cfg.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cfg.lr_at(s) / cfg.lr,
                                                      last_epoch=self.step - 1)
        old = (saved or {}).get("_last_lr") or [None]
        if old[0] is not None and not math.isclose(float(old[0]), scheduler.get_last_lr()[0], rel_tol=1e-12):
            log.info("step %d on: the current train config's schedule, lr %.3g (the checkpoint's schedule: %.3g)",
                     self.step + 1, scheduler.get_last_lr()[0], float(old[0]))
        return scheduler

    def _open_loggers(self, loggers: list | None) -> list:
        from neurallayers.training.loggers import build_loggers

        self.out.mkdir(parents=True, exist_ok=True)
        # a second train into this folder (the same command run twice, a requeued job while the first still runs)
        # interleaved the two runs' checkpoints, metrics and rollbacks, and both reported success
        busy = f"another train is writing {self.out}; wait for it to end or choose another output directory (--out)"
        self.run_lock.enter_context(exclusive(self.out / LOCK, busy))
        # one that held the lock until just now wrote, pruned or set aside checkpoints: any change, not only the
        # newest's, as a resume from an older one sets aside only the newer ones it read; and one saved again under
        # a name read here (a resume from an older step that then reached it) is another checkpoint
        if ckpt.checkpoint_identities(self.out) != self.checkpoints:
            raise ValueError(f"{self.out} changed while this run was starting (another train wrote to it); run the "
                             "command again")
        if self.step == 0:  # a fresh run (the folder holds no checkpoint): an aborted earlier start's lines and
            # weights go (_resume_target kept any other folder with weights from getting here)
            for name in ("metrics.jsonl", "model.safetensors", "samples.txt", "loss.png"):
                (self.out / name).unlink(missing_ok=True)
            ckpt.clean_incomplete(self.out)
        else:  # a resumed run rewrites history after its checkpoint: drop the crashed session's later lines
            _truncate_metrics(self.out / "metrics.jsonl", self.step)
            ckpt.clean_incomplete(self.out)
            self._roll_back_files()
            # a kill between a checkpoint's rename and its pruning left one too many; a finished run saves no more
            ckpt.prune_checkpoints(self.out, keep_last=self.cfg.keep_last,
                                   keep_before=self._keep_before(going_on=False))
        self.run_cfg.to_yaml(self.out / "config.yaml")
        self.tokenizer.save(self.out)
        names = self.cfg.loggers if loggers is None else [x for x in loggers if isinstance(x, str)]
        objects = [] if loggers is None else [x for x in loggers if not isinstance(x, str)]
        return build_loggers(names, self.out, start_step=self.step, config=self.run_cfg.to_dict()) + objects

    # ----- the loop -----
    def run(self) -> TrainResult:
        # Ctrl-C / SIGTERM: stop at the next step boundary; the handlers stay until the checkpoint is written, and
        # go whatever happens
        with StopRequest() as stop:
            failed = True
            try:
                result = self._loop(stop)
                failed = False
                # every rank is here: rank 0's error closing its loggers (a full disk, a tracker's server gone) ends
                # them all, as _log's does, rather than leaving the others to die in their next collective
                dist.on_rank_zero(lambda: self._close_loggers(False), self.info)
                return result
            except KeyboardInterrupt:  # stopped, not failed
                failed = False
                raise
            finally:
                # whatever ended the loop: an error in a step left an MLflow run RUNNING and W&B's unfinished
                self._close_loggers(failed)

    def _close_loggers(self, failed: bool) -> None:
        """Closes every logger (an MLflow / W&B run ends as failed when the training raised), then raises the
        first error a close met (a full disk under metrics.jsonl). A second call closes nothing."""
        errors = []
        loggers, self.loggers = self.loggers, []
        for lg in loggers:
            try:
                if failed and hasattr(lg, "failed"):
                    lg.failed()
                lg.close()
            except Exception as e:  # the others still close
                errors.append(e)
        if errors:
            raise errors[0]

    def _loop(self, stop: StopRequest) -> TrainResult:
        cfg, info = self.cfg, self.info
        start_step, t0, train_time = self.step, time.monotonic(), 0.0
        step_times = array("d")  # 8 bytes a step
        reason, final_val = "max_steps", None
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not (self.progress and info.is_main),
                   dynamic_ncols=True)
        self.wrapped.train()  # once: _evaluate puts it back (module.train() walks every submodule, 0.1 ms a step)
        # log lines (evaluations; every log_interval steps without the bar) print above the bar, not through it
        console = contextlib.ExitStack()
        if not bar.disable:
            console.enter_context(logging_redirect_tqdm())
        # the evaluations still to come before max_steps (the final one cannot stop the run, also where max_steps is a
        # multiple of eval_interval: that one is the end)
        left = (cfg.max_steps - 1) // cfg.eval_interval - self.step // cfg.eval_interval if cfg.eval_interval else 0
        if (cfg.early_stopping_patience and info.is_main and self.has_val and self.step < cfg.max_steps
                and self.bad_evals + left < cfg.early_stopping_patience):
            why = "train.eval_interval is 0 (evaluations only at the end); set --train.eval_interval"
            if cfg.eval_interval:
                why = (f"{left} evaluation{'s' * (left != 1)} before max_steps={cfg.max_steps} "
                       f"(train.eval_interval={cfg.eval_interval}); set --train.eval_interval lower")
            log.warning("train.early_stopping_patience=%d never stops this run: %s", cfg.early_stopping_patience, why)
        in_step = abandoned = False
        try:
            while self.step < cfg.max_steps:
                if self.until_step is not None and self.step >= self.until_step:
                    reason = "until_step"
                    break
                if dist.any_flag(stop.reason is not None, info, self.device):
                    reason = stop.reason or "terminated"  # another rank's signal
                    log.warning("stopped at step %d (%s): saving a checkpoint", self.step, reason)
                    break
                t_step = time.monotonic()
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                in_step = True
                loss, grad_norm, ok = self._train_step()
                step_times.append(time.monotonic() - t_step)
                train_time += step_times[-1]
                self.step += 1
                in_step = False
                bar.update(1)
                self.skips_in_a_row = 0 if ok else self.skips_in_a_row + 1
                if ok and self.last_saved == self.step - 1 and info.is_main:
                    # a finite step trained on the last checkpoint's weights: the older one kept beside it can go
                    ckpt.prune_checkpoints(self.out, keep_last=cfg.keep_last)
                if not ok:
                    stops, note = self._nan_guard()
                    log.warning("non-finite loss %s / grad norm %s: %s", loss, grad_norm, note)
                    self._log({"loss": loss, "grad_norm": grad_norm, "nan_guard": note})
                    if stops:
                        reason = "nan"
                        break
                elif self.step % cfg.log_interval == 0 or self.step == start_step + 1:
                    tps = self.tokens_per_step * (self.step - start_step) / max(train_time, 1e-9)
                    if self.step % cfg.log_interval == 0 or self.step == 1:
                        # a session's first step shows on the console only: a resumed run's metrics.jsonl and
                        # trackers hold the rows of an uninterrupted one
                        self._log({"loss": loss, "lr": lr, "grad_norm": grad_norm,
                                   "tokens_per_sec": tps, "elapsed": self._elapsed(t0)})
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                    if bar.disable and info.is_main:
                        log.info("step %d/%d: loss %.4f  lr %.3g  %s tokens/s  %s", self.step, cfg.max_steps, loss, lr,
                                 f"{tps:,.0f}", _clock(self._elapsed(t0)))
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.has_val:
                    final_val = self._evaluate()
                    # at max_steps the run ends anyway: it reached max_steps, as where max_steps is no multiple of
                    # eval_interval (it was reported as an early stop, and a longer resume read it so)
                    if (cfg.early_stopping_patience and self.bad_evals >= cfg.early_stopping_patience
                            and self.step < cfg.max_steps):
                        reason = "early_stopping"
                        # every evaluation so far non-finite (a diverged run): there is no best to name
                        than = ("a finite val loss" if self.best_val is None
                                else f"a better val loss than {self.best_val:.4f}")
                        note = (f"stopped at step {self.step}: {self.bad_evals} evaluations without {than} "
                                f"(early_stopping_patience={cfg.early_stopping_patience})")
                        if info.is_main:
                            log.info("early stopping: %s", note)
                        self._log({"early_stopping": note})  # in metrics.jsonl, as the NaN guard's stops are
                        break
                if cfg.max_minutes is not None and dist.broadcast_flag(
                        self._elapsed(t0) - self.elapsed_before > 60 * cfg.max_minutes, info, self.device):
                    reason = "time_budget"
                    break
                # the last step's checkpoint (max_steps, or the time budget's above) is written after the final
                # evaluation, so that it holds its best val loss
                if cfg.save_interval and self.step % cfg.save_interval == 0 and self.step < cfg.max_steps:
                    self._save(t0, going_on=True)
        except KeyboardInterrupt:  # a second Ctrl-C, or a first one from a caller's own SIGINT handler
            reason = "interrupted"
            abandoned = in_step  # the step in flight may be half applied: saving it would break exact resume
            if abandoned:
                log.warning("interrupted during step %d: not saved (the run resumes from its last checkpoint)",
                            self.step + 1)
            else:
                log.warning("interrupted at step %d: saving a checkpoint", self.step)
        finally:
            bar.close()
            console.close()
        terminal = reason not in ("until_step", "interrupted", "terminated")
        if terminal and self.has_val:
            if self.step == start_step > 0:  # a resume with nothing to train: the step's evaluation stands
                final_val = _logged_val_loss(self.out / "metrics.jsonl", self.step)
            if final_val is None or (self.step > start_step and (cfg.eval_interval == 0
                                                                 or self.step % cfg.eval_interval)):
                final_val = self._evaluate()
        if terminal and self.best_val is None:  # never evaluated: the final weights are the model
            state = dist.model_state(self.wrapped, info)
            dist.on_rank_zero(lambda: ckpt.save_model(self.out, state), info)
        self.early_stopped = reason == "early_stopping"
        if self.last_saved != self.step and not abandoned:
            self._save(t0, going_on=False)
        elif self.last_saved == self.step:  # the loop's checkpoint is the session's last (until_step, a signal after
            # it): no step of this session trains on it, so the older one it kept beside it goes, as a final save's
            dist.on_rank_zero(lambda: ckpt.prune_checkpoints(self.out, keep_last=self.cfg.keep_last,
                                                             keep_before=self._keep_before(going_on=False)), info)
        if terminal:
            self._finish()
        if abandoned:
            raise KeyboardInterrupt
        tps = self.tokens_per_step * (self.step - start_step) / max(train_time, 1e-9)
        return TrainResult(run_dir=self.out, steps=self.step, best_val_loss=self.best_val, final_val_loss=final_val,
                           tokens_per_second=tps, wall_seconds=time.monotonic() - t0,
                           median_step_seconds=statistics.median(step_times) if step_times else 0.0,
                           first_step_seconds=step_times[0] if step_times else 0.0, stopped_reason=reason)

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

    def _keep_before(self, *, going_on: bool) -> int | None:
        """prune_checkpoints' keep_before: the step of the last update, or None. The newest checkpoint before it holds
        weights a finite step trained on; the newer ones hold the current weights, which no step has tried yet, or
        which a streak of skipped steps failed on (a divergence). So it is kept while the run goes on or is in such
        a streak: a diverged run has a checkpoint to go back to, whatever keep_last and save_interval are."""
        return self.step - self.skips_in_a_row if going_on or self.skips_in_a_row else None

    def _train_step(self) -> tuple[float, float, bool]:
        """One optimizer step over grad_accum micro-batches: (mean loss, grad norm, finite)."""
        cfg, info = self.cfg, self.info
        seed_device(self.device, step_seed(cfg.seed, self.step, info.rank))
        b = cfg.batch_size
        total = torch.zeros((), device=self.device)
        micros = []
        for micro in range(cfg.grad_accum):
            index = self.step * cfg.grad_accum + micro
            x, y = self.windows.batch(index)
            if self.masker is not None:  # the global batch, so every world size masks alike
                x, y = self.masker(x, index)
            micros.append((x, y))
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
            # (a slice of only special tokens predicts none: its loss is NaN, and the NaN guard has the step)
            share = cfg.grad_accum if not predicted else predicted / (max(int((y != -100).sum()), 1) * info.world_size)
            with sync, autocast(self.device, self.amp_dtype):
                loss = _loss(self.forward, x, y, masked=self.masker is not None) / share
            self.scaler.scale(loss).backward()
            total += loss.detach()
        total = dist.all_reduce_mean(total, info)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        loss_v, norm_v = torch.stack([total.float(), norm.float()]).tolist()  # one device sync for both
        ok = math.isfinite(loss_v) and (self.scaler.is_enabled() or math.isfinite(norm_v))
        if ok:
            self.scaler.step(self.optimizer)  # with a scaler, overflowing grads skip the update by themselves
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.stepped_schedule:
            self.scheduler.step()
        else:  # the session's first step, skipped (NaN guard, GradScaler): torch warns that the schedule loses its
            # first rate, which it does not here (the rate is a function of the step, positioned by _schedule). Only
            # once: a filter set every step would reset the registry that shows other warnings once
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
                self.scheduler.step()
            self.stepped_schedule = True
        return loss_v, norm_v, ok

    @torch.no_grad()
    def _evaluate(self) -> float:
        """Mean validation loss over eval_batches; updates best weights and the early-stopping counter."""
        cfg = self.cfg
        self.wrapped.eval()
        val, _ = mean_loss(self.wrapped, self.tokens.val, block_size=self.run_cfg.model.block_size,
                           batch_size=cfg.batch_size, max_batches=cfg.eval_batches, device=self.device,
                           amp_dtype=self.amp_dtype, masker=self.masker, info=self.info)
        self.wrapped.train()
        improved = math.isfinite(val) and (self.best_val is None or val < self.best_val)  # NaN is never the best
        self._log({"val_loss": val, "perplexity": perplexity(val), "best": improved})
        if self.info.is_main:
            log.info("step %d: val loss %.4f  perplexity %s%s", self.step, val, perplexity_text(val),
                     "  (best)" if improved else "")
        if improved:
            self.best_val, self.bad_evals = val, 0
            state = dist.model_state(self.wrapped, self.info)
            dist.on_rank_zero(lambda: ckpt.save_model(self.out, state), self.info)
        else:
            self.bad_evals += 1
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
            "data_position": self.step * cfg.grad_accum,  # micro-batches consumed
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

    def _finish(self) -> None:
        """Samples and the loss plot (rank 0); neither may lose a finished run, so failures only warn."""
        from neurallayers.training.plots import plot_losses

        # A sharded model's forward is a collective (it gathers the weights): under FSDP every rank samples, each
        # the same fixed number of tokens so that their forwards pair up; rank 0 writes.
        sharded = self.info.mode == "fsdp"
        if self.masker is not None and (self.info.is_main or sharded):
            from neurallayers.training.fill_samples import masked_lm_samples

            split = self.tokens.val if self.has_val else self.tokens.train
            text = masked_lm_samples(self.model, self.tokenizer, self.masker, split, self.device,
                                     prompts=self.cfg.sample_prompts)
            if text and self.info.is_main:
                _save_samples(self.out / "samples.txt", text)
        elif self.info.is_main or sharded:
            _write_samples(self.model, self.tokenizer, self.cfg, self.out / "samples.txt", self.device,
                           write=self.info.is_main, fixed_length=sharded)
        if self.info.is_main:
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")

    def _log(self, metrics: dict) -> None:
        """Every rank calls this at the same steps; rank 0 alone holds the loggers, and its error (a full disk under
        metrics.jsonl) is raised on every rank, which would otherwise die in their next collective."""
        dist.on_rank_zero(functools.partial(self._log_here, metrics), self.info)

    def _log_here(self, metrics: dict) -> None:
        for lg in self.loggers:
            lg.log(metrics, self.step)

    def _elapsed(self, t0: float) -> float:
        return self.elapsed_before + time.monotonic() - t0


def perplexity(loss: float) -> float:
    """exp(loss); inf where that overflows a float (a diverged run)."""
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < 709.0 else math.inf


def perplexity_text(loss: float) -> str:
    """The perplexity for a log line: 2 decimals, or 4 significant digits once it is large (e+ notation)."""
    value = perplexity(loss)
    return f"{value:.2f}" if value < 1e6 else f"{value:.4g}"


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}:{sec:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{sec:02d}"


def _loss(forward, x: torch.Tensor, y: torch.Tensor, *, masked: bool) -> torch.Tensor:
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
                loss = _loss(model, x.to(device), y.to(device), masked=masker is not None)
            n = int((y != -100).sum()) if masker is not None else y.numel()
            if n:  # a masked batch may select no token: its loss is NaN
                total += float(loss) * n * scored
                count += int(n * scored)
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1), count


def _resume_target(out: Path, resume: bool | str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from, or None for a fresh run. Fails early with one clear line."""
    # the messages name the CLI's flags and the API's arguments alike: `train` leaves these checks to this one place
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a run directory; choose another output directory (--out)")
    if (blocker := file_in_the_way(out)) is not None:
        raise ValueError(f"{out}: {blocker} is a file, not a folder; choose another output directory (--out)")
    if resume is False:
        if ckpt.latest_checkpoint(out) is not None:
            raise ValueError(f"{out} already holds a run; pass --resume (resume=True) to continue it or choose "
                             "another output directory (--out)")
        if ckpt.stopped_before_first_checkpoint(out):  # killed, or failed, before it saved
            log.info("%s holds no checkpoint (the run stopped before its first one): starting the run afresh", out)
        elif (out / "model.safetensors").exists():
            raise ValueError(f"{out} already holds a model (model.safetensors) but no run to resume; choose another "
                             "output directory (--out; --init-from, train.init_from, starts a run from its weights)")
        return None
    if resume is True:
        target = ckpt.latest_checkpoint(out)
        if target is None and ckpt.stopped_before_first_checkpoint(out):
            raise FileNotFoundError(f"cannot resume: {out} stopped before its first checkpoint (train.save_interval); "
                                    "run the same command without --resume (resume=False) to start it again")
        if target is None:
            raise FileNotFoundError(f"cannot resume: {out} has no complete checkpoint under checkpoints/")
        return target
    target = Path(resume)
    if not target.exists():
        raise FileNotFoundError(f"cannot resume: {resume} does not exist")
    if (target / "checkpoints").is_dir() and not (target / ckpt.COMPLETE).exists():
        found = ckpt.latest_checkpoint(target)
        if found is None:
            raise FileNotFoundError(f"cannot resume: {target} has no complete checkpoint")
        target = found
    if not (target / ckpt.COMPLETE).is_file():
        raise CheckpointError(f"cannot resume from {target}: not a complete checkpoint folder (no COMPLETE marker)")
    # its run as `train --resume` found it: through a symlink or `..` ("step-2" typed inside checkpoints/) too
    found = ckpt.run_checkpoint(target)
    if found is None and target.resolve().parent.name == "abandoned":  # another history, whose files are set aside
        raise ValueError(f"cannot resume from {target}: a run resumes from its checkpoints/ folder; to go back to "
                         f"a history set aside in {target.resolve().parent}, move its step folders back into "
                         f"{out}/checkpoints (and the others out)")
    if found is None:
        raise ValueError(f"cannot resume from {target}: not a run's checkpoints/step-N folder (a run directory with "
                         "config.yaml holds them)")
    run = found.parent.parent
    if not (out.is_dir() and os.path.samefile(run, out)):
        raise ValueError(f"cannot resume from {target}: it belongs to run {run}, not {out}")
    return out / "checkpoints" / found.name  # the run's own spelling: its step is in the name


def _init_source(run: RunConfig) -> object:
    """The loaded `train.init_from` source, checked against the run's data settings and model config."""
    from neurallayers.training.init_from import data_conflicts, load_source

    data_conflicts(run.data)
    source = load_source(run.train.init_from)
    source.check_model(run.model)  # before tokenizing: prepare_data changes only fields an encoder may change
    return source


def _saved_config(out: Path) -> RunConfig:
    """The run's config.yaml, read once for a resume; a run from before data.document_bos was recorded had no bos."""
    saved = RunConfig.from_yaml(out / "config.yaml")
    saved.data.document_bos = bool(saved.data.document_bos)
    return saved


def _as_saved(saved: RunConfig, run: RunConfig) -> RunConfig:
    """A resume's run config: tokenized as the run began (data.document_bos, unless told: as `saved` says), and
    started from what the run started from (train.init_from: a resume goes on from its own checkpoint, so another
    source would only make config.yaml and `info` name the wrong one)."""
    if run.train.init_from not in (None, saved.train.init_from):
        log.warning("train.init_from=%s is not used: a resume goes on from the run's own checkpoint (the run started "
                    "from %s)", run.train.init_from, saved.train.init_from or "scratch")
    data = run.data
    if data.document_bos is None:
        data = dataclasses.replace(data, document_bos=saved.data.document_bos)
    return dataclasses.replace(run, data=data, train=dataclasses.replace(run.train, init_from=saved.train.init_from))


def _check_same_model(out: Path, saved: RunConfig, model: ModelConfig) -> None:
    if saved.model != model:
        diff = _changes(saved.model.to_dict(), model.to_dict())
        raise ValueError(f"cannot resume {out}: the model config differs from the saved one ({diff})")


def _check_resume(out: Path, target: Path, run: RunConfig, saved: RunConfig) -> tuple[dict, dict, RunConfig, bool]:
    """Loads the checkpoint and checks it belongs to this model and vocabulary (before any training), `saved` being
    the run's config.yaml (_saved_config). Returns the weights, the training state, the run config, whose
    data.tokenizer / vocab_size stay the saved ones (the run keeps its tokenizer whatever a resume asks for, and
    config.yaml says so), and whether the data changed."""
    _check_same_model(out, saved, run.model)
    # where the token cache lives changes no token: a moved cache is the same data
    same_cache = dataclasses.replace(saved.data, cache_dir=run.data.cache_dir)
    changed = same_cache != run.data
    if changed:
        diff = _changes(dataclasses.asdict(same_cache), dataclasses.asdict(run.data))
        log.warning("the data settings differ from the saved run (%s): training continues on the new data, with the "
                    "run's tokenizer", diff)
        kept = {k: getattr(saved.data, k) for k in ("tokenizer", "vocab_size")}
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, **kept))
    try:
        model_sd, state = ckpt.load_checkpoint(target)
    except CheckpointError as e:
        older = [p for p in ckpt.list_checkpoints(out) if ckpt.checkpoint_step(p) < ckpt.checkpoint_step(target)]
        if not older:
            raise
        raise CheckpointError(f"{e}; an older checkpoint may load: --resume {older[-1]}") from None
    if int(state["step"]) != ckpt.checkpoint_step(target):
        raise CheckpointError(f"{target}: state.pt says step {state['step']}, the folder name another")
    # checkpoints from before it was recorded: from the saved run's settings
    state.setdefault("global_batch", saved.train.batch_size * int(state.get("world_size", 1)))
    state.setdefault("grad_accum", saved.train.grad_accum)
    state.setdefault("seed", saved.train.seed)
    state.setdefault("mask_prob", saved.train.mask_prob)
    return model_sd, state, run, changed


def _changes(old: dict, new: dict) -> str:
    """"field: old -> new; ..." for the fields whose values differ."""
    return "; ".join(f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in old if old[k] != new.get(k))


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps only metrics.jsonl lines up to `step` (atomic rewrite)."""
    import json

    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the crash
    write_text_atomic(path, "".join(x + "\n" for x in keep))


def _logged_val_loss(path: Path, step: int) -> float | None:
    """The val loss metrics.jsonl holds for `step` (the last such line), or None."""
    from neurallayers.training.loggers import read_metrics

    vals = [float(r["val_loss"]) for r in read_metrics(path)
            if r.get("step") == step and isinstance(r.get("val_loss"), (int, float))]
    return vals[-1] if vals else None


def _write_samples(model: torch.nn.Module, tokenizer: object, cfg: object, path: Path, device: torch.device, *,
                   write: bool = True, fixed_length: bool = False) -> None:
    """Samples from `model` for cfg.sample_prompts into `path` (when `write`). fixed_length: every prompt gets
    exactly the token budget (generation ignores eos; the text is cut at it afterwards), so the number of forwards
    does not depend on what is sampled."""
    if not cfg.sample_prompts or cfg.sample_tokens == 0:
        return
    try:
        from neurallayers.generation.config import GenerationConfig
        from neurallayers.generation.generate import generate
    except ImportError as e:
        log.warning("generation is not available (%s): no samples written", e)
        return
    longest = max(len(tokenizer.encode(p)) for p in cfg.sample_prompts)
    n_new = min(cfg.sample_tokens, model.config.block_size - longest)
    if n_new < 1:
        log.warning("sample prompts fill the context (block_size=%d): no samples written", model.config.block_size)
        return
    gen = GenerationConfig(max_new_tokens=n_new, temperature=0.8, top_k=50, seed=cfg.seed, ignore_eos=fixed_length)
    model.eval()
    try:
        outs = generate(model, tokenizer, list(cfg.sample_prompts), gen)
    except Exception as e:  # a finished run must not be lost to a sampling bug; say so loudly instead
        log.warning("sampling failed (%s: %s): no samples written", type(e).__name__, e)
        return
    if not write:
        return
    texts = [o.text for o in outs]
    if fixed_length and tokenizer.eos_id is not None:  # cut at eos, decoded after the prompt as generate() decodes
        from neurallayers.data.tokenizers import continuation_text  # (a SentencePiece first word keeps its space)

        texts = [continuation_text(tokenizer, tokenizer.encode(p, add_special_tokens=True),
                                   o.token_ids[:o.token_ids.index(tokenizer.eos_id)])
                 if tokenizer.eos_id in o.token_ids else o.text for p, o in zip(cfg.sample_prompts, outs, strict=False)]
    parts = [f"=== prompt: {p!r}\n{p}{t}\n" for p, t in zip(cfg.sample_prompts, texts, strict=False)]
    _save_samples(path, "\n".join(parts))


def _save_samples(path: Path, text: str) -> None:
    """samples.txt, atomically; like the loss plot a convenience, so a full disk warns instead of failing a finished
    run (whose checkpoint and weights are already saved) and leaving its plot undrawn."""
    try:
        write_text_atomic(path, text)
    except OSError as e:
        log.warning("could not write the samples %s (%s)", path, e)
