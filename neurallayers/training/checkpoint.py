"""Run directories: atomic checkpoints, exact-resume state, and loading a trained model back.

Layout (see DESIGN.md):
    config.yaml, tokenizer.json (+ tokenizer_config.json), model.safetensors (best by val loss, or final),
    checkpoints/step-N/{model.safetensors, state.pt, best.safetensors (the best weights then), COMPLETE},
    metrics.jsonl, samples.txt, loss.png

A checkpoint is written into `checkpoints/.tmp-step-N-<pid>/`, every file fsynced, the `COMPLETE` marker
written last, then the folder renamed to `step-N`. Nothing partial ever sits under a final name, so a crash
mid-save leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from neurallayers.files import WriteError
from neurallayers.training.config import RunConfig
from neurallayers.weights import (
    CheckpointError,
    check_layer_count,
    check_state_dict,
    fsync_dir,
    fsync_file,
    read_safetensors,
    save_safetensors,
    stored_dtype,
    torch_load_safe,
)

log = logging.getLogger("neurallayers.training")

COMPLETE = "COMPLETE"
# the run's best weights as of the checkpoint (a hard link to model.safetensors then): a later best replaces
# model.safetensors, and a kill before the next checkpoint left no copy of the best a resume must go on from
BEST = "best.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SET_ASIDE = re.compile(r"^\.tmp-old-step-(\d+)-\d+$")  # a complete step save_checkpoint is replacing
# the temp names (files.write_text_atomic's, weights.save_safetensors's, plots') of the files a run writes
_TEMP_FILE = re.compile(r"^\.(config\.yaml|tokenizer(_config)?\.json|model\.safetensors|metrics\.jsonl|samples\.txt|"
                        r"loss\.png)\.tmp-\d+$")


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (disk full, permissions); the previous one is untouched."""


# ----- RNG state as tensors (so weights_only loading needs no allowlist) -----

def rng_state() -> dict[str, torch.Tensor]:
    """Python, NumPy and torch (+CUDA) RNG states, each as a tensor."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


# what every state.pt holds (trainer._save writes these and more); a resume reads each
STATE_KEYS = ("step", "optimizer", "scheduler", "best_val_loss", "bad_evals", "elapsed", "rng")
# the type of each entry trainer._save writes (the later ones are missing from older checkpoints): another type, from
# a hand-edited or foreign file, failed later with a bare TypeError or AttributeError that named no file
_STATE_TYPES = {"step": int, "optimizer": dict, "scheduler": dict, "best_val_loss": (int, float), "bad_evals": int,
                "elapsed": (int, float), "rng": dict, "scaler": dict, "world_size": int, "global_batch": int,
                "grad_accum": int, "eval_windows": int, "seed": int, "mask_prob": (int, float), "data_digest": str,
                "tokens_seen": int, "data_position": int}


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if gauss != gauss else gauss))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----- listing -----

def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (`step-N` with a COMPLETE marker), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def checkpoint_identities(run_dir: str | os.PathLike) -> list[tuple[Path, int, int]]:
    """Each complete checkpoint with its marker's inode and mtime: what tells a checkpoint from another one saved under
    the same name (a session that resumed from an older step, set this one aside and saved the step again)."""
    found = []
    for p in list_checkpoints(run_dir):
        try:
            marker = (p / COMPLETE).stat()
        except FileNotFoundError:  # pruned meanwhile: gone, as a checkpoint not listed
            continue
        found.append((p, marker.st_ino, marker.st_mtime_ns))
    return found


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def last_checkpoint_before(run_dir: str | os.PathLike, step: int) -> Path | None:
    """The newest complete checkpoint of a step before `step`, or None."""
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < step]
    return older[-1] if older else None


def stopped_before_first_checkpoint(run_dir: str | os.PathLike) -> bool:
    """A run that began training and stopped (killed, out of memory, a crash) before it wrote a checkpoint: its config
    and metrics, perhaps the weights of an evaluation, and nothing to resume from. A finished run always has a
    checkpoint of its last step; a converted model has no metrics."""
    run_dir = Path(run_dir)
    return ((run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
            and latest_checkpoint(run_dir) is None)


def checkpoint_step(path: str | os.PathLike) -> int:
    m = _STEP_DIR.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint folder (expected a name like step-100)")
    return int(m.group(1))


def run_checkpoint(path: str | os.PathLike) -> Path | None:
    """`path` spelt `RUN/checkpoints/step-N`, where it is such a folder of a run directory RUN (holding config.yaml),
    else None. `path` may hold `..` (`../step-4` typed inside step-8) or pass through symlinks (a link to the step
    folder, a linked run or checkpoints/ folder): each reading, as written (the run keeps the name it was given) and
    with every link followed, counts only where it is that very folder."""
    path = Path(path)
    if not path.is_dir():
        return None
    for folder in (Path(os.path.abspath(path)), path.resolve()):
        if (_STEP_DIR.match(folder.name) and folder.parent.name == "checkpoints"
                and (folder.parent.parent / "config.yaml").is_file() and folder.is_dir()
                and os.path.samefile(folder, path)):
            return folder
    return None


def set_aside(run_dir: str | os.PathLike, paths: list[Path], *, link: bool = False) -> Path:
    """Moves `paths` (checkpoints, best weights of a run) into the run's `abandoned/` folder, each under a name not
    taken there yet; returns that folder. A resume from an older checkpoint starts another history: the newer
    checkpoints must not be what the next --resume continues, yet are kept for the user to look at. `link`: files
    stay where they are too (a hard link, or a copy), for the caller to replace atomically."""
    folder = Path(run_dir) / "abandoned"
    folder.mkdir(exist_ok=True)
    for path in paths:
        dest, n = folder / path.name, 1
        while dest.exists():
            n += 1
            dest = folder / f"{path.stem}-{n}{path.suffix}"
        if link:
            _keep_best(path, dest)
        else:  # a rename, or a copy where checkpoints/ is a link to another file system (os.replace: "cross-device")
            shutil.move(path, dest)
    return folder


def recover_set_aside(run_dir: str | os.PathLike) -> list[Path]:
    """Puts back under its name each complete step that save_checkpoint moved aside to replace it, killed before the
    new one took its place (`.tmp-old-step-N-<pid>` and no `step-N`): a resume went on from an older checkpoint, and
    clean_incomplete deleted the step as a leftover. Every process of a run calls this: one of them moves each.
    Returns the steps this call put back."""
    root = Path(run_dir) / "checkpoints"
    back = []
    for p in sorted(root.glob(".tmp-old-step-*")) if root.is_dir() else []:
        found = _SET_ASIDE.match(p.name)
        final = root / f"step-{found[1]}" if found else None
        if final is not None and p.is_dir() and (p / COMPLETE).is_file() and not final.exists():
            try:
                os.replace(p, final)
            except FileNotFoundError:  # another process of the run put it back first
                continue
            back.append(final)
    if back:
        fsync_dir(root)
        log.info("put back %s, which a save killed mid-way had moved aside", ", ".join(p.name for p in back))
    return back


def clean_incomplete(run_dir: str | os.PathLike) -> list[Path]:
    """Removes temp folders and step folders without a COMPLETE marker (leftovers of a crash), and the temp files a
    crash left beside the run's files (`.model.safetensors.tmp-<pid>`: as large as the model, once per kill; a folder
    since weights.save_safetensors writes in one)."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    for p in Path(run_dir).glob(".*.tmp-*"):
        if _TEMP_FILE.match(p.name) and not p.is_symlink() and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif _TEMP_FILE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    if root.is_dir():
        for p in root.iterdir():
            partial = p.name.startswith(".tmp-") or (_STEP_DIR.match(p.name) and not (p / COMPLETE).is_file())
            if partial and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


# ----- saving -----

def save_checkpoint(run_dir: str | os.PathLike, *, step: int, model_state: dict[str, torch.Tensor], state: dict,
                    keep_last: int, best: Path | None = None, keep_before: int | None = None) -> Path:
    """Writes `checkpoints/step-<step>/` atomically and prunes all but the newest `keep_last` complete ones (and
    the one prune_checkpoints keeps for `keep_before`).

    Args:
        model_state: the model's full state dict (saved as model.safetensors).
        state: optimizer, scheduler, scaler, step, counters, RNG, data position: tensors and plain containers
            only (it must load with `torch.load(weights_only=True)`).
        best: the run's best weights file (model.safetensors), kept beside them as best.safetensors.

    Raises:
        CheckpointWriteError: the write failed; the temp folder is removed and older checkpoints are intact.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_safetensors(model_state, tmp / "model.safetensors")
        _write_state(state, tmp / "state.pt")
        if best is not None:
            _keep_best(best, tmp / BEST)
        _write_marker(tmp / COMPLETE, step)
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. interval save then final save): replace it
            old = root / f".tmp-old-step-{step}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except WRITE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _put_back(root / f".tmp-old-step-{step}-{os.getpid()}", final)
        prev = latest_checkpoint(run_dir)
        keep = f"; the previous checkpoint {prev} is intact" if prev else ""
        raise _write_error(e, f"could not write checkpoint step-{step} under {root}", keep, root) from e
    prune_checkpoints(run_dir, keep_last=keep_last, keep_before=keep_before)
    return final


# what a failed write raises: OSError, and torch's zip writer and safetensors their own (a full disk included)
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _write_error(e: BaseException, what: str, keep: str, where: Path) -> CheckpointWriteError:
    """One line for a failed write: why (a full disk said so, whatever error reported it), and what is intact."""
    errno_ = getattr(e, "errno", None)
    try:
        full = errno_ == errno.ENOSPC or shutil.disk_usage(where if where.exists() else where.parent).free < 2**24
    except OSError:
        full = False
    why = "the disk is full" if full else (getattr(e, "strerror", None) or _first_line(e))
    message = f"{what}: {why}{keep}"
    return CheckpointWriteError(errno_, message) if errno_ is not None else CheckpointWriteError(message)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _put_back(old: Path, final: Path) -> None:
    """After a failed replace of `final`: the complete checkpoint moved aside goes back under its name (a `.tmp-`
    folder is what clean_incomplete deletes)."""
    if old.is_dir() and not final.exists():
        try:
            os.replace(old, final)
        except OSError:
            log.warning("the checkpoint %s was moved to %s and could not be moved back", final, old)


def _keep_best(best: Path, dest: Path) -> None:
    """A hard link (no space while model.safetensors holds the same weights; it is replaced by a rename, never
    rewritten in place), or a copy where the file system has none."""
    try:
        os.link(best, dest)
    except OSError:
        shutil.copyfile(best, dest)
        fsync_file(dest)


def _write_state(state: dict, path: Path) -> None:
    torch.save(state, path)
    fsync_file(path)


def _write_marker(path: Path, step: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(f"step {step}\n")
        f.flush()
        os.fsync(f.fileno())


def prune_checkpoints(run_dir: str | os.PathLike, *, keep_last: int, keep_before: int | None = None) -> None:
    """Deletes the oldest complete checkpoints beyond `keep_last`; incomplete folders never count. `keep_before`: the
    newest checkpoint of a step before it stays too (the trainer's last one from before a divergence)."""
    spare = last_checkpoint_before(run_dir, keep_before) if keep_before is not None else None
    for p in list_checkpoints(run_dir)[:-keep_last]:
        if p == spare:
            continue
        # the marker first: rmtree goes in directory order, and a kill mid-way left a marked folder without its
        # weights or state, listed as complete (and offered as "an older checkpoint may load")
        (p / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(p, ignore_errors=True)


def save_model(run_dir: str | os.PathLike, model_state: dict[str, torch.Tensor]) -> Path:
    """The run's `model.safetensors` (best or final weights), written atomically.

    Raises:
        CheckpointWriteError: the write failed; the previous model.safetensors is intact.
    """
    path = Path(run_dir) / "model.safetensors"
    try:
        return save_safetensors(model_state, path)
    except WRITE_ERRORS as e:
        keep = "; the previous one is intact" if path.exists() else ""
        raise _write_error(e, f"could not write {path}", keep, path.parent) from e


def copy_model(checkpoint: Path, run_dir: str | os.PathLike, *, name: str = "model.safetensors") -> Path:
    """A checkpoint's weights (`name`: its model.safetensors, or BEST) as the run's `model.safetensors`, atomically
    (temp name, then rename)."""
    path = Path(run_dir) / "model.safetensors"
    part = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(Path(checkpoint) / name, part)
        fsync_file(part)
        os.replace(part, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut
    except WRITE_ERRORS as e:
        part.unlink(missing_ok=True)
        raise _write_error(e, f"could not write {path}", "", path.parent) from e
    return path


# ----- loading -----

def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state dict, training state) of one complete checkpoint folder.

    Raises:
        CheckpointError: an incomplete folder, a corrupt file, or a state.pt holding code/objects.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {path}")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path} is an incomplete checkpoint (no {COMPLETE} marker)")
    model_state = read_safetensors(path / "model.safetensors")
    state = torch_load_safe(path / "state.pt")
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path / 'state.pt'} is not a training state (no 'step')")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:  # a hand-edited or foreign file: a resume would fail later on a bare KeyError
        raise CheckpointError(f"{path / 'state.pt'} is not a complete training state: no {', '.join(missing)}")
    for key, kind in _STATE_TYPES.items():
        if key in state and not isinstance(state[key], kind):
            raise CheckpointError(f"{path / 'state.pt'} is not a training state: its {key!r} is a "
                                  f"{type(state[key]).__name__}")
    bad = _non_finite_slots(state["optimizer"])
    if bad:  # the first step would turn every weight NaN, and the run go on saving them as checkpoints
        more = f", ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise CheckpointError(f"{path / 'state.pt'}: the optimizer state holds NaN/Inf values: "
                              f"{', '.join(bad[:5])}{more}")
    return model_state, state


def _non_finite_slots(optimizer: dict) -> list[str]:
    """"param.slot" names of the optimizer state's floating tensors (exp_avg ...) holding NaN or Inf."""
    slots = optimizer.get("state")
    if not isinstance(slots, dict):
        return []
    return [f"{param}.{name}" for param, values in slots.items() if isinstance(values, dict)
            for name, v in values.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_run(run_dir: str | os.PathLike, *, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, weights: Path | None = None) -> tuple[nn.Module, object, RunConfig]:
    """Model (eval mode), tokenizer and RunConfig of a finished or running run directory.

    The weights are `weights` (a checkpoint's model.safetensors) where given, else `model.safetensors` (best/final),
    or the newest complete checkpoint's when that is missing. They keep their stored dtype (weights.stored_dtype: a
    bf16 file loads as bf16, bit for bit; training saves float32 master weights) unless `dtype` names another.

    Raises:
        FileNotFoundError: no config.yaml or no weights.
        CheckpointError: weights that do not fit the config (missing/extra/mis-shaped keys, NaN/Inf).
    """
    from neurallayers.data import Tokenizer
    from neurallayers.models import build_model
    from neurallayers.models.encoder import drop_unused_pooler

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.yaml")
    run = RunConfig.from_yaml(run_dir / "config.yaml", saved=True)
    weights = run_dir / "model.safetensors" if weights is None else Path(weights)
    # only when nothing is there: a folder, FIFO or broken link is refused below, not swapped for other weights
    if not os.path.lexists(weights) and weights == run_dir / "model.safetensors":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{run_dir} has no model.safetensors and no complete checkpoint")
        weights = ckpt / "model.safetensors"
    sd = drop_unused_pooler(run.model, read_safetensors(weights), source=str(weights))  # a run saved with one
    check_layer_count(sd, run.model.n_layer, source=str(weights))  # first: the meta model has a module a layer
    with torch.device("meta"):  # shapes only: a config.yaml edited to a huge model must not allocate it first
        check_state_dict(build_model(run.model), sd, source=str(weights))
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        model = build_model(run.model)
    # cast before the copy: a float32 model in between turned a bf16 run into float32 (and would round float64)
    model.to(device=device or "cpu", dtype=dtype or stored_dtype(sd))
    model.load_state_dict(sd)  # copies in place, so tied weights stay tied
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no tokenizer.json")
    return model.eval(), Tokenizer.load(run_dir), run

