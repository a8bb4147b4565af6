"""A sentence-transformers folder's pipeline (pooling, normalisation, input length, lowercasing), read from its files
and written back, so that an embedding model embeds the same here, in transformers and in sentence-transformers."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from neurallayers.config import ModelConfig
from neurallayers.interop.hf_files import _parse_json, read_json, write_json

# sentence-transformers' older Pooling config flags -> its mode names, in the order its Pooling concatenates them
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def sentence_transformers_settings(folder: Path) -> dict:
    """How a sentence-transformers folder embeds: {"max_seq_length": the tokens it reads (it truncates there, below
    the model's own limit), "pooling": "mean", "cls", or the other mode(s) it names, joined by "+", "unbuilt_modules":
    the modules of its pipeline after the encoder other than Pooling, Normalize and Dropout (a Dense projection), which
    embed() does not apply, "normalize": whether its pipeline L2-normalises (a Normalize module), "lowercase": True
    where it lowercases texts before tokenizing (do_lower_case), "prompts" {name: text} and "default_prompt_name" (the
    one encode puts before each text unless told another), "include_prompt": False where its Pooling leaves the prompt's
    tokens out}; a key is absent where the folder does not say (a plain Hugging Face folder says none)."""
    out: dict = _prompts(folder / "config_sentence_transformers.json")
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        settings = read_json(st_config)
        length = settings.get("max_seq_length")
        if isinstance(length, int) and length > 0:
            out["max_seq_length"] = length
        if settings.get("do_lower_case") is True:
            out["lowercase"] = True
    pooling_dir = folder / "1_Pooling"
    if (folder / "modules.json").is_file():
        modules = _parse_json(folder / "modules.json")  # a list, unlike the other files read here
        out["normalize"] = False
        for module in modules if isinstance(modules, list) else []:
            if not isinstance(module, dict):
                continue
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            path = _module_path(folder, kind, module.get("path"))
            if kind == "Pooling":
                pooling_dir = path
            elif kind == "Normalize":
                out["normalize"] = True
            elif kind not in ("Transformer", "Normalize", "Dropout"):  # Dropout: nothing at inference
                out.setdefault("unbuilt_modules", []).append(f"{kind} ({module.get('path') or 'no folder'})")
    if (pooling_dir / "config.json").is_file():
        flags = read_json(pooling_dir / "config.json")
        mode = flags.get("pooling_mode")  # sentence-transformers >= 6 writes a mode name or a list of them
        modes = [mode] if isinstance(mode, str) else [str(m) for m in mode] if isinstance(mode, list) else \
            [name for flag, name in _POOLING_FLAGS.items() if flags.get(flag)]
        if modes:
            out["pooling"] = "+".join(modes)
        if flags.get("include_prompt") is False:  # INSTRUCTOR-style: the prompt conditions, its tokens are not pooled
            out["include_prompt"] = False
    return out


def _prompts(path: Path) -> dict:
    """{"prompts", "default_prompt_name"} of a config_sentence_transformers.json (see sentence_transformers_settings):
    encode puts `prompts[default_prompt_name]` (an E5 model's "passage: ") before each text. Entries that are not
    strings are refused by name; a default naming no prompt is warned about and left out (sentence-transformers
    refuses to load such a folder)."""
    if not path.is_file():
        return {}
    settings = read_json(path)
    name, prompts = settings.get("default_prompt_name"), settings.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{path}: prompts must be an object of strings (a name: its text), got {prompts!r}")
    out: dict = {"prompts": dict(prompts)} if prompts else {}
    if name is not None and name not in prompts:
        warnings.warn(f"{path}: default_prompt_name {name!r} names no entry of its prompts", stacklevel=3)
    elif name is not None:
        out["default_prompt_name"] = name
    return out


def _module_path(folder: Path, kind: str, path: object) -> Path:
    """The folder a modules.json entry names, inside `folder`. The name is checked, not where links lead: a folder of
    links (as the Hugging Face cache keeps its files) is the user's arrangement; a name in the file is the folder's.

    Raises:
        ValueError: a path that is not a string, or names a place outside the model folder (`../x`, an absolute
            path): its config was read from wherever it pointed.
    """
    if path is None:
        path = ""
    if not isinstance(path, str):
        raise ValueError(f"{folder / 'modules.json'}: the {kind} module's path must be a string, got {path!r}")
    normal = os.path.normpath(path)
    if os.path.isabs(path) or normal == ".." or normal.startswith(".." + os.sep):
        raise ValueError(f"{folder / 'modules.json'}: the {kind} module's path {path!r} leads outside the model "
                         "folder; a module's files must be inside it (as 1_Pooling is)")
    return folder / path


def _write_sentence_transformers(cfg: ModelConfig, tokenizer: object, folder: Path) -> None:
    """modules.json, 1_Pooling/config.json and sentence_bert_config.json for the pooling, normalisation, input
    length and lowercasing the encoder was read with (see `sentence_transformers_settings`): without them the folder
    embeds by mean pooling, normalised, whatever the source did, here and in sentence-transformers."""
    modes = cfg.extra.get("pooling", "mean").split("+")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if cfg.extra.get("normalize", True):
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(folder / "modules.json", modules)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": cfg.n_embd, **{flag: name in modes for flag, name in _POOLING_FLAGS.items()}}
    if modes != [name for name in _POOLING_FLAGS.values() if name in modes]:  # the flags fix another order
        pooling["pooling_mode"] = modes  # sentence-transformers 6's form, which keeps it
    if cfg.extra.get("include_prompt") is False:
        pooling["include_prompt"] = False
    write_json(folder / "1_Pooling" / "config.json", pooling)
    if cfg.extra.get("prompts"):  # encode's prompts and default, as read
        prompts = {"prompts": cfg.extra["prompts"], "default_prompt_name": cfg.extra.get("default_prompt_name")}
        write_json(folder / "config_sentence_transformers.json", prompts)
    settings = {"do_lower_case": bool(cfg.extra.get("lowercase"))}
    if getattr(tokenizer, "model_max_length", None) is not None:
        settings["max_seq_length"] = tokenizer.model_max_length
    write_json(folder / "sentence_bert_config.json", settings)
