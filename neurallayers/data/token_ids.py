"""What counts as a token id: one rule for decode and streaming decode."""

from __future__ import annotations

import operator


def token_id(value) -> int:
    """An int, numpy integer or integer tensor element as an id. A float id is a caller's bug, not truncated (5.9 was
    read as 5), and a bool is a mask value, not an id (True was read as 1)."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):  # numpy's, torch's
        raise TypeError(f"token ids must be integers, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"token ids must be integers, got {value!r}") from None


def id_list(ids, caller: str) -> list:
    """`ids` as a list, unchecked; one id (an int, a numpy integer, a 0-d array or tensor: `logits.argmax()`) is a list
    of one, as transformers' decode takes it. Else a TypeError naming `caller`, not "'NoneType' object is not
    iterable"."""
    if isinstance(ids, int) or getattr(ids, "ndim", None) == 0:
        return [ids]
    try:
        return list(ids)
    except TypeError:
        raise TypeError(f"{caller} expects token ids (a list of int, or one int), got {type(ids).__name__}") from None


def check_id(value, vocab_size: int) -> int:
    """`token_id(value)`, checked to lie in [0, vocab_size)."""
    i = token_id(value)
    if not 0 <= i < vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
    return i


def text_id(value, vocab_size: int) -> int | None:
    """`check_id` for an id a model chose: one at or past vocab_size (a row of a model's vocabulary padded past its
    tokenizer's, as Qwen2's 151936 rows for 151665 tokens) has no text and reads as None, as transformers' and vLLM's
    decode skip an id their tokenizer lacks. A negative id or a non-integer is refused as check_id refuses it."""
    i = token_id(value)
    if i < 0:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
    return i if i < vocab_size else None


def text_ids(values, vocab_size: int) -> list[int]:
    """The ids of `values` that have text (`text_id`): the padded ones dropped, the rest in order."""
    return [i for v in values if (i := text_id(v, vocab_size)) is not None]
