"""Hugging Face model folders in and out: `load_hf(folder)` and `save_hf(model, tokenizer, folder)`.

A folder holds config.json, weights (model.safetensors, or shards listed in model.safetensors.index.json; a
pickle `pytorch_model.bin`, or shards listed in pytorch_model.bin.index.json, only when the caller opts in) and
tokenizer files. The family module picked by config.json's `model_type` translates config and weight names; see
`FAMILIES`. The helpers at the bottom apply a family's literal weight-name map in either direction.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from neurallayers.checks import is_int, is_number
from neurallayers.config import ModelConfig
from neurallayers.files import write_text_atomic
from neurallayers.weights import CheckpointError, check_state_dict, read_safetensors, save_safetensors, torch_load_safe

# config.json model_type -> the module that converts it (loaded on first use).
FAMILIES: dict[str, str] = {
    "gpt2": "neurallayers.interop.gpt2",
    "llama": "neurallayers.interop.llama",
    "mistral": "neurallayers.interop.llama",
    "bert": "neurallayers.interop.bert",
    "qwen2": "neurallayers.interop.qwen2",
}
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"  # older sharded checkpoints: pytorch_model-0000k-of-0000n.bin
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def family(model_type: object) -> ModuleType:
    """The converter module for a config.json `model_type`.

    Raises:
        ValueError: an unsupported model_type, listing the supported ones.
    """
    if model_type not in FAMILIES:
        raise ValueError(f"config.json model_type={model_type!r} is not supported; supported model types: "
                         f"{', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[model_type])


def family_for_config(cfg: ModelConfig) -> str:
    """The Hugging Face model_type to write `cfg` as: the one it was read from, else inferred from its switches."""
    source = cfg.extra.get("hf_model_type")
    if source in FAMILIES:
        return source
    if not cfg.causal:
        return "bert"
    if cfg.position == "rope" and cfg.has_qkv_bias and not cfg.bias:  # biases on q, k and v alone
        return "qwen2"
    if cfg.position == "rope":
        return "mistral" if cfg.sliding_window is not None else "llama"
    if cfg.position == "learned":
        return "gpt2"
    raise ValueError(f"ModelConfig.position={cfg.position!r}: a Hugging Face decoder needs 'learned' (GPT-2) "
                     "or 'rope' (Llama, Mistral, Qwen2)")


# ----- loading -----

def load_hf(folder: str | os.PathLike, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
            allow_pickle: bool = False) -> tuple[nn.Module, object]:
    """Model (eval mode) and tokenizer from a Hugging Face model folder.

    Args:
        folder: holds config.json, weights and (optionally) tokenizer files.
        device: where the model goes (default CPU).
        dtype: parameter dtype (default float32, whatever the checkpoint stores).
        allow_pickle: accept a folder whose only weights are pytorch_model.bin. Even then the file is read
            with `torch.load(weights_only=True)`, which refuses anything but plain tensors.

    Returns:
        (model, tokenizer): the tokenizer is a `neurallayers.data.Tokenizer` from tokenizer.json or GPT-2 style
        vocab.json + merges.txt, or None when the folder has neither.

    Raises:
        FileNotFoundError: no folder, no config.json or no weights.
        ValueError: an unsupported model_type or config.
        CheckpointError: corrupt weights or weights that do not fit the config, naming the keys.
    """
    from neurallayers.models import build_model

    folder = _folder(folder)
    hf_cfg = read_json(folder / "config.json")
    _refuse_quantized(hf_cfg, folder)
    fam = family(hf_cfg.get("model_type"))
    cfg = fam.config_from_hf(hf_cfg)
    sentence = sentence_transformers_settings(folder)
    if "pooling" in sentence:
        cfg = cfg.replace(extra={**cfg.extra, "pooling": sentence["pooling"]})
    if "normalize" in sentence:  # a sentence-transformers pipeline without a Normalize module: raw vectors
        cfg = cfg.replace(extra={**cfg.extra, "normalize": sentence["normalize"]})
    if "unbuilt_modules" in sentence:  # embed() refuses to stand in for them
        cfg = cfg.replace(extra={**cfg.extra, "unbuilt_modules": sentence["unbuilt_modules"]})
    if sentence.get("lowercase"):  # embed() lowercases texts, as its Transformer module does
        cfg = cfg.replace(extra={**cfg.extra, "lowercase": True})
    hf_sd = read_hf_weights(folder, allow_pickle=allow_pickle)
    check_state_dict({k: tuple(v.shape) for k, v in hf_sd.items()}, hf_sd, source=str(folder))  # NaN/Inf only
    try:
        sd = fam.to_ours(hf_sd, cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    except ValueError as e:  # a family module that reports bad weights as a plain ValueError
        raise CheckpointError(f"{folder}: {e}") from None
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        model = build_model(cfg)
    aliases = tied_aliases(model)
    check_state_dict(model, sd, ignore=aliases, finite=False, source=str(folder))
    model.load_state_dict({k: v for k, v in sd.items() if k not in aliases}, strict=False)  # in place: ties stay
    model.to(device=device or "cpu", dtype=dtype)
    tokenizer = load_tokenizer(folder)
    if tokenizer is not None and "max_seq_length" in sentence:
        tokenizer.model_max_length = sentence["max_seq_length"]
    eos_ids = _generation_eos_ids(folder, cfg.vocab_size, hf_cfg) if cfg.causal else None
    if eos_ids is not None:  # generate(model, None, ids) reads them from the model, tokenizer files or not
        model.generation_eos_ids = eos_ids
    if eos_ids is not None and tokenizer is not None:  # without either file's ids, the tokenizer's own (a converted
        tokenizer.extra_eos_ids = [t for t in eos_ids if t != tokenizer.eos_id]  # run's, in tokenizer_config)
    return model.eval(), tokenizer


def _refuse_quantized(hf_cfg: dict, folder: Path) -> None:
    """A quantized checkpoint (GPTQ, AWQ, bitsandbytes, fp8 ...) stores packed weights and scales that only its
    library turns back into weights: refused by name, where it crashed in the NaN check or named every weight."""
    quant = hf_cfg.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ValueError(f"{folder / 'config.json'}: quantization_config (quant_method={method!r}): quantized "
                         "checkpoints are not supported; give the unquantized model's folder (fp32, bf16 or fp16)")


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


# sentence-transformers' older Pooling config flags -> its mode names, in the order its Pooling concatenates them
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def sentence_transformers_settings(folder: Path) -> dict:
    """How a sentence-transformers folder embeds: {"max_seq_length": the tokens it reads (it truncates there, below
    the model's own limit), "pooling": "mean", "cls", or the other mode(s) it names, joined by "+", "unbuilt_modules":
    the modules of its pipeline after the encoder other than Pooling, Normalize and Dropout (a Dense projection), which
    embed() does not apply, "normalize": whether its pipeline L2-normalises (a Normalize module), "lowercase": True
    where it lowercases texts before tokenizing (do_lower_case)}; a key is absent where the folder does not say (a
    plain Hugging Face folder says none)."""
    out: dict = {}
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
            if kind == "Pooling":
                pooling_dir = folder / str(module.get("path", ""))
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
    return out


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


def tied_aliases(model: nn.Module) -> set[str]:
    """State-dict names that are the same parameter as an earlier name (e.g. lm_head.weight tied to wte)."""
    seen: set[int] = set()
    aliases = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            aliases.add(name)
        seen.add(id(t))
    return aliases


# ----- saving -----

def save_hf(model: nn.Module, tokenizer: object, folder: str | os.PathLike, *,
            max_shard_size: int | None = None) -> Path:
    """Writes `model` (and `tokenizer`) as a Hugging Face folder that `transformers` loads offline.

    Writes config.json, generation_config.json (decoders), model.safetensors (or model-0000k-of-0000n.safetensors shards
    and model.safetensors.index.json when the weights exceed `max_shard_size` bytes), and tokenizer.json +
    tokenizer_config.json when a tokenizer is given. Stale weight files of an earlier save are removed.

    Args:
        model: a NeuralLayers model with a `config` (DecoderLM, or an encoder), or torch.compile's wrapper of one.
        tokenizer: a `neurallayers.data.Tokenizer`, or None to write weights only.
        folder: created if needed.
        max_shard_size: largest shard in bytes; None writes one file.

    Returns:
        The folder.

    Raises:
        ValueError: a model without a ModelConfig, a config no supported family expresses, a tokenizer with more
            ids than the model's vocabulary, a bad max_shard_size, or an embedding model whose sentence-transformers
            pipeline has a module this folder cannot hold (a Dense projection; a classifier trained from it is written).
    """
    # torch.compile's wrapper forwards .config, but its state dict names every weight "_orig_mod.<name>": the save
    # failed naming them all as unexpected (transformers' save_pretrained writes a compiled model's weights)
    model = getattr(model, "_orig_mod", model)
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"model must be a NeuralLayers model with a ModelConfig .config, got {type(model).__name__}")
    if max_shard_size is not None and (not is_int(max_shard_size) or max_shard_size < 1):
        raise ValueError(f"max_shard_size={max_shard_size!r}: must be a positive number of bytes or None")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}; "
                         "they do not belong together")
    unbuilt = cfg.extra.get("unbuilt_modules")
    # a classifier (fine-tuned from such a pipeline: init_from keeps config.extra) is no embedding pipeline
    embeds = cfg.head not in ("sequence_classification", "token_classification")
    if unbuilt and embeds:  # their weights are not part of the model: the folder would embed without them, silently
        raise ValueError(f"this encoder's sentence-transformers pipeline has {', '.join(unbuilt)} after the pooling, "
                         "which NeuralLayers does not keep; a Hugging Face folder written without it would embed "
                         "differently")
    model_type = family_for_config(cfg)
    fam = family(model_type)
    hf_cfg = fam.config_to_hf(cfg)
    hf_sd = fam.to_hf({k: v.detach() for k, v in model.state_dict().items()}, cfg)
    dtype = next(iter(hf_sd.values())).dtype
    hf_cfg["dtype"] = str(dtype).removeprefix("torch.")
    specials = _special_ids(tokenizer)
    hf_cfg.update(specials)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_weights(hf_sd, folder, max_shard_size)
    write_json(folder / "config.json", hf_cfg)
    if cfg.causal:  # generation settings only mean something for a language model
        settings = {"_from_model_config": True, **specials}
        # every id that ends a generation here: the extra ids that end a turn, as read from a Hugging Face folder, or
        # its only ones where its tokenizer names no eos token (written as null, generation never stopped)
        eos_ids = list(getattr(tokenizer, "eos_ids", None) or getattr(model, "generation_eos_ids", None) or [])
        if eos_ids and eos_ids != [specials["eos_token_id"]]:
            settings["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
        write_json(folder / "generation_config.json", settings)
    elif {"pooling", "normalize", "lowercase"} & set(cfg.extra) and not unbuilt:  # from a sentence-transformers folder
        _write_sentence_transformers(cfg, tokenizer, folder)
    if tokenizer is not None:
        tokenizer.for_model(block_size=cfg.block_size, causal=cfg.causal).save(folder)
    return folder


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
    write_json(folder / "1_Pooling" / "config.json", pooling)
    settings = {"do_lower_case": bool(cfg.extra.get("lowercase"))}
    if getattr(tokenizer, "model_max_length", None) is not None:
        settings["max_seq_length"] = tokenizer.model_max_length
    write_json(folder / "sentence_bert_config.json", settings)


def _special_ids(tokenizer: object) -> dict[str, int | None]:
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}


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
    for stale in [folder / SAFE_WEIGHTS, folder / SAFE_INDEX, *folder.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)  # an old single file would shadow new shards, and the reverse
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_safetensors(hf_sd, folder / SAFE_WEIGHTS, metadata=meta)
        return
    weight_map = {}
    for n, keys in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors({k: hf_sd[k] for k in keys}, folder / name, metadata=meta)
        weight_map.update(dict.fromkeys(keys, name))
    write_json(folder / SAFE_INDEX, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map})


def write_json(path: Path, data: dict | list) -> None:
    """Writes `data` as JSON, atomically (files.write_text_atomic)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# ----- config.json values (used by the family modules) -----

def config_number(hf: dict, key: str, default: float) -> float:
    """config.json's `key` as a float; `default` where it is absent or null (as a transformers config built without it).

    Raises:
        ValueError: a value that is not a number, naming the key (float() named neither it nor the file).
    """
    value = hf.get(key)
    if value is None:
        return float(default)
    if not is_number(value):  # an int past float's range too: float() raised OverflowError, naming no key
        raise ValueError(f"config {key}={value!r}: expected a number")
    return float(value)


def config_architecture(hf: dict, default: str) -> str:
    """The first class config.json's `architectures` names (`default` where it names none). A lone string is that
    class (transformers picks the class by model_type and loads such a folder): its first letter was read as the
    class, and the folder refused as a task head."""
    archs = hf.get("architectures") or [default]
    archs = [archs] if isinstance(archs, str) else archs
    if not isinstance(archs, list) or not isinstance(archs[0], str):
        raise ValueError(f"config architectures={hf.get('architectures')!r}: expected a list of class names")
    return archs[0]


# ----- weight-name maps (used by the family modules) -----

WeightMap = tuple[tuple[str, "str | tuple[str, ...]"], ...]
TransformIn = Callable[[str, list[torch.Tensor], ModelConfig], torch.Tensor]
TransformOut = Callable[[str, torch.Tensor, ModelConfig], list[torch.Tensor]]


def expand_map(weight_map: WeightMap, n_layer: int, *, skip: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """(our key, HF keys) for every layer: "{i}" filled in; a single HF key becomes a 1-tuple."""
    entries = []
    for ours, theirs in weight_map:
        if ours in skip:
            continue
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        for i in range(n_layer) if "{i}" in ours else [None]:
            entries.append((ours.format(i=i), tuple(t.format(i=i) for t in theirs)) if i is not None
                           else (ours, theirs))
    return entries


def reference_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict `build_model(cfg)` has, on the meta device: names and shapes, no memory."""
    from neurallayers.models import build_model

    with torch.device("meta"):
        return build_model(cfg).state_dict()


def hf_shapes(cfg: ModelConfig, to_hf: Callable) -> dict[str, tuple[int, ...]]:
    """{HF key: shape} that a checkpoint for `cfg` holds, from the family's own `to_hf` on the meta reference."""
    return {k: tuple(v.shape) for k, v in to_hf(reference_state(cfg), cfg).items()}


def drop_tied_lm_head(hf_sd: dict[str, torch.Tensor], embedding: str) -> None:
    """Removes lm_head.weight from a state dict whose config ties it to `embedding` (the embedding is the head then),
    saying so when the file's head differs: the config then loses weights the file has. A file with the head and no
    embedding gives the embedding."""
    head, emb = hf_sd.pop("lm_head.weight", None), hf_sd.get(embedding)
    if emb is None and head is not None:  # the tied matrix saved under the head's name only: transformers ties it back
        hf_sd[embedding] = head
        return
    if head is not None and emb is not None and head.shape == emb.shape and not torch.equal(head, emb):
        warnings.warn(f"the config ties lm_head to {embedding} (tie_word_embeddings; GPT-2's default is true), but "
                      f"the file's lm_head.weight differs from it (max |difference| "
                      f"{float((head.float() - emb.float()).abs().max()):.3g}): the embedding is used as the head; "
                      "set \"tie_word_embeddings\": false in config.json to use the file's lm_head", stacklevel=3)


def rename_to_ours(hf_sd: dict[str, torch.Tensor], entries: list[tuple[str, tuple[str, ...]]],
                   expected: dict[str, tuple[int, ...]], transform: TransformIn, cfg: ModelConfig, *,
                   family: str) -> dict[str, torch.Tensor]:
    """Applies a map HF -> ours after checking `hf_sd` against the `expected` HF keys and shapes."""
    check_state_dict(expected, hf_sd, finite=False, source=f"Hugging Face {family} weights")
    out = {ours: transform(ours, [hf_sd[t] for t in theirs], cfg) for ours, theirs in entries}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def rename_to_hf(sd: dict[str, torch.Tensor], entries: list[tuple[str, tuple[str, ...]]],
                 reference: dict[str, torch.Tensor], transform: TransformOut,
                 cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Applies a map ours -> HF after checking `sd` against the model's own keys and shapes."""
    check_state_dict({k: tuple(v.shape) for k, v in reference.items()}, sd, finite=False, source="state dict")
    out = {}
    for ours, theirs in entries:
        out.update(zip(theirs, transform(ours, sd[ours], cfg), strict=True))
    return out
