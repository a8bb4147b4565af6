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

# Files whose change means another model (size and mtime are compared, not contents: weights can be large): the
# config, every file a tokenizer is read from (its chat templates too: the served chat routes apply them) and the
# sentence-transformers settings /v1/embeddings pools and prompts by
MODEL_FILES = ("config.yaml", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
               "model.safetensors.index.json", "modules.json", "sentence_bert_config.json",
               "config_sentence_transformers.json")
# ... and those of subfolders and of names a model chooses (relative to the model's folder)
MODEL_FILE_PATTERNS = ("*.safetensors", "additional_chat_templates/*.jinja", "[0-9]*_*/config.json")
# A progress record without "files_scheme" was written when only FIRST_SCHEME_FILES and the top-level weights were
# compared: a resume of its run compares those alone (the other files were unlisted, not absent: "vocab.json (new)"
# refused every interrupted run of an unchanged HF folder), and the resumed run's record lists them all.
FILES_SCHEME = 2
FIRST_SCHEME_FILES = ("config.yaml", "config.json", "tokenizer.json", "tokenizer_config.json",
                      "model.safetensors.index.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files_identity(path: str | os.PathLike) -> dict[str, list[int]]:
    """Size and mtime (ns) of a run directory's or HF folder's config, tokenizer, chat template, sentence-transformers
    and weight files, by their paths in the folder."""
    folder = Path(path)
    files = {folder / name for name in MODEL_FILES}
    files |= {p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern)}
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(files) if p.is_file()}


def _fingerprint(input_path: Path, settings: dict, model: nn.Module, tokenizer: Tokenizer,
                 model_files: dict | None) -> dict:
    # bf16 results differ from fp32 ones; the ids that end a generation come from generation_config.json too
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    weights = _weights_sha256(model) if model_files is None else None  # the files say it, without a pass over them
    return {"input_sha256": _sha256(input_path), "settings": settings, "files_scheme": FILES_SCHEME,
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
    if "files_scheme" not in old:  # both sides as that scheme saw them
        old, new = _first_scheme(old), _first_scheme(new)
    out = []
    if old.get("input_sha256") != new["input_sha256"]:
        out.append("the input file's contents")
    old_s, new_s = old.get("settings", {}), new["settings"]
    if old_s.get("mode") != new_s["mode"]:
        # another kind of run shares no settings and describes its model otherwise: compared, an OpenAI Batch file
        # after prompt lines failed as "error: dtype", and the other way listed every generation setting
        return [*out, f"the kind of run: {_kind(old_s.get('mode'))} -> {_kind(new_s['mode'])}"]
    out += [_setting_change(k, old_s.get(k), new_s.get(k)) for k in sorted(set(old_s) | set(new_s))
            if old_s.get(k) != new_s.get(k)]
    old_m, new_m = old.get("model", {}), new["model"]
    same = {"config": _same_config}
    out += [f"the model's {k}" + (f": {_changed_keys(old_m.get(k), new_m[k])}" if k == "files" else "")
            for k in ("config", "tokenizer", "files") if not same.get(k, operator.eq)(old_m.get(k), new_m.get(k))]
    out += [f"the model's {k}: {old_m[k]} -> {new_m[k]}" for k in ("dtype", "eos_ids")
            if k in old_m and old_m[k] != new_m[k]]  # records written before these were kept have neither
    if old_m.get("weights") not in (None, new_m["weights"]):
        out.append("the model's weights")
    return out


# the kinds of run a progress record's settings name ("mode"), in words
KINDS = {"generate": "generation from prompt lines", "embed": "embeddings of text lines",
         "openai-batch": "OpenAI Batch requests"}


def _kind(mode) -> str:
    return KINDS.get(mode, repr(mode))


def _first_scheme(fingerprint: dict) -> dict:
    """`fingerprint` with its model files (the model's, or an OpenAI Batch run's settings') cut to those the first
    scheme compared: FIRST_SCHEME_FILES and the weights beside them."""
    def cut(files):
        if not isinstance(files, dict):
            return files
        return {k: v for k, v in files.items()
                if k in FIRST_SCHEME_FILES or ("/" not in k and k.endswith(".safetensors"))}

    out = dict(fingerprint)
    for key in ("settings", "model"):
        if isinstance(out.get(key), dict) and "files" in out[key]:
            out[key] = {**out[key], "files": cut(out[key]["files"])}
    return out


def _setting_change(key: str, old, new) -> str:
    """One changed setting; of a table (an OpenAI Batch run's model files) the entries that changed, not both tables
    whole (a line of every file's size and time)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return f"{key}: {_changed_keys(old, new)}"
    return f"{key}: {old!r} -> {new!r}"


def _changed_keys(old, new: dict | None) -> str:
    """The entries two tables (files by name) differ in: 'a (changed), b (new), c (gone)'."""
    old, new = old if isinstance(old, dict) else {}, new or {}
    words = [f"{k} ({'new' if k not in old else 'gone' if k not in new else 'changed'})"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(words)


def _same_config(old: dict | None, new: dict) -> bool:
    """A record written before a ModelConfig field existed lacks it (config.NEWER_FIELDS); the field at None, its
    default, describes that same model, so the run still resumes."""
    return isinstance(old, dict) and {k: v for k, v in new.items()
                                      if k in old or k not in NEWER_FIELDS or v is not None} == old
