"""The files of a Hugging Face model folder, read and written: JSON, weights (model.safetensors, safetensors shards
listed in model.safetensors.index.json, or, opted into, a pickle `pytorch_model.bin`, whole or sharded) and, read
only, the tokenizer files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from neurallayers.files import fsync_dir, process_alive, write_text_atomic
from neurallayers.weights import CheckpointError, read_safetensors, save_safetensors, torch_load_safe

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"  # older sharded checkpoints: pytorch_model-0000k-of-0000n.bin
# the shard names transformers (and save_hf) write; a user's model-best-of-3.safetensors is not one of them
SHARD_NAME = re.compile(r"model-\d{5,}-of-\d{5,}\.safetensors")
# a new weight file while it is written (save_safetensors' own temp folder beside it ends in .tmp-<pid>)
_NEW_NAME = re.compile(r"\.(model\.safetensors|model-\d{5,}-of-\d{5,}\.safetensors)\.new-(\d+)(\.tmp-\d+)?")


def _folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no Hugging Face model folder at {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; give a Hugging Face model folder (config.json + weights)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a Hugging Face model folder")
    return folder


def _parse_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_json(path: Path) -> dict:
    data = _parse_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def write_json(path: Path, data: dict | list) -> None:
    """Writes `data` as JSON, atomically (files.write_text_atomic)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_hf_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of a folder: model.safetensors, sharded safetensors, or (opt-in) a pickle,
    whole or sharded.

    Raises:
        FileNotFoundError: no weights file.
        CheckpointError: a corrupt file or index, or a pickle when `allow_pickle` is False.
    """
    if os.path.lexists(folder / SAFE_WEIGHTS):  # a folder, FIFO or broken link by that name is named as such (it
        return read_safetensors(folder / SAFE_WEIGHTS)  # was "has no weights", or fell through to the pickle)
    if (folder / SAFE_INDEX).is_file():
        return read_sharded(folder / SAFE_INDEX)
    pickles = [name for name in (PICKLE_WEIGHTS, PICKLE_INDEX) if (folder / name).is_file()]
    if pickles:
        if not allow_pickle:
            raise CheckpointError(
                f"{folder} has only pickle weights ({pickles[0]}), which can run code when loaded; refusing. "
                "Convert them to safetensors once (neurallayers convert SRC DST --to hf --allow-pickle; train "
                "--init-from then takes DST), or opt in with allow_pickle=True (CLI: --allow-pickle): they are then "
                "read with torch.load(weights_only=True), plain tensors only")
        if pickles[0] == PICKLE_WEIGHTS:
            return read_pickle_weights(folder / PICKLE_WEIGHTS)
        return read_sharded(folder / PICKLE_INDEX, read=read_pickle_weights)
    raise FileNotFoundError(f"{folder} has no weights: expected {SAFE_WEIGHTS}, {SAFE_INDEX} with its shards, "
                            f"or {PICKLE_WEIGHTS} or {PICKLE_INDEX} with its shards (with allow_pickle=True)")


def read_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """A pickle state dict, read with `torch.load(weights_only=True)`.

    Raises:
        CheckpointError: not a readable torch checkpoint, code or objects in it, or not a dict of named tensors.
    """
    sd = torch_load_safe(path)
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path} is not a state dict of named tensors")
    return sd


def read_sharded(index_path: Path, *,
                 read: Callable[[Path], dict[str, torch.Tensor]] = read_safetensors) -> dict[str, torch.Tensor]:
    """All tensors of a sharded checkpoint (safetensors, or pickles with `read=read_pickle_weights`), after checking
    its index against the shards.

    Raises:
        CheckpointError: a bad index, a shard that is missing or outside the folder, a key listed but not in its
            shard, a key in two shards, or a key in a shard that the index does not list.
    """
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: 'weight_map' must be a non-empty object of weight name -> shard file")
    folder = index_path.parent
    shards: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{index_path}: weight {key!r} points at {name!r}, not a file in this folder")
        shards.setdefault(name, []).append(key)
    absent = sorted(name for name in shards if not (folder / name).is_file())
    if absent:
        raise CheckpointError(f"{index_path}: listed shard files do not exist: {', '.join(absent)}")
    sd: dict[str, torch.Tensor] = {}
    for name, keys in shards.items():
        part = read(folder / name)
        missing = sorted(set(keys) - set(part))
        if missing:
            raise CheckpointError(f"{folder / name}: weights the index lists are not in this shard: "
                                  f"{', '.join(missing[:5])}")
        again = sorted(set(part) & set(sd))
        if again:
            raise CheckpointError(f"{folder / name}: weights already read from another shard: {', '.join(again[:5])}")
        unlisted = sorted(k for k in part if weight_map.get(k) != name)
        if unlisted:
            raise CheckpointError(f"{folder / name}: weights not listed for this shard in {index_path.name}: "
                                  f"{', '.join(unlisted[:5])}")
        sd.update(part)
    return sd


def load_tokenizer(folder: Path) -> object:
    """Tokenizer of an HF folder (tokenizer.json, vocab.json + merges.txt, or a BERT vocab.txt), or None when it has
    none of them."""
    from neurallayers.data.tokenizers import Tokenizer

    has_json = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return Tokenizer.load(folder) if has_json or has_bpe or (folder / "vocab.txt").is_file() else None


def _write_weights(hf_sd: dict[str, torch.Tensor], folder: Path, max_shard_size: int | None) -> None:
    sizes = {k: v.numel() * v.element_size() for k, v in hf_sd.items()}
    shards: list[list[str]] = [[]]
    used = 0
    for key in hf_sd:  # greedy, in state-dict order, so a layer's weights stay together
        if max_shard_size is not None and shards[-1] and used + sizes[key] > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += sizes[key]
    _remove_killed_saves(folder)
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        files = {SAFE_WEIGHTS: hf_sd}
    else:
        names = [f"model-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)]
        files = {name: {k: hf_sd[k] for k in keys} for name, keys in zip(names, shards, strict=True)}
    # every new file is written whole under a temporary name before any old one is touched: a full disk or a kill
    # while writing leaves the earlier save as it was (its files were deleted first, leaving no weights at all)
    written: list[Path] = []
    try:
        for name, part in files.items():
            tmp = folder / f".{name}.new-{os.getpid()}"
            written.append(tmp)
            save_safetensors(part, tmp, metadata=meta)
    except BaseException:
        for tmp in written:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise
    for tmp, name in zip(written, files, strict=True):
        os.replace(tmp, folder / name)  # shards named as the old ones replace them here, in a moment, not while written
    fsync_dir(folder)
    if len(shards) > 1:  # the index last: until it names the new shards, the old index (or file) is what loads
        weight_map = {k: name for name, part in files.items() for k in part}
        write_json(folder / SAFE_INDEX, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map})
    # only now the old weight files this save does not have: an old single file would shadow new shards, an old
    # index would name shards that are gone
    keep = {*files, SAFE_INDEX} if len(shards) > 1 else {SAFE_WEIGHTS}
    candidates = [folder / SAFE_WEIGHTS, folder / SAFE_INDEX, *folder.glob("model-*-of-*.safetensors")]
    for path in candidates:
        if path.name not in keep and (path.name in (SAFE_WEIGHTS, SAFE_INDEX) or SHARD_NAME.fullmatch(path.name)):
            path.unlink(missing_ok=True)


def _remove_killed_saves(folder: Path) -> None:
    """The temporary weight files of a save that was killed: no process of that id runs any more."""
    for path in folder.iterdir():
        match = _NEW_NAME.fullmatch(path.name)
        if match is None or process_alive(int(match[2])):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


