"""Whether a str is Unicode text a tokenizer can encode: no lone surrogates."""

from __future__ import annotations

import re

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def lone_surrogate(text: str) -> re.Match | None:
    """The first lone surrogate in `text` (JSON may escape half a pair, "\\ud83d"; a command-line argument that was
    not UTF-8 decodes to them): not Unicode text, and no tokenizer encodes it. None for ordinary text (fast: ASCII)."""
    return None if text.isascii() else _SURROGATE.search(text)


def check_unicode(texts: list[str], label: str) -> None:
    """Raises ValueError for the first text holding a lone surrogate, which HF refuses with a misleading TypeError
    ("TextInputSequence must be str"): e.g. a command-line argument that was not UTF-8, decoded with surrogateescape."""
    for i, text in enumerate(texts):
        if bad := lone_surrogate(text):
            raise ValueError(f"{label.format(i)} has a character that is not valid Unicode at position {bad.start()} "
                             f"(U+{ord(bad[0]):04X}, a lone surrogate, e.g. from bytes that were not UTF-8)") from None


def check_text(text, label: str) -> None:
    """A training text must be a str of valid Unicode (no lone surrogates)."""
    if not isinstance(text, str):
        raise TypeError(f"{label} is {type(text).__name__}, expected str")
    check_unicode([text], label)
