"""Before a resume builds anything: which checkpoint it goes on from, whether it belongs to this run's model and
vocabulary, the config it runs under, and the run's metrics.jsonl as of that checkpoint. Failures are one clear line,
before the first step (and, for a changed model config, before the corpus is tokenized)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from neurallayers.config import ModelConfig
from neurallayers.files import file_in_the_way, write_text_atomic
from neurallayers.training import checkpoint as ckpt
from neurallayers.training.config import RunConfig
from neurallayers.weights import CheckpointError

log = logging.getLogger("neurallayers.training")


def resume_arg(resume: object) -> bool | str | os.PathLike:
    """`resume` as fit() reads it: None is False (no resume, as transformers' resume_from_checkpoint=None); anything
    but a bool or a path is refused in one line (None and 0 reached Path() as "expected str, bytes or os.PathLike")."""
    if resume is None:
        return False
    if not isinstance(resume, bool | str | os.PathLike):
        raise ValueError(f"resume={resume!r}: must be a path (a str or pathlib.Path) of a checkpoint or run, True "
                         f"(the newest checkpoint) or False/None (a fresh run), got {type(resume).__name__}")
    if isinstance(resume, str) and not resume.strip():  # Path("") is the current folder
        raise ValueError(f"resume={resume!r}: name a checkpoint or run folder, or pass True (the newest checkpoint) "
                         "or False")
    return resume


def resume_target(out: Path, resume: bool | str | os.PathLike | None) -> Path | None:
    """The checkpoint folder to resume from, or None for a fresh run. Fails early with one clear line."""
    resume = resume_arg(resume)
    # the messages name the CLI's flags and the API's arguments alike: `train` leaves these checks to this one place
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a run directory; choose another output directory (--out)")
    if (blocker := file_in_the_way(out)) is not None:
        raise ValueError(f"{out}: {blocker} is a file, not a folder; choose another output directory (--out)")
    ckpt.recover_set_aside(out)  # before the checkpoints are listed, so that the newest is the run's newest
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


def saved_config(out: Path) -> RunConfig:
    """The run's config.yaml, read once for a resume; a run from before data.document_bos (document_frame) was
    recorded had no bos (no frame)."""
    saved = RunConfig.from_yaml(out / "config.yaml", saved=True)
    saved.data.document_bos = bool(saved.data.document_bos)
    saved.data.document_frame = bool(saved.data.document_frame)
    return saved


def as_saved(saved: RunConfig, run: RunConfig) -> RunConfig:
    """A resume's run config: tokenized as the run began (data.document_bos, unless told: as `saved` says), and
    started from what the run started from (train.init_from: a resume goes on from its own checkpoint, so another
    source would only make config.yaml and `info` name the wrong one)."""
    if run.train.init_from not in (None, saved.train.init_from):
        log.warning("train.init_from=%s is not used: a resume goes on from the run's own checkpoint (the run started "
                    "from %s)", run.train.init_from, saved.train.init_from or "scratch")
    data = run.data
    if data.document_bos is None:
        data = dataclasses.replace(data, document_bos=saved.data.document_bos)
    if data.document_frame is None:
        data = dataclasses.replace(data, document_frame=saved.data.document_frame)
    return dataclasses.replace(run, data=data, train=dataclasses.replace(run.train, init_from=saved.train.init_from))


def check_same_model(out: Path, saved: RunConfig, model: ModelConfig) -> None:
    if saved.model != model:
        diff = changes(saved.model.to_dict(), model.to_dict())
        raise ValueError(f"cannot resume {out}: the model config differs from the saved one ({diff})")


def check_resume(out: Path, target: Path, run: RunConfig, saved: RunConfig) -> tuple[dict, dict, RunConfig, bool]:
    """Loads the checkpoint and checks it belongs to this model and vocabulary (before any training), `saved` being
    the run's config.yaml (saved_config). Returns the weights, the training state, the run config and
    whether the data changed. A resume asking for another data.tokenizer or vocab_size is refused."""
    check_same_model(out, saved, run.model)
    # the run's token ids mean its tokenizer's tokens: another one is refused (RELIABILITY 9). It was set aside with
    # a warning, but the data still counted as changed, so the best weights started over on unchanged data and a
    # diverging resume overwrote model.safetensors
    for name in ("tokenizer", "vocab_size"):
        if getattr(run.data, name) != getattr(saved.data, name):
            raise ValueError(f"cannot resume {out}: data.{name}={getattr(run.data, name)!r} differs from the run's "
                             f"{getattr(saved.data, name)!r}; a run keeps the tokenizer it was trained with (drop "
                             f"--data.{name}, or start a new run for another tokenizer)")
    # where the token cache lives changes no token: a moved cache is the same data
    same_cache = dataclasses.replace(saved.data, cache_dir=run.data.cache_dir)
    changed = same_cache != run.data
    if changed:
        diff = changes(dataclasses.asdict(same_cache), dataclasses.asdict(run.data))
        log.warning("the data settings differ from the saved run (%s): training continues on the new data", diff)
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
    state.setdefault("tokens_seen", int(state["step"]) * state["global_batch"] * state["grad_accum"]
                     * saved.model.block_size)
    state.setdefault("data_position", int(state["step"]) * state["grad_accum"])
    if state["data_position"] < 0:  # the next step's batches are drawn from it
        raise CheckpointError(f"{target / 'state.pt'}: data_position={state['data_position']} must be >= 0")
    return model_sd, state, run, changed


def changes(old: dict, new: dict) -> str:
    """"field: old -> new; ..." for the fields whose values differ."""
    return "; ".join(f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in old if old[k] != new.get(k))


def truncate_metrics(path: Path, step: int) -> None:
    """Keeps only metrics.jsonl lines up to `step` (atomic rewrite), less the evaluation a session that ran out of
    its time budget made after its checkpoint of `step` (an uninterrupted run makes none there)."""
    import json

    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if not after_checkpoint(json.loads(line), step):
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the crash
    write_text_atomic(path, "".join(x + "\n" for x in keep))


def after_checkpoint(row: dict, step: int) -> bool:
    """Whether metrics row `row` was logged after the checkpoint of `step` was written: a later step's, or the time
    budget's evaluation on the way out of the session that wrote it (trainer._end_session)."""
    return row.get("step", 0) > step or (row.get("step") == step and row.get("time_budget") is True)


def logged_val_loss(path: Path, step: int) -> float | None:
    """The val loss metrics.jsonl holds for `step` (the last such line), or None."""
    from neurallayers.training.loggers import read_metrics

    vals = [float(r["val_loss"]) for r in read_metrics(path)
            if r.get("step") == step and isinstance(r.get("val_loss"), (int, float))]
    return vals[-1] if vals else None

