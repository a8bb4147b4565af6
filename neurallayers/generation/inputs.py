"""What generation takes in, checked: the model (a causal decoder), the settings, the prompts (encoded, each in the
vocabulary and within the context) and the ids that end a sequence; and the left-padded batch every decoding method runs
on, every row at its own positions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from neurallayers.checks import is_int
from neurallayers.generation.config import GenerationConfig


def _config(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    if config is not None and not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig or None, got {type(config).__name__}")
    config = config or GenerationConfig()
    return config.replace(**overrides) if overrides else config


def _check_decoder(model: nn.Module, role: str = "model") -> None:
    """Generation needs a causal LM with a KV cache; an encoder gets a one-line error, not an AttributeError. `role`
    names the argument: a draft or amateur model that is no decoder (an encoder, a run's path) failed deep inside
    the search with an AttributeError."""
    config = getattr(model, "config", None)
    which = "" if role == "model" else f"{role}: "
    if getattr(config, "causal", None) is False:
        raise ValueError(f"{which}{type(model).__name__} is an encoder (config.causal=False): it embeds "
                         "(neurallayers.embed) or fills masks (pipeline('fill-mask')), and does not generate text")
    if config is None or not hasattr(model, "new_cache"):
        path = " (a path: load the model first, with neurallayers.load)" if isinstance(model, str | os.PathLike) else ""
        raise ValueError(f"{which}generation needs a causal decoder (DecoderLM), got {type(model).__name__}{path}")


def _check_ids(model: nn.Module, input_ids: list[list[int]], eos_ids: list[int], *, name: str = "prompt {}",
               each_fits: bool = True) -> None:
    """The one check of prompt ids and eos ids, for every decoding method (generate, stream, the searches).

    `name` spells prompt i for the error (generate() calls it "prompt i"; the search functions, which take
    `input_ids`, "input_ids[i]"). each_fits: refuse a prompt longer than the context (the plain loop stops where a
    prompt's context is full; a search checks prompt + max_new_tokens itself, in check_request)."""
    vocab, block = model.config.vocab_size, model.config.block_size
    if not isinstance(input_ids, list) or not input_ids:
        raise ValueError("input_ids must be a non-empty list of prompts (lists of token ids)")
    for i, ids in enumerate(input_ids):
        which = name.replace("{}", str(i))
        if not isinstance(ids, list):  # a tensor row was "empty"
            raise ValueError(f"{which} must be a list of token ids, got {type(ids).__name__}")
        if not ids:
            raise ValueError(f"{which} is empty: a prompt needs at least one token")
        _check_python_ints(which, ids)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{which} holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if each_fits:
            _check_length(i, ids, block)
    if not isinstance(eos_ids, list) or not all(is_int(t) and 0 <= t < vocab for t in eos_ids):
        raise ValueError(f"eos_ids must be a list of token ids in [0, {vocab}), got {eos_ids!r}")


def _check_python_ints(which: str, ids: list) -> None:
    """Refuse values that are no Python int, naming their type: "outside the vocabulary" misled where a numpy or
    torch integer (list(array)) is well inside it."""
    odd = [t for t in ids if not is_int(t)]
    if odd:
        how = "; convert an array or tensor with .tolist()" if hasattr(odd[0], "item") else ""  # numpy, torch
        raise ValueError(f"{which} holds {type(odd[0]).__name__} values, not token ids (Python ints): {odd[:5]}{how}")


def _check_length(i: int, ids: list[int], block: int, whose: str = "the model's") -> None:
    if len(ids) > block:
        raise ValueError(f"prompt {i} has {len(ids)} tokens but {whose} context length (block_size) is "
                         f"{block}: shorten the prompt to at most {block} tokens")


def _room(config: GenerationConfig, block: int, prompt_len: int, *, fed: int = 0) -> int:
    """How many tokens a prompt gets: max_new_tokens, or fewer where its context fills (the last token needs no
    position, unless a method feeds it: `fed`)."""
    return min(config.max_new_tokens, block - prompt_len + 1 - fed)


def _encode_prompts(tokenizer, prompts) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if hasattr(prompts, "tolist") and not isinstance(prompts, list):  # a transformers user's input_ids tensor
        raise ValueError(array_prompt_hint(prompts, "prompts"))
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts must be a string, a non-empty list of strings or a non-empty list of token id lists")
    if all(isinstance(p, str) for p in prompts):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer; pass one, or give prompts as lists of token ids")
        return [tokenizer.encode(p, add_special_tokens=True) for p in prompts]  # a Llama tokenizer's bos first
    if all(isinstance(p, list) for p in prompts):
        for i, ids in enumerate(prompts):
            _check_python_ints(f"prompt {i}", ids)
        return prompts
    kinds = {type(p).__name__ for p in prompts}
    if kinds == {"int"}:  # one prompt's ids, as stream() takes them: .tolist() is no help there
        raise ValueError("prompts is a list of ints: generate() takes a list of prompts, so give one prompt of "
                         "token ids as [ids]")
    if len(kinds) == 1:  # a list of tensors or arrays is no mix of strings and lists
        raise ValueError(f"prompts must be strings or lists of token ids, got a list of {kinds.pop()}; convert an "
                         "array or tensor with .tolist()")
    raise ValueError("prompts must be all strings or all lists of token ids, not a mix")


def array_prompt_hint(value: object, name: str) -> str:
    """The one line that refuses a tensor or array of token ids: how to give them, padding dropped (.tolist() alone
    would keep a padded batch's pad ids as prompt tokens)."""
    return (f"{name} is an array ({type(value).__name__}): give token ids as Python lists, e.g. ids.tolist() (a "
            "padded 2-D batch: one list per row, without its padding)")


def _eos_ids(tokenizer, model: nn.Module) -> list[int]:
    """The ids that end a generation: the tokenizer's; without one, those a Hugging Face folder's generation_config
    (or config.json) names, which load() keeps on the model (transformers' generate stops at them too)."""
    if tokenizer is None:
        return list(getattr(model, "generation_eos_ids", []))
    return list(tokenizer.eos_ids)


@dataclass
class Batch:
    """Left-padded prompts: ids (B, P), mask (B, P) 1 on real tokens (None when no row is padded), lens (B,).

    The one padded layout of every decoding method: the plain loop, beam search and the contrastive methods; each row
    sees only its own tokens (`full_mask`) at its own positions (`positions`, 0 on its first real token).
    """

    ids: torch.Tensor
    mask: torch.Tensor | None
    lens: list[int]

    @property
    def pads(self) -> torch.Tensor:
        """(B,) number of padding positions at the left of each row."""
        return self.ids.shape[1] - torch.tensor(self.lens, device=self.ids.device)


def left_pad(input_ids: list[list[int]], device: torch.device) -> Batch:
    """The prompts left-padded with id 0 to the longest one's length."""
    lens = [len(ids) for ids in input_ids]
    width = max(lens)
    ids = torch.zeros(len(input_ids), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(input_ids), width, dtype=torch.long, device=device)
    for i, row in enumerate(input_ids):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long, device=device)
        mask[i, width - len(row):] = 1
    return Batch(ids=ids, mask=None if min(lens) == width else mask, lens=lens)


def positions(batch: Batch, start: int, length: int, rows_per_prompt: int = 1) -> torch.Tensor | None:
    """Position ids (B*rows_per_prompt, length) for slots start.. of a left-padded batch; None when unpadded."""
    if batch.mask is None:
        return None
    pads = batch.pads.repeat_interleave(rows_per_prompt)
    slots = start + torch.arange(length, device=pads.device)
    return (slots[None, :] - pads[:, None]).clamp(min=0)


def full_mask(batch: Batch, total: int, rows_per_prompt: int = 1) -> torch.Tensor | None:
    """Attention mask (B*rows_per_prompt, total) over every cache slot: prompt padding 0, the rest 1."""
    if batch.mask is None:
        return None
    mask = torch.ones(batch.ids.shape[0], total, dtype=torch.long, device=batch.ids.device)
    mask[:, :batch.ids.shape[1]] = batch.mask
    return mask.repeat_interleave(rows_per_prompt, dim=0)
