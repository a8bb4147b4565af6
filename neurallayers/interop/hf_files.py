"""The files of a Hugging Face model folder, read and written: JSON, weights (model.safetensors, safetensors shards
listed in model.safetensors.index.json, or, opted into, a pickle `pytorch_model.bin`, whole or sharded) and, read
only, the tokenizer files (hf_write.py writes a whole folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from neurallayers.checks import check_bool
from neurallayers.files import write_text_atomic
from neurallayers.weights import CheckpointError, read_safetensors, torch_load_safe

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"  # older sharded checkpoints: pytorch_model-0000k-of-0000n.bin



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
    except RecursionError:  # json recurses a level a bracket: '[[[[...' was a traceback
        raise ValueError(f"{path} is not valid JSON: nested too deep (no config file is)") from None


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
    check_bool(allow_pickle, "allow_pickle")  # "false" is truthy: it opted in to unpickling
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
    if not isinstance(index.get("metadata") or {}, dict):  # dtype="auto" reads it: AttributeError on a list or string
        raise CheckpointError(f"{index_path}: 'metadata' must be an object (total_size, dtype ...), got "
                              f"{type(index['metadata']).__name__}")
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


