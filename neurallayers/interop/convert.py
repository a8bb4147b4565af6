"""`convert(src, dst, to=...)`: a NeuralLayers run directory <-> a Hugging Face model folder.

Either kind of source is read with `neurallayers.load`, so an HF folder can also be rewritten as HF (for
example to reshard it, or to turn opted-in pickle weights into safetensors). The destination is built in a
temporary folder beside it (inside it, where it exists) and renamed into place at the end, so a failed conversion
leaves no half-written dst.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Literal

import torch

from neurallayers.files import WriteError, exclusive

TARGETS = ("hf", "run")
TEMP = ".convert.tmp-"  # + pid: the folder a conversion into an existing folder builds its files in
LOCK = f"{TEMP}lock"  # held while a conversion fills an existing folder; a killed one's is no one's model either


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: Literal["hf", "run"] | None = None,
            max_shard_size: int | str | None = None, allow_pickle: bool = False, overwrite: bool = False,
            dtype: torch.dtype | str | None = None) -> Path:
    """Converts a run directory or an HF folder `src` into `dst`.

    Args:
        src: a NeuralLayers run directory (config.yaml) or a Hugging Face folder (config.json).
        dst: the folder to write; it must not exist or be empty, unless `overwrite`.
        to: "hf" writes config.json, safetensors weights and tokenizer files that `transformers` loads;
            "run" writes config.yaml, model.safetensors and tokenizer files that `neurallayers.load` reads.
            None (the default): the other kind than `src` (a run directory becomes an HF folder and back).
        max_shard_size: for to="hf", the largest weight shard: bytes, or a size with its unit as transformers'
            save_pretrained takes it ("500MB", "2GB", "1GiB"); None: one file.
        allow_pickle: accept an HF `src` whose only weights are pickles (pytorch_model.bin, or its shards with
            pytorch_model.bin.index.json), read with weights_only=True.
        overwrite: replace a non-empty `dst`.
        dtype: the weights' dtype in `dst` (a torch.dtype, or "fp32" / "float32", "bf16" / "bfloat16", "fp16" /
            "float16", "fp64" / "float64"). None (the default): the source's, as transformers 5 loads and saves a
            folder: an HF folder's config.json `dtype` (or `torch_dtype`; where it names none, its weights' own), a
            run's stored weights.

    Returns:
        The `dst` folder.

    Raises:
        ValueError: a bad `to` or `dtype`, a `src` that is neither kind, a non-empty `dst` without `overwrite`, a
            `dst` that is or holds `src`, a `max_shard_size` with to="run", a run target from a source without a
            tokenizer, or another conversion filling `dst` meanwhile.
        FileNotFoundError: `src` does not exist.
        WriteError: `dst` could not be written (a full or read-only disk); nothing of it is left behind.
    """
    from neurallayers.api import checkpoint_run, is_checkpoint_folder, load, resolve_model_path
    from neurallayers.interop.hf_write import shard_bytes
    from neurallayers.weights import weight_dtype

    dtype = weight_dtype(dtype)
    max_shard_size = shard_bytes(max_shard_size)  # before the model is read
    if to is not None and to not in TARGETS:
        raise ValueError(f"to={to!r}: must be one of {', '.join(map(repr, TARGETS))}")
    src, dst = resolve_model_path(src), Path(dst).expanduser()  # `~` the home folder for both, as load reads src
    if not src.exists():
        raise FileNotFoundError(f"src {src} does not exist")
    # a run's checkpoints/step-N converts as the run with that step's weights, as load() reads it
    checkpoint = src.is_dir() and is_checkpoint_folder(src)
    run_like = checkpoint or (src.is_dir() and (src / "config.yaml").is_file())
    if not src.is_dir() or not (run_like or (src / "config.json").is_file()):
        raise ValueError(f"src {src} is neither a NeuralLayers run directory (config.yaml) or one of its checkpoints "
                         "nor a Hugging Face model folder (config.json)")
    if to is None:
        to = "hf" if run_like else "run"
    if max_shard_size is not None and to != "hf":
        raise ValueError("max_shard_size (CLI: --max-shard-size) only applies to to='hf' (CLI: --to hf); this "
                         "conversion writes a run directory")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"dst {dst} is a file; give a folder")
    if dst.resolve() == src.resolve():  # before "not empty", whose advice (overwrite) these refuse
        raise ValueError(f"dst {dst} is the source folder; write to another folder")
    if dst.resolve() in src.resolve().parents:  # overwrite would delete the source with the rest of dst
        raise ValueError(f"dst {dst} holds the source folder {src}; write to a folder outside it")
    # what a conversion killed while it wrote leaves inside (it is built there): no reason to ask for overwrite
    if dst.exists() and any(not p.name.startswith(TEMP) for p in dst.iterdir()) and not overwrite:
        raise ValueError(f"dst {dst} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    if overwrite and (training := _training_state(dst)):  # not ours to delete
        raise ValueError(f"dst {dst} {training}")
    with warnings.catch_warnings():  # load()'s "slow on this CPU" warnings: convert computes nothing
        warnings.filterwarnings("ignore", message=r"(fp16|bf16) weights on a CPU")
        # the source's dtype by default, as transformers 5's from_pretrained and save_pretrained keep it: load()'s
        # dtype="auto" reads an HF folder's config.json dtype (or its weights') by transformers' own rule, and a run's
        # stored dtype (read as float32, a resharded bf16 folder came out twice its size)
        model, tokenizer = load(src, allow_pickle=allow_pickle, dtype=dtype or "auto")
    if to == "run" and tokenizer is None:
        raise ValueError(f"src {src} has no tokenizer files (tokenizer.json or vocab.json + merges.txt); "
                         "a run directory needs one")
    target = Path(os.path.abspath(dst))  # "." or "..": no name to build the temporary sibling's from
    # an existing folder is filled in place, so its new files are built inside it, on its own file system: built
    # beside a link to another one (or a mount point), they were copied across after the old ones were deleted, and
    # a full disk left a truncated model in their place
    inside = target.is_dir()
    tmp = target / f"{TEMP}{os.getpid()}" if inside else target.with_name(f".{target.name}.tmp-{os.getpid()}")
    # one conversion at a time fills a folder: a second one took the first one's temporary folder for a killed
    # run's, deleted it, and the first then deleted the second's files and failed, leaving the folder empty
    busy = f"another conversion is writing {dst}; wait for it to end or choose another dst"
    with contextlib.ExitStack() as guard:
        try:
            if inside:
                guard.enter_context(exclusive(target / LOCK, busy))
            shutil.rmtree(tmp, ignore_errors=True)
            if to == "hf":
                from neurallayers.interop.hf import save_hf

                save_hf(model, tokenizer, tmp, max_shard_size=max_shard_size)
            else:
                _write_run(model, tokenizer, tmp)
            _keep_sampling(checkpoint_run(src) if checkpoint else src, tmp)  # a checkpoint samples as its run does
            if to == "hf":
                _keep_special_ids(src, tmp)
            if target.exists():
                if not inside:  # made meanwhile by another conversion
                    guard.enter_context(exclusive(target / LOCK, busy))
                _fill(target, tmp)
            else:
                os.replace(tmp, target)
        except OSError as e:  # a full disk or a read-only one: one line, not a traceback from inside the writers
            why = os.strerror(e.errno) if e.errno else str(e)
            raise WriteError(e.errno, f"could not write {dst}: {why}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _training_state(dst: Path) -> str | None:
    """Why overwrite may not replace `dst`, or None: it is or holds training state, a run (its checkpoints/), one of
    its checkpoints (`convert run run/checkpoints/step-2 --overwrite`), or a folder of either (`run/checkpoints`: every
    checkpoint of the run; `runs`: every run in it)."""
    from neurallayers.api import is_checkpoint_folder

    only = "overwrite replaces model folders only: write to another folder"
    if (dst / "checkpoints").is_dir():
        return f"holds a training run (checkpoints/); {only}, or remove that run yourself"
    if not dst.is_dir():
        return None
    if is_checkpoint_folder(dst):
        return f"is a training checkpoint (its weights and training state); {only}"
    if any(is_checkpoint_folder(p) or (p / "checkpoints").is_dir() for p in dst.iterdir() if p.is_dir()):
        return f"holds training checkpoints or runs (a run's checkpoints/ folder, a folder of runs); {only}"
    return None


def _fill(folder: Path, tmp: Path) -> None:
    """`folder`'s entries replaced by those of `tmp`, a folder inside it, the folder itself kept: replaced by another
    folder, `convert SRC .` left the shell that ran it in a deleted folder, where `ls` showed nothing. The new files go
    in as save_hf puts a save in place (hf_write.commit: renames, the weights' switch last), and only then the old
    entries the conversion did not write are removed: they were deleted first, and a kill before the renames left a
    folder of no model, or of half the new one."""
    from neurallayers.interop.hf_write import adopt_shard_names, commit

    adopt_shard_names(tmp, folder)
    written = {p.relative_to(tmp) for p in tmp.rglob("*")}
    commit(tmp, folder, set())
    _remove_unwritten(folder, folder, written, keep={tmp, folder / LOCK})


def _remove_unwritten(top: Path, folder: Path, written: set[Path], *, keep: set[Path]) -> None:
    for old in folder.iterdir():
        rel = old.relative_to(top)
        if old in keep:
            continue
        if rel not in written:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        elif old.is_dir() and not old.is_symlink():  # a folder both have (1_Pooling/): its old files go too
            _remove_unwritten(top, old, written, keep=keep)


def _keep_sampling(src: Path, folder: Path) -> None:
    """The source's generation settings (generation_config.json: do_sample, temperature, top_k, ..., and every other
    setting transformers' generate and the text-generation pipeline read, such as max_new_tokens, max_length,
    num_beams) go along into the converted folder, a run directory included: generate, chat, batch, serve and the
    pipeline use them there as well. The special ids are save_hf's (a source's fill its nulls: _keep_special_ids)."""
    from neurallayers.files import write_text_atomic
    from neurallayers.interop.hf import generation_settings

    kept = generation_settings(src)  # a bad file is named (an encoder's load never reads it)
    if not kept:
        return
    out = folder / "generation_config.json"
    written = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    write_text_atomic(out, json.dumps({**written, **kept}, indent=2) + "\n")


def _keep_special_ids(src: Path, folder: Path) -> None:
    """save_hf writes the tokenizer's bos/eos/pad ids, null where it has none (or there is no tokenizer); an HF
    source's own ids fill those nulls (config.json and generation_config.json alike), or transformers' generate on
    the copy would never stop at eos."""
    from neurallayers.interop.hf import read_json, write_json
    from neurallayers.interop.hf_generation import SPECIAL_IDS

    for name in ("config.json", "generation_config.json"):
        if not (src / name).is_file() or not (folder / name).is_file():
            continue
        source, written = read_json(src / name), read_json(folder / name)
        kept = {k: source[k] for k in SPECIAL_IDS if source.get(k) is not None and written.get(k) is None}
        if kept:
            write_json(folder / name, {**written, **kept})


def _write_run(model: object, tokenizer: object, folder: Path) -> None:
    """A run directory holding only the final weights: config.yaml, model.safetensors, tokenizer files."""
    from neurallayers.training.config import RunConfig
    from neurallayers.weights import save_safetensors

    folder.mkdir(parents=True)
    RunConfig(model=model.config).to_yaml(folder / "config.yaml")
    save_safetensors({k: v.detach() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    tokenizer.save(folder)
