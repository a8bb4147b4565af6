"""generation_config.json: the ids that end a generation, and the sampling a model folder recommends as defaults."""

from __future__ import annotations

import warnings
from pathlib import Path

from neurallayers.checks import is_int
from neurallayers.interop.hf_files import read_json


def _generation_eos_ids(folder: Path, vocab: int, hf_cfg: dict) -> list[int] | None:
    """The eos_token_id of generation_config.json (an id or a list of them; transformers' generate stops at each),
    or of config.json where the folder has no generation_config.json (transformers builds its generation settings
    from config.json then); None when neither file says."""
    path = folder / "generation_config.json"
    if path.is_file():
        eos = read_json(path).get("eos_token_id")
    elif hf_cfg.get("eos_token_id") is not None:
        path, eos = folder / "config.json", hf_cfg["eos_token_id"]
    else:
        return None
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(is_int(t) and t >= 0 for t in ids):
        raise ValueError(f"{path}: eos_token_id={eos!r} must be a token id or a list of them (ints >= 0)")
    if unused := [t for t in ids if t >= vocab]:
        # transformers' GPT2Config names 50256 whatever the vocab_size (a tiny reference model's folder), and its
        # generate loads it and never meets that id: refusing the folder would refuse what transformers runs
        warnings.warn(f"{path}: eos_token_id {unused} is outside the model's vocabulary [0, {vocab}), so never "
                      "generated; not used", stacklevel=3)
    return [t for t in ids if t < vocab]


# generation_config.json keys that are no generation setting a save carries over: the special ids (save_hf writes
# the tokenizer's) and transformers' bookkeeping about the file
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
_BOOKKEEPING = ("transformers_version", "_from_model_config", "_commit_hash")


def generation_settings(folder: str | Path) -> dict:
    """The settings of a folder's generation_config.json that transformers' generate and pipeline read (do_sample,
    temperature, top_p, max_new_tokens, num_beams, ...), which a save carries over as transformers' save_pretrained
    keeps them: every key but the special ids and the bookkeeping ones. {} without the file.

    Raises:
        ValueError: a file that is no JSON object, naming it.
    """
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    return {k: v for k, v in read_json(path).items() if k not in (*SPECIAL_IDS, *_BOOKKEEPING)}


# generation_config.json's sampling settings that become defaults (those vLLM applies), as GenerationConfig names them
SAMPLING_DEFAULTS = {"temperature": float, "top_k": int, "top_p": float, "min_p": float, "repetition_penalty": float}


def defaults_for_method(defaults: dict, *, num_beams: int = 1, penalty_alpha: float = 0.0) -> dict:
    """The recommended settings (generation_defaults) a decoding method takes: none for beam search (it is
    deterministic), only top_k for contrastive search (its candidate count, as transformers takes it), all for greedy
    and sampling."""
    if num_beams > 1:
        return {}
    usable = ("top_k",) if penalty_alpha > 0 else tuple(SAMPLING_DEFAULTS)
    return {k: v for k, v in defaults.items() if k in usable}


def generation_defaults(folder: str | Path, *, sampling: bool = False) -> dict:
    """The sampling a model folder's generation_config.json recommends (Llama-3-Instruct: temperature 0.6,
    top_p 0.9), as GenerationConfig fields: its temperature, top_k, top_p, min_p and repetition_penalty, with
    temperature 0.0 when it says `do_sample: false` (transformers then decodes greedily, still applying its
    repetition_penalty); `sampling=True` ignores do_sample (the settings transformers samples with when a caller turns
    sampling on: the file's temperature, not 1.0). {} without the file.
    A value GenerationConfig would refuse is left out with a warning (transformers loads such a file too, and a
    user who sets that knob never needs it); top_k -1 is vLLM's "off", 0 here.
    """
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    settings = read_json(path)
    from neurallayers.generation import GenerationConfig

    out = {}
    for name, kind in SAMPLING_DEFAULTS.items():
        value = settings.get(name)
        if value is None:
            continue
        if name == "top_k" and value == -1:
            value = 0
        try:
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or (kind is int and value != int(value)):
                raise ValueError(f"must be {'an integer' if kind is int else 'a number'}")
            GenerationConfig(**{name: kind(value)})  # its ranges
            out[name] = kind(value)
        except (ValueError, OverflowError) as e:
            why = str(e).split(": ", 1)[-1]
            warnings.warn(f"{path}: {name}={value!r} is not used ({why})", stacklevel=2)
    if settings.get("do_sample") is False and not sampling:
        out["temperature"] = 0.0
    return out
