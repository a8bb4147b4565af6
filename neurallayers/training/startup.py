"""What a training session does before its first step: settle the run config, read (or tokenize) the data, and
build the model, optimizer, schedule and batches, from a checkpoint on a resume. A part of trainer._Fit."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from pathlib import Path

import torch

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import distributed as dist
from neurallayers.training.config import RunConfig, SavedConfigWarning
from neurallayers.training.resume import as_saved, check_resume, check_same_model, resume_target, saved_config
from neurallayers.training.runtime import build_optimizer, resolve_device, resolve_precision, seed_all
from neurallayers.weights import check_state_dict

log = logging.getLogger("neurallayers.training")


class StartupMixin:
    """_Fit's set-up, in the order its __init__ calls these: _read_run, _build_model, _build_training_state,
    _build_data. The order is part of exact resume: the model's initial weights are drawn right after seed_all."""

    def _read_run(self, run: RunConfig,
                  resume: bool | str | os.PathLike) -> tuple[Path | None, object, dict | None, dict | None]:
        """Settles the run config, device and precision, finds the resume target and reads the data. A resume's
        checkpoint is loaded and checked here, before anything is built. Returns (resume target, init_from source,
        the checkpoint's weights, its training state); the last three None where there is none."""
        from neurallayers.data import Tokenizer
        from neurallayers.data.corpora import absolute_spec
        from neurallayers.training.prepare import model_changes, prepare_data

        info, out, progress = self.info, self.out, self.progress
        # config.yaml names the corpus by an absolute path: eval and --resume find it from any directory
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, source=absolute_spec(run.data.source)))
        if info.enabled and ":" in run.train.device:  # one GPU named for every process
            raise ValueError(f"TrainConfig.device={run.train.device!r} under torchrun: use 'cuda', which gives each "
                             "process its LOCAL_RANK's GPU (CUDA_VISIBLE_DEVICES picks which GPUs)")
        self.device = resolve_device(run.train.device, local_rank=info.local_rank)
        self.amp_dtype, self.use_scaler = resolve_precision(run.train.precision, self.device)
        target = resume_target(out, resume)
        self.checkpoints = ckpt.checkpoint_identities(out)  # as read here: _claim_run_dir checks them under the lock
        with warnings.catch_warnings():  # a resume trains with `run`: what the saved file alone would lack is no news
            warnings.simplefilter("ignore", SavedConfigWarning)
            saved = saved_config(out) if target is not None else None
        if saved is not None:
            run = as_saved(saved, run)
        # A fresh start from pretrained weights takes the source's tokenizer; a resume, the run's own.
        source = init_source(run) if target is None and run.train.init_from else None
        tokenizer = Tokenizer.load(out) if target is not None else source.tokenizer if source else None
        pretrained = bool(run.train.init_from)
        if saved is not None:  # before the corpus is read and tokenized (minutes for a large one)
            check_same_model(out, saved, run.model.replace(**model_changes(run, tokenizer, pretrained=pretrained)))
        # Data: rank 0 builds tokenizer and token cache first; the others then find them cached (or raise its error).
        prepared = dist.on_rank_zero(lambda: prepare_data(run, tokenizer=tokenizer, show_progress=progress,
                                                          pretrained=pretrained), info)
        if info.is_main:
            tokenizer, self.tokens, run = prepared
        else:
            tokenizer, self.tokens, run = prepare_data(run, tokenizer=tokenizer, show_progress=False,
                                                       pretrained=pretrained)
        self.run_cfg, self.cfg, self.tokenizer = run, run.train, tokenizer
        model_sd = state = None
        self.data_changed = False
        if target is not None:
            model_sd, state, self.run_cfg, self.data_changed = check_resume(out, target, run, saved)
        return target, source, model_sd, state

    def _build_model(self, target: Path | None, source: object, model_sd: dict | None) -> dict | None:
        """The model, seeded by train.seed, with the checkpoint's or the init_from source's weights; then wrapped for
        DDP/FSDP. Returns the checkpoint's weights as loaded (an older masked LM's without its pooler)."""
        from neurallayers.models import build_model
        from neurallayers.models.encoder import drop_unused_pooler

        run, cfg = self.run_cfg, self.cfg
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
        self.wrapped = dist.wrap_model(self.model, self.info, self.device)
        return model_sd

    def _build_training_state(self, target: Path | None, model_sd: dict | None, state: dict | None) -> None:
        """Optimizer, GradScaler, counters and schedule: fresh, or as the checkpoint left them (_restore)."""
        cfg = self.cfg
        self.optimizer, self.optimizer_impl = build_optimizer(self.wrapped, cfg, self.device)
        for group in self.optimizer.param_groups:  # the key the scheduler adds: FSDP's loader wants saved groups'
            group["initial_lr"] = cfg.lr             # keys to match
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)
        self.step, self.best_val, self.bad_evals, self.elapsed_before = 0, None, 0, 0.0
        self.tokens_seen = 0  # input tokens of the steps so far, all processes (skipped steps too: their data is read)
        self.data_position = 0  # micro-batches consumed: the next step's first is RandomWindows.batch(data_position)
        self.skips_in_a_row = 0  # the NaN guard's streak (max_consecutive_skips): training state, kept by checkpoints
        self.early_stopped = False  # the session ended by early stopping (its last checkpoint says so)
        if state is not None:
            self._restore(model_sd, state, target)
        self.scheduler = self._schedule(None if state is None else state["scheduler"])
        self.stepped_schedule = False  # by this session (_train_step)
        # a masked LM's head runs at the masked positions, whose count changes every step: torch compiled a graph for
        # the session's first count, then one for any count, and a step ran one or the other by where its session
        # started (a resume logged other losses). Dynamic sizes from the first call: the same graph in every session
        dynamic = True if not self.run_cfg.model.causal else None
        self.forward = torch.compile(self.wrapped, dynamic=dynamic) if cfg.compile else self.wrapped

    def _build_data(self) -> None:
        """The training batches (windows of the global batch, masked for an encoder) and whether there is a
        validation split to evaluate on."""
        from neurallayers.data import RandomWindows

        run, cfg = self.run_cfg, self.cfg
        global_batch = cfg.batch_size * self.info.world_size
        self.windows = RandomWindows(self.tokens.train, block_size=run.model.block_size, batch_size=global_batch,
                                     seed=cfg.seed)
        self.tokens_per_step = global_batch * cfg.grad_accum * run.model.block_size
        self.masker = None
        if not run.model.causal:
            from neurallayers.data.masking import Masker

            self.masker = Masker.for_tokenizer(self.tokenizer, prob=cfg.mask_prob, seed=cfg.seed)
        self.has_val = len(self.tokens.val) > run.model.block_size
        if not self.has_val:
            log.warning("the validation split has %d tokens (val_fraction=%s), fewer than one window of block_size + 1 "
                        "= %d: no evaluation; model.safetensors = final weights", len(self.tokens.val),
                        run.data.val_fraction, run.model.block_size + 1)

    def _schedule(self, saved: dict | None) -> torch.optim.lr_scheduler.LambdaLR:
        """The current config's learning-rate schedule, positioned at self.step. A resume may change max_steps, lr
        or the schedule (to train longer, say): the next step follows the new schedule at once rather than the
        checkpoint's (whose base lr and last rate the optimizer state carries); unchanged, the rates are the same
        numbers as an uninterrupted run's."""
        cfg = self.cfg
        if cfg.warmup_steps >= cfg.max_steps > self.step and self.info.is_main:
            # warmup_steps == max_steps reaches lr at the last step: "short of lr" was false there
            reach = (f"it reaches lr={cfg.lr:.3g} only at the last step" if cfg.warmup_steps == cfg.max_steps else
                     f"it reaches {cfg.lr_at(cfg.max_steps - 1):.3g}, short of lr={cfg.lr:.3g}")
            log.warning("train.warmup_steps=%d >= max_steps=%d: the learning rate is still warming up when training "
                        "ends (%s) and never decays; set --train.warmup_steps lower", cfg.warmup_steps, cfg.max_steps,
                        reach)
        for group in self.optimizer.param_groups:  # a checkpoint's groups carry its own
            group["initial_lr"] = cfg.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cfg.lr_at(s) / cfg.lr,
                                                      last_epoch=self.step - 1)
        old = (saved or {}).get("_last_lr") or [None]
        if old[0] is not None and not math.isclose(float(old[0]), scheduler.get_last_lr()[0], rel_tol=1e-12):
            log.info("step %d on: the current train config's schedule, lr %.3g (the checkpoint's schedule: %.3g)",
                     self.step + 1, scheduler.get_last_lr()[0], float(old[0]))
        return scheduler


def init_source(run: RunConfig) -> object:
    """The loaded `train.init_from` source, checked against the run's data settings and model config."""
    from neurallayers.training.init_from import data_conflicts, load_source

    data_conflicts(run.data)
    source = load_source(run.train.init_from)
    source.check_model(run.model)  # before tokenizing: prepare_data changes only fields an encoder may change
    return source
