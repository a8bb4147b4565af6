"""Hugging Face model folders in and out: `load_hf(folder)` and `save_hf(model, tokenizer, folder)`.

A folder holds config.json, weights (model.safetensors, or shards listed in model.safetensors.index.json; a
pickle `pytorch_model.bin`, or shards listed in pytorch_model.bin.index.json, only when the caller opts in) and
tokenizer files. The family module picked by config.json's `model_type` translates config and weight names; see
`FAMILIES`.

The parts live beside this file, and their public names are importable from here too: hf_config.py (model_type ->
family module, config.json values), hf_files.py (the folder's files, read and written), hf_write.py (a save's files
put in place, all or nothing), hf_generation.py (generation_config.json), sentence_pipeline.py (a sentence-transformers
pipeline) and weight_maps.py (a family's literal weight-name map, applied in either direction).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from neurallayers.config import ModelConfig
from neurallayers.files import WriteError
from neurallayers.interop.hf_config import FAMILIES, config_architecture, config_number, family, family_for_config
from neurallayers.interop.hf_files import (
    PICKLE_INDEX,
    PICKLE_WEIGHTS,
    SAFE_INDEX,
    SAFE_WEIGHTS,
    _folder,
    load_tokenizer,
    read_hf_weights,
    read_json,
    read_pickle_weights,
    read_sharded,
    write_json,
)
from neurallayers.interop.hf_generation import (
    SAMPLING_DEFAULTS,
    _generation_eos_ids,
    defaults_for_method,
    generation_defaults,
    generation_settings,
)
from neurallayers.interop.hf_write import shard_bytes, staged, write_weights
from neurallayers.interop.sentence_pipeline import _write_sentence_transformers, sentence_transformers_settings
from neurallayers.interop.weight_maps import (
    TransformIn,
    TransformOut,
    WeightMap,
    drop_tied_lm_head,
    expand_map,
    hf_shapes,
    reference_state,
    rename_to_hf,
    rename_to_ours,
)
from neurallayers.weights import CheckpointError, check_layer_count, check_state_dict, weight_dtype

__all__ = [
    "FAMILIES", "PICKLE_INDEX", "PICKLE_WEIGHTS", "SAFE_INDEX", "SAFE_WEIGHTS", "SAMPLING_DEFAULTS", "TransformIn",
    "TransformOut", "WeightMap", "config_architecture", "config_number", "defaults_for_method", "drop_tied_lm_head",
    "expand_map", "family", "family_for_config", "generation_defaults", "generation_settings", "hf_shapes", "load_hf",
    "load_tokenizer", "read_hf_weights", "read_json", "read_pickle_weights", "read_sharded", "reference_state",
    "rename_to_hf", "rename_to_ours", "save_hf", "sentence_transformers_settings", "tied_aliases", "write_json",
]


# ----- loading -----

def load_hf(folder: str | os.PathLike, *, device: str | torch.device | None = None,
            dtype: torch.dtype | str | None = None,
            allow_pickle: bool = False) -> tuple[nn.Module, object]:
    """Model (eval mode) and tokenizer from a Hugging Face model folder.

    Args:
        folder: holds config.json, weights and (optionally) tokenizer files.
        device: where the model goes (default CPU).
        dtype: parameter dtype (default float32, whatever the checkpoint stores): a torch.dtype or its name
            ("float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16", "float64"/"fp64"), or "auto": the stored dtype as
            transformers 5 reads it (see `auto_dtype`).
        allow_pickle: accept a folder whose only weights are pytorch_model.bin. Even then the file is read
            with `torch.load(weights_only=True)`, which refuses anything but plain tensors.

    Returns:
        (model, tokenizer): the tokenizer is a `neurallayers.data.Tokenizer` from tokenizer.json or GPT-2 style
        vocab.json + merges.txt, or None when the folder has neither.

    Raises:
        FileNotFoundError: no folder, no config.json or no weights.
        ValueError: an unsupported model_type or config, or a dtype that is no floating-point dtype.
        CheckpointError: corrupt weights or weights that do not fit the config, naming the keys.
    """
    from neurallayers.models import build_model

    dtype = weight_dtype(dtype, auto=True)  # a name ("float16") failed in torch's .to(), after every weight was read
    folder = _folder(folder)
    hf_cfg = read_json(folder / "config.json")
    if dtype == "auto":  # before the weights are read: a bad config dtype is refused first
        dtype = _config_dtype(hf_cfg, folder)
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
    for key in ("prompts", "default_prompt_name", "include_prompt"):  # embed() applies them, as encode does
        if key in sentence:
            cfg = cfg.replace(extra={**cfg.extra, key: sentence[key]})
    hf_sd = read_hf_weights(folder, allow_pickle=allow_pickle)
    if dtype == "auto":
        dtype = _stored_weights_dtype(folder, hf_sd)
    check_state_dict({k: tuple(v.shape) for k, v in hf_sd.items()}, hf_sd, source=str(folder))  # NaN/Inf only
    check_layer_count(hf_sd, cfg.n_layer, source=str(folder))  # before to_ours builds a meta model of n_layer layers
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
    settings = generation_settings(folder) if cfg.causal else {}
    if settings:  # save_hf writes them back, as transformers' save_pretrained keeps model.generation_config
        model.generation_settings = settings
    return model.eval(), tokenizer


# the dtypes a config.json's dtype may name for dtype="auto": torch's names, as transformers reads them
_AUTO_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


def _config_dtype(hf_cfg: dict, folder: Path) -> torch.dtype | str:
    """dtype="auto"'s first source, as transformers 5 reads it: config.json's `dtype`, else transformers 4's
    `torch_dtype`; "auto" where it names neither (the weights then say)."""
    key = "dtype" if hf_cfg.get("dtype") is not None else "torch_dtype"
    name = hf_cfg.get(key)
    if name is None:
        return "auto"
    # transformers reads the name as getattr(torch, name): torch's aliases too ("half", "float", "double")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if dtype not in _AUTO_DTYPES.values():  # transformers failed in torch (getattr(torch, "half16"))
        raise ValueError(f"{folder / 'config.json'}: {key}={name!r} is no weight dtype dtype='auto' can load; "
                         f"expected one of {', '.join(_AUTO_DTYPES)} (or pass dtype= yourself)")
    return dtype


def _stored_weights_dtype(folder: Path, hf_sd: dict[str, torch.Tensor]) -> torch.dtype:
    """dtype="auto" for a config.json that names no dtype, as transformers 5 reads it: a sharded index's metadata
    `dtype`, else the first floating-point tensor (float8 aside) of the first weight file, in safetensors' key
    order (sorted names); float32 without one. The tensors are those read already (read_hf_weights checked the
    index against its shards)."""
    if (folder / SAFE_INDEX).is_file():
        index = read_json(folder / SAFE_INDEX)
        named = (index.get("metadata") or {}).get("dtype")  # read_sharded checked metadata is an object
        if isinstance(named, str) and named in _AUTO_DTYPES:  # a list was "unhashable type"
            return _AUTO_DTYPES[named]
        shard = min(index["weight_map"].values())
        keys = sorted(k for k, file in index["weight_map"].items() if file == shard)
    elif (folder / SAFE_WEIGHTS).is_file():
        keys = sorted(hf_sd)
    else:  # pickle weights: torch.load's order
        keys = list(hf_sd)
    return next((hf_sd[k].dtype for k in keys if hf_sd[k].dtype in _AUTO_DTYPES.values()), torch.float32)


def _refuse_quantized(hf_cfg: dict, folder: Path) -> None:
    """A quantized checkpoint (GPTQ, AWQ, bitsandbytes, fp8 ...) stores packed weights and scales that only its
    library turns back into weights: refused by name, where it crashed in the NaN check or named every weight."""
    quant = hf_cfg.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        raise ValueError(f"{folder / 'config.json'}: quantization_config (quant_method={method!r}): quantized "
                         "checkpoints are not supported; give the unquantized model's folder (fp32, bf16 or fp16)")


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
            max_shard_size: int | str | None = None) -> Path:
    """Writes `model` (and `tokenizer`) as a Hugging Face folder that `transformers` loads offline.

    Writes config.json, generation_config.json (decoders: the tokenizer's ids, and the settings of the folder load_hf
    read the model from), model.safetensors (or model-0000k-of-0000n.safetensors shards
    and model.safetensors.index.json when the weights exceed `max_shard_size` bytes), and tokenizer.json +
    tokenizer_config.json when a tokenizer is given. Every file is written whole before any is put in place, the
    weights last; stale weight files of an earlier save are removed after.

    Args:
        model: a NeuralLayers model with a `config` (DecoderLM, or an encoder), or torch.compile's wrapper of one.
        tokenizer: a `neurallayers.data.Tokenizer` (`Tokenizer.load(path)` wraps a tokenizer.json or a Hugging Face
            tokenizer folder), or None to write weights only.
        folder: created if needed.
        max_shard_size: largest shard: bytes, or a size with its unit as transformers' save_pretrained takes it
            ("500MB", "2GB", "1GiB"); None writes one file.

    Returns:
        The folder.

    Raises:
        ValueError: a model without a ModelConfig, a tokenizer that is not a neurallayers Tokenizer, a config no
            supported family expresses, a tokenizer with more ids than the model's vocabulary, a bad max_shard_size,
            or an embedding model whose sentence-transformers pipeline has a module this folder cannot hold (a Dense
            projection; a classifier trained from it is written).
        WriteError: (an OSError) a write error (disk full, permissions), naming the folder; every file of an earlier
            save there is as it was.
    """
    # torch.compile's wrapper forwards .config, but its state dict names every weight "_orig_mod.<name>": the save
    # failed naming them all as unexpected (transformers' save_pretrained writes a compiled model's weights)
    model = getattr(model, "_orig_mod", model)
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"model must be a NeuralLayers model with a ModelConfig .config, got {type(model).__name__}")
    max_shard_size = shard_bytes(max_shard_size)
    _check_tokenizer(tokenizer)
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
    if not cfg.causal and cfg.pad_token_id is not None:  # the encoder's padding row (transformers' padding_idx): a
        specials["pad_token_id"] = cfg.pad_token_id  # save without a tokenizer wrote null, and the reload lost it
    hf_cfg.update(specials)
    # an encoder from a sentence-transformers folder
    writes_sentence = not cfg.causal and bool({"pooling", "normalize", "lowercase", "prompts", "include_prompt"}
                                              & set(cfg.extra)) and not unbuilt
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only parent: OSError's "[Errno 30]" named no field
        raise WriteError(e.errno, f"could not write the Hugging Face folder {folder}: {e.strerror or e}") from e
    # written whole into a staging folder, then renamed into place, the weights last: see hf_write
    with staged(folder, tokenizer_state=tokenizer is not None) as stage:
        write_weights(hf_sd, stage, folder, max_shard_size)
        write_json(stage / "config.json", hf_cfg)
        if cfg.causal:  # generation settings only mean something for a language model
            # the source's settings (load_hf keeps them on the model), under the ids this save writes
            settings = {"_from_model_config": True, **getattr(model, "generation_settings", {}), **specials}
            # every id that ends a generation here: the extra ids that end a turn, as read from a Hugging Face folder,
            # or its only ones where its tokenizer names no eos token (written as null, generation never stopped)
            eos_ids = list(getattr(tokenizer, "eos_ids", None) or getattr(model, "generation_eos_ids", None) or [])
            if eos_ids and eos_ids != [specials["eos_token_id"]]:
                settings["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
            write_json(stage / "generation_config.json", settings)
        elif writes_sentence:
            _write_sentence_transformers(cfg, tokenizer, stage)
        if tokenizer is not None:
            tokenizer.for_model(block_size=cfg.block_size, causal=cfg.causal).save(stage)
    _warn_stale(folder, tokenizer is None, not writes_sentence)
    return folder


# files an earlier save (ours, transformers' or sentence-transformers') may have left that load_hf reads with the model
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt")
SENTENCE_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                  "config_sentence_transformers.json")


def _check_tokenizer(tokenizer: object) -> None:
    from neurallayers.data.tokenizers import Tokenizer

    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):  # was AttributeError: 'vocab_size' or 'bos_id'
        kind = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
        raise ValueError(f"tokenizer: expected a neurallayers Tokenizer or None, got {kind}; wrap a tokenizer.json "
                         "or a Hugging Face tokenizer folder with neurallayers.data.tokenizers.Tokenizer.load(path)")


def _warn_stale(folder: Path, no_tokenizer: bool, no_sentence: bool) -> None:
    """A model saved alone into a folder of an earlier save: transformers leaves the other files, and so does this
    (a fine-tuned model saved beside its unchanged tokenizer is a normal use), but load_hf would pair them with the
    new model without a word, so they are named. Removing them could delete a tokenizer the user means to keep."""
    stale = [name for name in TOKENIZER_FILES if no_tokenizer and (folder / name).is_file()]
    stale += [name for name in SENTENCE_FILES if no_sentence and (folder / name).is_file()]
    if stale:
        warnings.warn(f"{folder} keeps {', '.join(stale)} from an earlier save, which load_hf pairs with this model; "
                      "remove them if they do not belong to it, or pass its tokenizer", UserWarning, stacklevel=3)


def _special_ids(tokenizer: object) -> dict[str, int | None]:
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
