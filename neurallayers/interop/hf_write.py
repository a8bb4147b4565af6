"""Writing a Hugging Face folder over an earlier save, all or nothing as far as a file system allows.

Every new file is written whole into a staging folder inside the target (the same file system, so the moves are
renames), and only then renamed into place: a full disk, a permission error or a kill while writing leaves the earlier
save as it was. The renames go config, generation config, tokenizer and pipeline files first, then the weights, whose
last rename is the one that switches what loads: the index (its shards were written under names the earlier save's
index does not use, so no loadable shard is ever replaced) or model.safetensors. The earlier save's weight files are
removed after that. A kill between the metadata renames and that last one (a moment, after every byte is written)
leaves new metadata beside the old weights; a file whose content is unchanged is not renamed at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from neurallayers.checks import is_int
from neurallayers.files import WriteError, fsync_dir, keep_mode, process_alive
from neurallayers.interop.hf_files import SAFE_INDEX, SAFE_WEIGHTS, write_json
from neurallayers.weights import save_safetensors

STAGE = ".save-"  # + pid: the staging folder of a save in progress
# the shard names transformers writes, and the same with a letter where a save must not reuse the loadable ones
# (model-b-00001-of-00003: before the numbers, so transformers' save_pretrained removes them as its own); a user's
# model-best-of-3.safetensors is none of them
SHARD_NAME = re.compile(r"model(-[b-z])?-\d{5,}-of-\d{5,}\.safetensors")
# what a killed save leaves: its staging folder, or an earlier version's temporary weight files
_KILLED = re.compile(r"\.save-(\d+)|"
                     r"\.(?:model\.safetensors|model-\d{5,}-of-\d{5,}\.safetensors)\.new-(\d+)(\.tmp-\d+)?")
# tokenizer files Tokenizer.save reads back or removes where it writes: copied into the stage first, so the save
# sees what it would in place
_TOKENIZER_STATE = ("special_tokens_map.json", "chat_template.jinja", "additional_chat_templates")


@contextlib.contextmanager
def staged(folder: Path, *, tokenizer_state: bool) -> Iterator[Path]:
    """A staging folder inside `folder` to write a save's files into; renamed into place (`commit`) when the block
    ends without an error, removed otherwise.

    Raises:
        WriteError: naming `folder` and why (disk full, permissions); the folder holds its earlier save as it was (a
            rename that fails once every file is written: its earlier weights).
    """
    stage = folder / f"{STAGE}{os.getpid()}"
    kept = "the folder is as it was"
    try:
        _remove_killed_saves(folder)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        copied = _copy_tokenizer_state(folder, stage) if tokenizer_state else set()
        yield stage
        kept = "its earlier weights still load"  # a rename that fails (rare, after every byte is written)
        commit(stage, folder, copied)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise WriteError(e.errno, f"could not write the Hugging Face folder {folder}: {why}; {kept}") from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _copy_tokenizer_state(folder: Path, stage: Path) -> set[Path]:
    copied = set()
    for name in _TOKENIZER_STATE:
        src = folder / name
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, stage / name)
            copied |= {p.relative_to(stage) for p in (stage / name).rglob("*") if p.is_file()}
        elif src.is_file():
            shutil.copyfile(src, stage / name)
            copied.add(Path(name))
    return copied


# transformers' units (save_pretrained's max_shard_size="5GB"): KB, MB, GB are powers of 10, KiB, MiB, GiB of 2
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def shard_bytes(value: int | str | None, *, default_unit: str | None = None) -> int | None:
    """A max_shard_size in bytes: None (one file), a number of bytes, or a whole number with its unit as transformers'
    save_pretrained reads one ("500MB", "2GB", "1GiB"); `default_unit` reads a number written without one (the CLI's
    MB; transformers refuses such a string). "5mb" is refused: megabits to transformers.

    Raises:
        ValueError: naming the value and the forms allowed.
    """
    if value is None:
        return None
    if is_int(value) and value >= 1:
        return int(value)
    # KiB, MiB, GiB in any case, as transformers reads them; KB, MB, GB with a capital B (a small b is bits there)
    found = re.fullmatch(r"\s*(\d+)\s*([KkMmGg](?:[Ii][Bb]|B))?\s*", value) if isinstance(value, str) else None
    unit = found and (found[2] or default_unit)
    if not unit or int(found[1]) < 1:
        number = "a whole number of MB >= 1" if default_unit == "MB" else "a positive number of bytes"
        raise ValueError(f"max_shard_size={value!r}: expected {number}, or one with its unit: "
                         f"{', '.join(SIZE_UNITS).replace('I', 'i')} (500MB, 2GB, 1GiB)")
    return int(found[1]) * SIZE_UNITS[unit.upper()]


def write_weights(hf_sd: dict[str, torch.Tensor], stage: Path, folder: Path, max_shard_size: int | None) -> None:
    """The weights into `stage`: model.safetensors, or shards and their index when they exceed `max_shard_size`."""
    sizes = {k: v.numel() * v.element_size() for k, v in hf_sd.items()}
    shards: list[list[str]] = [[]]
    used = 0
    for key in hf_sd:  # greedy, in state-dict order, so a layer's weights stay together
        if max_shard_size is not None and shards[-1] and used + sizes[key] > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += sizes[key]
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_safetensors(hf_sd, stage / SAFE_WEIGHTS, metadata=meta)
        return
    names = _free_shard_names(folder, len(shards))
    for name, keys in zip(names, shards, strict=True):
        save_safetensors({k: hf_sd[k] for k in keys}, stage / name, metadata=meta)
    weight_map = {k: name for name, keys in zip(names, shards, strict=True) for k in keys}
    write_json(stage / SAFE_INDEX, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map})


def _free_shard_names(folder: Path, n: int) -> list[str]:
    """transformers' shard names for `n` shards, unless the folder's loadable index names one of them (a save with
    as many shards): renamed over it one after another, a kill between two renames mixed two saves' shards. Then
    the same names with a letter, the first set the index does not use."""
    live = _loadable_shards(folder)
    for tag in ("", *(f"-{c}" for c in "bcdefghijklmnopqrstuvwxyz")):
        names = [f"model{tag}-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
        if live.isdisjoint(names):
            return names
    raise WriteError(None, f"could not write {folder}: its {SAFE_INDEX} names every shard name a new save could use")


def adopt_shard_names(stage: Path, folder: Path) -> None:
    """Renames the shards a save wrote into `stage` for another folder (convert builds its files in one) to names
    `folder`'s loadable index does not use, rewriting the staged index."""
    if not (stage / SAFE_INDEX).is_file():
        return
    index = json.loads((stage / SAFE_INDEX).read_text(encoding="utf-8"))
    names = sorted(set(index["weight_map"].values()))
    free = dict(zip(names, _free_shard_names(folder, len(names)), strict=True))
    if all(a == b for a, b in free.items()):
        return
    for old, new in free.items():
        os.replace(stage / old, stage / new)
    index["weight_map"] = {k: free[name] for k, name in index["weight_map"].items()}
    write_json(stage / SAFE_INDEX, index)


def _loadable_shards(folder: Path) -> set[str]:
    """The shard files the folder loads now: those its index names, unless model.safetensors shadows it (transformers
    and load_hf read that first); every shard-named file where the index cannot be read."""
    if os.path.lexists(folder / SAFE_WEIGHTS) or not (folder / SAFE_INDEX).is_file():
        return set()
    try:
        weight_map = json.loads((folder / SAFE_INDEX).read_text(encoding="utf-8")).get("weight_map")
        return {str(name) for name in weight_map.values()}
    except (OSError, ValueError, AttributeError):
        return {p.name for p in folder.iterdir() if SHARD_NAME.fullmatch(p.name)}


def commit(stage: Path, folder: Path, copied: set[Path]) -> None:
    """Renames the staged files into `folder`: metadata first, the weights' switch last, then the earlier save's
    weight files away (see the module's docstring)."""
    weights = {SAFE_WEIGHTS, SAFE_INDEX} | {p.name for p in stage.iterdir() if SHARD_NAME.fullmatch(p.name)}
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = path.relative_to(stage)
        if str(rel) in weights:
            continue
        target = folder / rel
        if target.is_file() and _same_bytes(path, target):
            continue  # unchanged: nothing to switch
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, target)
    for rel in copied:  # tokenizer template files its save removed
        if not (stage / rel).exists():
            (folder / rel).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # additional_chat_templates/, once empty
                if rel.parent != Path("."):
                    (folder / rel.parent).rmdir()
    sharded = (stage / SAFE_INDEX).is_file()
    shards = sorted(weights - {SAFE_WEIGHTS, SAFE_INDEX})
    moved: list[Path] = []
    try:
        for name in shards:  # names no loadable index uses: nothing that loads changes yet
            _replace(stage / name, folder / name)
            moved.append(folder / name)
        fsync_dir(folder)
        if sharded:
            _replace(stage / SAFE_INDEX, folder / SAFE_INDEX)  # the switch, where the index loaded before
            fsync_dir(folder)
            (folder / SAFE_WEIGHTS).unlink(missing_ok=True)  # the switch, where an old single file shadowed the index
        else:
            _replace(stage / SAFE_WEIGHTS, folder / SAFE_WEIGHTS)  # the switch: it shadows an old index
    except OSError:
        for path in moved if not _switched(folder, shards, sharded) else ():  # no loadable index names them
            path.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    # only now the earlier weight files: an old index would name shards that are gone. The save is whole here: a file
    # that cannot be removed stays, shadowed (an old index beside model.safetensors) or named by no index
    stale = [] if sharded else [folder / SAFE_INDEX]
    stale += [p for p in folder.iterdir() if SHARD_NAME.fullmatch(p.name) and p.name not in shards]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _switched(folder: Path, shards: list[str], sharded: bool) -> bool:
    """Whether the new shards are what `folder` loads (an error after the index went in, removing the single file)."""
    return sharded and not os.path.lexists(folder / SAFE_WEIGHTS) and _loadable_shards(folder) == set(shards)


def _replace(new: Path, old: Path) -> None:
    keep_mode(old, new)  # a re-save keeps a file's permissions (a config.json made private stays private)
    os.replace(new, old)


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _remove_killed_saves(folder: Path) -> None:
    """What a killed save left: its staging folder (or an earlier version's temporary weight files), where no process
    of that id runs any more."""
    for path in folder.iterdir():
        match = _KILLED.fullmatch(path.name)
        if match is None or process_alive(int(match[1] or match[2])):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
