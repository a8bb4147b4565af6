"""What a resume must find unchanged: the input file, the settings and the model, and in words what changed."""

from __future__ import annotations

import hashlib
import operator
import os
from pathlib import Path

import torch
from torch import nn

from neurallayers.config import NEWER_FIELDS
from neurallayers.data.tokenizers import Tokenizer

# Files whose change means another model (size and mtime are compared, not contents: weights can be large).
MODEL_FILES = ("config.yaml", "config.json", "tokenizer.json", "tokenizer_config.json",
               "model.safetensors.index.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files_identity(path: str | os.PathLike) -> dict[str, list[int]]:
    """Size and mtime (ns) of a run directory's or HF folder's config, tokenizer and weight files."""
    folder = Path(path)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name in MODEL_FILES or p.suffix == ".safetensors"))
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def _fingerprint(input_path: Path, settings: dict, model: nn.Module, tokenizer: Tokenizer,
                 model_files: dict | None) -> dict:
    # bf16 results differ from fp32 ones; the ids that end a generation come from generation_config.json too
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    weights = _weights_sha256(model) if model_files is None else None  # the files say it, without a pass over them
    return {"input_sha256": _sha256(input_path), "settings": settings,
            "model": {"config": model.config.to_dict(), "tokenizer": tokenizer.fingerprint(),
                      "files": model_files, "dtype": dtype, "eos_ids": tokenizer.eos_ids, "weights": weights}}


def _weights_sha256(model: nn.Module) -> str:
    """A digest of the weights of a model given without its files (run_batch from Python): one trained further in
    the same session resumed into the output of its earlier weights, mixing two models' results in one file."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        for t in value if isinstance(value, tuple | list) else (value,):  # quantize_dynamic packs (weight, bias)
            if torch.is_tensor(t):
                t = t.int_repr() if t.is_quantized else t
                h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def _changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    if old.get("input_sha256") != new["input_sha256"]:
        out.append("the input file's contents")
    old_s, new_s = old.get("settings", {}), new["settings"]
    out += [f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}" for k in sorted(set(old_s) | set(new_s))
            if old_s.get(k) != new_s.get(k)]
    old_m, new_m = old.get("model", {}), new["model"]
    same = {"config": _same_config}
    out += [f"the model's {k}" for k in ("config", "tokenizer", "files")
            if not same.get(k, operator.eq)(old_m.get(k), new_m.get(k))]
    out += [f"the model's {k}: {old_m[k]} -> {new_m[k]}" for k in ("dtype", "eos_ids")
            if k in old_m and old_m[k] != new_m[k]]  # records written before these were kept have neither
    if old_m.get("weights") not in (None, new_m["weights"]):
        out.append("the model's weights")
    return out


def _same_config(old: dict | None, new: dict) -> bool:
    """A record written before a ModelConfig field existed lacks it (config.NEWER_FIELDS); the field at None, its
    default, describes that same model, so the run still resumes."""
    return isinstance(old, dict) and {k: v for k, v in new.items()
                                      if k in old or k not in NEWER_FIELDS or v is not None} == old
