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


def check_id(value, vocab_size: int) -> int:
    """`token_id(value)`, checked to lie in [0, vocab_size)."""
    i = token_id(value)
    if not 0 <= i < vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
    return i

