"""`fit()`: train a model from a RunConfig into a run directory, resumable loss for loss.

Decisions worth knowing:
- The data position counts the micro-batches consumed: micro-batch i of step s is `RandomWindows.batch(s * grad_accum
  + i)` (a resume under another grad_accum goes on from the checkpoint's position: none is trained on twice),
  drawn for all ranks at once and sliced per rank, so ranks see disjoint parts of one global batch.
- Dropout is reseeded from (seed, step, rank) at the start of every step: a resumed run draws the same masks.
- An encoder config trains as a masked LM (BERT's objective): a micro-batch is masked by
  `Masker(..., seed)(windows, index)`, the index its windows were drawn by, before it is sliced per rank, so its
  masks too depend only on the data position; validation masks are fixed (the EVAL stream), so evaluations compare.
- NaN/Inf guard: a non-finite loss (or grad norm, when no GradScaler is in use) either skips the step (grads
  zeroed, no optimizer update; the step counter, data position and learning-rate schedule still advance, so a
  skipped step is not retried on the same bad batch) or stops the run, per `nan_policy`; both are logged. Skipping
  stops too after `max_consecutive_skips` steps in a row (a diverged run would skip every step to max_steps). As
  skipped steps change no weight, every checkpoint from the last update on holds the weights the streak failed on:
  pruning keeps the newest from before it beyond keep_last (_keep_before), and the stop names it.

Where the parts of a session live: startup (config, data, model, optimizer), restore (a resume's training state),
step (one optimizer step, the NaN guard), eval_and_save (evaluations, checkpoints, pruning), resume (the checks a
resume passes before anything is built), losses and samples; this file holds fit() and the loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import statistics
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from neurallayers.checks import is_int
from neurallayers.files import WriteError, exclusive, write_text_atomic
from neurallayers.training import checkpoint as ckpt
from neurallayers.training import distributed as dist
from neurallayers.training.config import RunConfig
from neurallayers.training.eval_and_save import CheckpointMixin
from neurallayers.training.losses import mean_loss, perplexity, perplexity_text
from neurallayers.training.restore import RestoreMixin
from neurallayers.training.resume import logged_val_loss, resume_arg, truncate_metrics
from neurallayers.training.runtime import resolve_device
from neurallayers.training.samples import save_samples, write_samples
from neurallayers.training.signals import StopRequest
from neurallayers.training.startup import StartupMixin
from neurallayers.training.step import StepMixin

__all__ = ["LOCK", "TrainResult", "fit", "mean_loss", "perplexity", "perplexity_text"]

log = logging.getLogger("neurallayers.training")
ROLL_BACK = ".rolling-back"  # a roll-back to an older checkpoint under way: the step it goes back to
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


def fit(run: RunConfig, out_dir: str | os.PathLike, *, resume: bool | str | os.PathLike | None = False,
        loggers: list | None = None, progress: bool = True, until_step: int | None = None) -> TrainResult:
    """Trains `run.model` on `run.data` with `run.train` and writes the run directory `out_dir`.

    A decoder learns the next token; an encoder (causal=False, head "none" or "mlm") is pretrained as a masked LM
    (BERT's masking of `train.mask_prob` of the tokens; see data.masking and training.prepare).

    Args:
        run: the whole configuration. model.vocab_size is replaced by the tokenizer's.
        out_dir: the run directory (config.yaml, tokenizer.json, model.safetensors, checkpoints/, metrics.jsonl,
            samples.txt, loss.png).
        resume: True continues from the newest complete checkpoint in out_dir; a path names a checkpoint folder
            (`.../checkpoints/step-N`). The saved config's model must equal `run.model`. False or None: a fresh run.
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
        PeerLostError: another process of a multi-process run died or stopped answering (past the group's timeout).
    """
    _check_arguments(run, out_dir, loggers, until_step)
    resume = resume_arg(resume)
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
    except RuntimeError as e:  # another rank died or hangs: one line, not the backend's traceback
        lost = dist.peer_lost(e, info, functools.partial(_resume_point, Path(out_dir)))
        if lost is None:
            raise
        raise lost from e
    finally:
        dist.cleanup(info)


def _resume_point(out: Path) -> str:
    """Where a --resume of the run in `out` goes on from, as the checkpoints on disk say."""
    found = ckpt.list_checkpoints(out)
    if not found:
        return "no checkpoint was saved yet: the run starts again"
    return f"the run resumes from its last checkpoint (step {ckpt.checkpoint_step(found[-1])})"


def _check_arguments(run: object, out_dir: object, loggers: object, until_step: object) -> None:
    """fit()'s own arguments, each refused in one line before any work: one tracker name was read letter by letter
    ("unknown logger(s) ['t', 'e', ...]") once the corpus was tokenized, an object without log() and close() failed
    after the first step, until_step=2.5 stopped after step 3, and out_dir="" trained into the current folder."""
    from neurallayers.training.loggers import LOGGERS, check_installed

    if not isinstance(run, RunConfig):
        raise ValueError(f"run: expected a RunConfig (RunConfig.from_yaml(path), or RunConfig(model=...)), got "
                         f"{type(run).__name__}")
    if not isinstance(out_dir, str | os.PathLike):
        raise ValueError(f"out_dir={out_dir!r}: must be a path (a str or pathlib.Path) of the run directory, got "
                         f"{type(out_dir).__name__}")
    if isinstance(out_dir, str) and not out_dir.strip():  # Path("") is the current folder: the run landed there
        raise ValueError("out_dir is empty; name the run directory to write")
    if until_step is not None and (not is_int(until_step) or until_step < 1):
        raise ValueError(f"until_step={until_step!r} must be an int >= 1 or None")
    if loggers is None:
        check_installed(run.train.loggers, "train.loggers")
        return
    if not isinstance(loggers, list | tuple):  # a str above all: transformers' report_to takes one name so
        raise ValueError(f"loggers={loggers!r}: expected a list of tracker names ({', '.join(LOGGERS)}) or logger "
                         "objects, e.g. ['tensorboard']")
    for i, logger in enumerate(loggers):
        if isinstance(logger, str) and logger not in LOGGERS:
            raise ValueError(f"loggers[{i}]={logger!r}: unknown logger; allowed: {', '.join(LOGGERS)}")
        if not isinstance(logger, str) and not all(callable(getattr(logger, m, None)) for m in ("log", "close")):
            raise ValueError(f"loggers[{i}]: a {type(logger).__name__} has no log(metrics, step) and close() methods, "
                             "which a logger object needs")
    check_installed([x for x in loggers if isinstance(x, str)], "loggers")


@dataclass
class _Session:
    """What one session's loop measures and how it ended."""

    start_step: int
    t0: float  # time.monotonic() at its start
    train_time: float = 0.0  # the steps' wall time (evaluations and saves left out)
    step_times: array = field(default_factory=lambda: array("d"))  # 8 bytes a step
    reason: str = "max_steps"  # TrainResult.stopped_reason
    final_val: float | None = None
    evaluated: int = -1  # the step of final_val: the session's last evaluation


class _Fit(StartupMixin, RestoreMixin, StepMixin, CheckpointMixin):
    """One training session; state lives here so the loop in `run` reads top to bottom."""

    def __init__(self, run: RunConfig, out: Path, info: dist.DistInfo, *, resume: bool | str | os.PathLike,
                 loggers: list | None, progress: bool, until_step: int | None,
                 run_lock: contextlib.ExitStack) -> None:
        self.info, self.out, self.progress, self.until_step = info, out, progress, until_step
        self.run_lock = run_lock
        target, source, model_sd, state = self._read_run(run, resume)
        model_sd = self._build_model(target, source, model_sd)
        self._build_training_state(target, model_sd, state)
        self._build_data()
        dist.barrier(info)  # every rank has read the run's files (_restore) before rank 0 changes them
        self.loggers = dist.on_rank_zero(lambda: self._claim_run_dir(loggers), info) or []
        self.last_saved = self.step if state is not None else -1

    def _claim_run_dir(self, loggers: list | None) -> list:
        """Rank 0's hold on the run directory: takes its lock, clears an aborted fresh start or rolls a resume back
        to its checkpoint, writes config.yaml and the tokenizer; returns the opened loggers."""
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
            # weights go (resume_target kept any other folder with weights from getting here)
            for name in ("metrics.jsonl", "model.safetensors", "samples.txt", "loss.png"):
                (self.out / name).unlink(missing_ok=True)
            ckpt.clean_incomplete(self.out)
        else:  # a resumed run rewrites history after its checkpoint: drop the crashed session's later lines, last,
            # for they tell a resume killed in between which weights are later (_roll_back_files)
            ckpt.clean_incomplete(self.out)
            marker = self._roll_back_marker()
            self._roll_back_files()
            truncate_metrics(self.out / "metrics.jsonl", self.step)
            if marker is not None:
                marker.unlink()
            # a kill between a checkpoint's rename and its pruning left one too many; a finished run saves no more
            ckpt.prune_checkpoints(self.out, keep_last=self.cfg.keep_last,
                                   keep_before=self._keep_before(going_on=False))
        self.run_cfg.to_yaml(self.out / "config.yaml")
        self.tokenizer.save(self.out)
        names = self.cfg.loggers if loggers is None else [x for x in loggers if isinstance(x, str)]
        objects = [] if loggers is None else [x for x in loggers if not isinstance(x, str)]
        return build_loggers(names, self.out, start_step=self.step, config=self.run_cfg.to_dict()) + objects

    def _roll_back_marker(self) -> Path | None:
        """ROLL_BACK, written before a roll-back to an older checkpoint changes a file and removed once it is done
        (None: nothing to roll back). Found from an earlier one that was killed, only a resume from the same step may
        go on (it finishes the roll-back): a plain --resume went on from the newer history's newest checkpoint with
        model.safetensors already replaced by the older step's best weights, silently."""
        marker = self.out / ROLL_BACK
        if marker.is_file():
            step = int(marker.read_text(encoding="utf-8").strip() or -1)
            if step != self.step:
                raise ValueError(f"a resume of {self.out} from step {step} was stopped while it set the newer history "
                                 f"aside: run it again to finish it (--resume {self.out / 'checkpoints'}/step-{step}), "
                                 "then go on from there")
            return marker
        if not self.newer_checkpoints and self.weights_from is None:
            return None
        write_text_atomic(marker, f"{self.step}\n")
        return marker

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
                # whatever ended the loop: an error in a step left an MLflow run RUNNING and W&B's unfinished. The
                # error (or Ctrl-C) on its way out is the one to report: a close failing as well (a tracker's store
                # on the same full disk) replaced it, and the CLI named the wrong failure
                self._close_loggers(failed, raise_errors=False)

    def _close_loggers(self, failed: bool, *, raise_errors: bool = True) -> None:
        """Closes every logger (an MLflow / W&B run ends as failed when the training raised), then raises the
        first error a close met (a full disk under metrics.jsonl), or with `raise_errors=False` (another error is on
        its way out) logs each as a warning. A second call closes nothing."""
        from neurallayers.training.loggers import tracker_error

        errors = []
        loggers, self.loggers = self.loggers, []
        for lg in loggers:
            try:
                if failed and hasattr(lg, "failed"):
                    lg.failed()
                lg.close()
            except Exception as e:  # the others still close
                errors.append(tracker_error(lg, e, "failed to close", self._resumes_from()))
        if errors and raise_errors:
            raise errors[0]
        for e in errors:
            log.warning("closing a logger failed too (%s: %s)", type(e).__name__, e)

    def _loop(self, stop: StopRequest) -> TrainResult:
        cfg, info = self.cfg, self.info
        s = _Session(self.step, time.monotonic())
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not (self.progress and info.is_main),
                   dynamic_ncols=True)
        self.wrapped.train()  # once: _evaluate puts it back (module.train() walks every submodule, 0.1 ms a step)
        # log lines (evaluations; every log_interval steps without the bar) print above the bar, not through it
        console = contextlib.ExitStack()
        if not bar.disable:
            console.enter_context(logging_redirect_tqdm())
        self._warn_if_patience_cannot_stop()
        in_flight, abandoned = None, False  # the step being trained, logged, evaluated or saved
        try:
            while self.step < cfg.max_steps:
                if (reason := self._stop_requested(stop)) is not None:
                    s.reason = reason
                    break
                t_step = time.monotonic()
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                in_flight = self.step + 1
                loss, grad_norm, ok = self._train_step()
                s.step_times.append(time.monotonic() - t_step)
                s.train_time += s.step_times[-1]
                self.step += 1
                self.tokens_seen += self.tokens_per_step
                self.data_position += cfg.grad_accum
                bar.update(1)
                reason = self._after_step(s, bar, loss=loss, grad_norm=grad_norm, ok=ok, lr=lr)
                in_flight = None
                if reason is not None:
                    s.reason = reason
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or a first one from a caller's own SIGINT handler
            s.reason = "interrupted"
            # the step in flight may be half applied, or its evaluation or log row missing (a checkpoint of it
            # without them: the resume never evaluated that step): saving it would break exact resume
            abandoned = in_flight is not None
            if abandoned:
                log.warning("interrupted during step %d: not saved (the run resumes from its last checkpoint)",
                            in_flight)
            else:
                log.warning("interrupted at step %d: saving a checkpoint", self.step)
        finally:
            bar.close()
            console.close()
        self._end_session(s, abandoned=abandoned)
        if abandoned:
            raise KeyboardInterrupt
        tps = self.tokens_per_step * (self.step - s.start_step) / max(s.train_time, 1e-9)
        return TrainResult(run_dir=self.out, steps=self.step, best_val_loss=self.best_val, final_val_loss=s.final_val,
                           tokens_per_second=tps, wall_seconds=time.monotonic() - s.t0,
                           median_step_seconds=statistics.median(s.step_times) if s.step_times else 0.0,
                           first_step_seconds=s.step_times[0] if s.step_times else 0.0, stopped_reason=s.reason)

    def _warn_if_patience_cannot_stop(self) -> None:
        cfg = self.cfg
        # the evaluations still to come before max_steps (the final one cannot stop the run, also where max_steps is a
        # multiple of eval_interval: that one is the end)
        left = (cfg.max_steps - 1) // cfg.eval_interval - self.step // cfg.eval_interval if cfg.eval_interval else 0
        if (cfg.early_stopping_patience and self.info.is_main and self.has_val and self.step < cfg.max_steps
                and self.bad_evals + left < cfg.early_stopping_patience):
            why = "train.eval_interval is 0 (evaluations only at the end); set --train.eval_interval"
            if cfg.eval_interval:
                why = (f"{left} evaluation{'s' * (left != 1)} before max_steps={cfg.max_steps} "
                       f"(train.eval_interval={cfg.eval_interval}); set --train.eval_interval lower")
            log.warning("train.early_stopping_patience=%d never stops this run: %s", cfg.early_stopping_patience, why)

    def _stop_requested(self, stop: StopRequest) -> str | None:
        """The reason to stop before the next step (until_step, or a signal to any rank), or None."""
        if self.until_step is not None and self.step >= self.until_step:
            return "until_step"
        if dist.any_flag(stop.reason is not None, self.info, self.device):
            reason = stop.reason or "terminated"  # another rank's signal
            log.warning("stopped at step %d (%s): saving a checkpoint", self.step, reason)
            return reason
        return None

    def _after_step(self, s: _Session, bar: tqdm, *, loss: float, grad_norm: float, ok: bool,
                    lr: float) -> str | None:
        """The NaN guard, logging, evaluation, time budget and checkpoint after a step; the reason to stop, or None."""
        cfg = self.cfg
        self.skips_in_a_row = 0 if ok else self.skips_in_a_row + 1
        if ok and self.last_saved == self.step - 1 and self.info.is_main:
            # a finite step trained on the last checkpoint's weights: the older one kept beside it can go
            ckpt.prune_checkpoints(self.out, keep_last=cfg.keep_last)
        if not ok:
            stops, note = self._nan_guard()
            log.warning("non-finite loss %s / grad norm %s: %s", loss, grad_norm, note)
            self._log({"loss": loss, "grad_norm": grad_norm, "nan_guard": note})
            if stops:
                return "nan"
        elif self.step % cfg.log_interval == 0 or self.step == s.start_step + 1:
            self._report(s, bar, loss=loss, grad_norm=grad_norm, lr=lr)
        if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.has_val:
            s.final_val, s.evaluated = self._evaluate(), self.step
            # at max_steps the run ends anyway: it reached max_steps, as where max_steps is no multiple of
            # eval_interval (it was reported as an early stop, and a longer resume read it so)
            if (cfg.early_stopping_patience and self.bad_evals >= cfg.early_stopping_patience
                    and self.step < cfg.max_steps):
                self._stop_early()
                return "early_stopping"
        if cfg.max_minutes is not None and dist.broadcast_flag(
                self._elapsed(s.t0) - self.elapsed_before > 60 * cfg.max_minutes, self.info, self.device):
            return "time_budget"
        # the last step's checkpoint (max_steps, or the time budget's above) is written after the final
        # evaluation, so that it holds its best val loss
        if cfg.save_interval and self.step % cfg.save_interval == 0 and self.step < cfg.max_steps:
            self._save(s.t0, going_on=True)
        return None

    def _report(self, s: _Session, bar: tqdm, *, loss: float, grad_norm: float, lr: float) -> None:
        """The step's loss, rate and speed: to the loggers, the bar, and the console when there is no bar."""
        cfg = self.cfg
        tps = self.tokens_per_step * (self.step - s.start_step) / max(s.train_time, 1e-9)
        if self.step % cfg.log_interval == 0 or self.step == 1:
            # a session's first step shows on the console only: a resumed run's metrics.jsonl and
            # trackers hold the rows of an uninterrupted one
            self._log({"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens_seen,
                       "tokens_per_sec": tps, "elapsed": self._elapsed(s.t0)})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
        if bar.disable and self.info.is_main:
            log.info("step %d/%d: loss %.4f  lr %.3g  %s tokens/s  %s", self.step, cfg.max_steps, loss, lr,
                     f"{tps:,.0f}", _clock(self._elapsed(s.t0)))

    def _stop_early(self) -> None:
        cfg = self.cfg
        # every evaluation so far non-finite (a diverged run): there is no best to name
        than = "a finite val loss" if self.best_val is None else f"a better val loss than {self.best_val:.4f}"
        if self.best_val is not None and cfg.early_stopping_min_delta:
            than = (f"a val loss more than early_stopping_min_delta={cfg.early_stopping_min_delta:g} below the best "
                    f"before it (now {self.best_val:.4f})")
        note = (f"stopped at step {self.step}: {self.bad_evals} evaluations without {than} "
                f"(early_stopping_patience={cfg.early_stopping_patience})")
        if self.info.is_main:
            log.info("early stopping: %s", note)
        self._log({"early_stopping": note})  # in metrics.jsonl, as the NaN guard's stops are

    def _end_session(self, s: _Session, *, abandoned: bool) -> None:
        """A finished run's final evaluation and weights; the session's last checkpoint; samples and the plot."""
        cfg, info = self.cfg, self.info
        terminal = s.reason not in ("until_step", "interrupted", "terminated")
        self.early_stopped = s.reason == "early_stopping"
        if terminal and self.has_val:
            if self.step == s.start_step > 0:  # a resume with nothing to train: the step's evaluation stands
                s.final_val = logged_val_loss(self.out / "metrics.jsonl", self.step)
                s.evaluated = self.step if s.final_val is not None else -1
            # the final weights, unless the loop evaluated them: not so at an eval_interval step that the NaN guard
            # stopped before its evaluation (the end took it for evaluated, and a resume of that session did evaluate)
            if s.evaluated != self.step:
                # the time budget pauses a run that a resume goes on with: its checkpoint holds what an uninterrupted
                # run holds at this step, so it is written before this evaluation, which a resume undoes (an extra
                # evaluation changed the best weights and the early-stopping count, and the later steps' log)
                paused = s.reason == "time_budget" and self.step < cfg.max_steps
                if paused and self.last_saved != self.step:
                    self._save(s.t0, going_on=False)
                s.final_val = self._evaluate(time_budget=paused)
                if not paused and self.last_saved == self.step:
                    # a resume with nothing to train, of a checkpoint with no evaluation (stopped there, then ended
                    # with max_steps at it): written again, it holds this evaluation's best val loss, early-stopping
                    # count and best weights, as a run's last checkpoint does, and the next resume goes on from them
                    self.last_saved = -1
        if terminal and self.best_val is None:  # never evaluated: the final weights are the model
            state = dist.model_state(self.wrapped, info)
            dist.on_rank_zero(lambda: ckpt.save_model(self.out, state), info)
        if self.last_saved != self.step and not abandoned:
            self._save(s.t0, going_on=False)
        elif self.last_saved == self.step:  # the loop's checkpoint is the session's last (until_step, a signal after
            # it): no step of this session trains on it, so the older one it kept beside it goes, as a final save's
            dist.on_rank_zero(lambda: ckpt.prune_checkpoints(self.out, keep_last=self.cfg.keep_last,
                                                             keep_before=self._keep_before(going_on=False)), info)
        if terminal:
            self._finish()

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
                save_samples(self.out / "samples.txt", text)
        elif self.info.is_main or sharded:
            write_samples(self.model, self.tokenizer, self.cfg, self.out / "samples.txt", self.device,
                          write=self.info.is_main, fixed_length=sharded)
        if self.info.is_main:
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")

    def _log(self, metrics: dict) -> None:
        """Every rank calls this at the same steps; rank 0 alone holds the loggers, and its error (a full disk under
        metrics.jsonl) is raised on every rank, which would otherwise die in their next collective."""
        dist.on_rank_zero(functools.partial(self._log_here, metrics), self.info)

    def _log_here(self, metrics: dict) -> None:
        from neurallayers.training.loggers import tracker_error

        for lg in self.loggers:
            try:
                lg.log(metrics, self.step)
            except WriteError:  # metrics.jsonl's full disk: one line already
                raise
            except Exception as e:  # a tracker's full disk or lost server: one line, and how the run goes on
                raise tracker_error(lg, e, f"failed at step {self.step}", self._resumes_from()) from e

    def _resumes_from(self) -> str:
        if self.last_saved < 0:
            return "no checkpoint was saved yet: the run starts again"
        return f"the run resumes from its last checkpoint (step {self.last_saved})"

    def _elapsed(self, t0: float) -> float:
        return self.elapsed_before + time.monotonic() - t0


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}:{sec:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{sec:02d}"

