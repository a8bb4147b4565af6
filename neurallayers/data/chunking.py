"""Cutting a document's text into pieces of about a given size where the tokenizer starts a token anyway, so that the
pieces, tokenized one by one, give the ids of the text tokenized whole."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Iterable, Iterator

_WORD_END = re.compile(r"(?<=\S) ")  # a long line's cut: the space before a word, which starts a token
# A piece's cut, where there is one near: a newline between two words (or at the text's end). A newline beside other
# whitespace is joined with it by GPT-2's and Llama 3's pre-tokenizers ("\n\n    " before an indented line of code is
# one piece, "\n\n" at a piece's end another than before a word), so a cut there gave other tokens than the document's.
_LINE_END = re.compile(r"(?<=\S)\n")  # and no whitespace after it: see _line_cuts
# Whether a tokenizer gives the ids of `left + right` as those of `left` then those of `right` (a later piece of a
# document): a cut between them keeps the whole text's ids, where the tokenizer's splits are local.
SafeCut = Callable[[str, str], bool]
_CUT_WINDOW = 32  # characters each side of a cut that a SafeCut sees
_CUT_TRIES = 64  # cuts tried per piece: a text where none is safe costs no more than that
_CUT_REACH = 1 << 16  # a piece of a few characters may run this far to a safe cut: ids are worth more than its size
_READ_MORE = -1
_SPACE_EDGE = re.compile(r"(?<=\S)(?=\s)|(?<=\s)(?=\S)")  # either end of a run of whitespace
# Whitespace after a word, where GPT-2's split always starts a pre-token. Not Python's \s: it holds "\x1c", which a
# punctuation pre-token may end in.
_SPACE_RUN = re.compile(r"(?<=\S)[ \t\r\n]")


def chunk_text(blocks: Iterable[str], max_chars: int, *, byte_level: bool = False,
               safe_cut: SafeCut | None = None) -> Iterator[str]:
    """A text, given in consecutive blocks (a file as it is read), in pieces of about `max_chars` characters, cut
    where the tokenizer starts a token anyway; the same pieces however the text is cut into blocks, holding about
    twice `max_chars` characters and a block at a time.

    A piece ends at the first cut from `max_chars` on, within twice `max_chars`, that `safe_cut` accepts (it sees the
    _CUT_WINDOW characters each side, within the piece): just after a newline between two words, else before or after
    any run of whitespace. Without `safe_cut`, a newline between two words is taken as it is: it starts a token in
    byte-level BPE (GPT-2's, Llama 3's), char-level and SentencePiece tokenizers. Where none is found (`byte_level`:
    a byte-level BPE with GPT-2's split and no prefix space, `byte_level_split`), just before the first whitespace
    that follows a word, however far: that split starts a pre-token there and nowhere within a run of whitespace.
    Else no cut is known to be safe, and the piece ends after any newline within twice `max_chars`; past that,
    before the first space after a word (text8 is one line of 100M characters: tokenized whole, it took tens of GB),
    else at the line's end. A newline beside other whitespace is joined with it by most splits ("\\n    " before an
    indented line is one pre-token, "\\n\\n" at a text's end another, and Llama 3's joins ".\\n\\n"), so a text
    without a newline between two words (pretty-printed JSON, blank-line paragraphs) got other ids in pieces cut
    after a newline than whole.

    Args:
        byte_level: the text is for a byte-level BPE with GPT-2's split and no prefix space (`byte_level_split`).
        safe_cut: whether the text may be cut between two strings (`SafeCut`); a tokenizer's is `datasets.safe_cut`.
    """
    if max_chars < 1:  # a piece of none would be cut at its own start, forever
        raise ValueError(f"max_chars={max_chars} must be >= 1")
    blocks = iter(blocks)
    max_chars = min(max_chars, sys.maxsize >> 2)  # "no cut" (2**62) as regex positions take it
    text, start, final = "", 0, False
    while True:
        end = _piece_end(text, start, max_chars, final, byte_level, safe_cut) if start < len(text) else None
        if end is not None:
            yield text[start:end]
            start = end
            continue
        if final:
            return
        if start > 1:  # keep the character before the piece: the cuts look behind
            text, start = text[start - 1 :], 1
        want = max(2 * (len(text) - start), 1)  # a line without a cut reads twice as much each time: linear
        while not final and len(text) - start < want:
            block = next(blocks, None)
            final = block is None
            text += block or ""


def _piece_end(text: str, start: int, max_chars: int, final: bool, byte_level: bool,
               safe_cut: SafeCut | None) -> int | None:
    """Where the piece of `text` starting at `start` ends (see `chunk_text`); None when that depends on text not read
    yet (`final`: `text` is all there is)."""
    low, high = start + max_chars - 1, start + 2 * max_chars
    if safe_cut is None:
        if not final and len(text) <= high:
            return None  # a clean cut looks at the character after its newline, up to text[high]
        cut = next(_line_cuts(text, low, high), None)
    elif (cut := _safe_end(text, start, low, high, final, safe_cut)) == _READ_MORE:
        return None
    if cut is not None:
        return cut
    if byte_level:  # GPT-2's split has no cut within a run of whitespace: the first one after a word, however far
        run = _SPACE_RUN.search(text, max(low, start + 1))
        return run.start() if run else None if not final else len(text)
    # No cut is known to be safe (none within reach, or `safe_cut` refused _CUT_TRIES): where a token likely starts.
    newline = text.find("\n", low)
    if newline < 0 and not final:  # the line goes on past what is read, over twice max_chars
        word_end = _WORD_END.search(text, start + max_chars)
        return word_end.start() if word_end else None
    line_end = newline + 1 or len(text)
    if line_end - start <= 2 * max_chars:
        return line_end
    word_end = _WORD_END.search(text, start + max_chars, line_end)
    return word_end.start() if word_end else line_end


def _line_cuts(text: str, low: int, high: int) -> Iterator[int]:
    """Just after each newline in text[low:high] between two words or at the text's end."""
    for newline in _LINE_END.finditer(text, low, high):
        after = newline.end()
        if after == len(text) or not text[after].isspace():
            yield after


def _safe_end(text: str, start: int, low: int, high: int, final: bool, safe_cut: SafeCut) -> int | None:
    """The first cut that `safe_cut` accepts: after a newline between two words in text[low:high], else at an edge of a
    run of whitespace up to _CUT_REACH characters into the piece (or twice `max_chars`), trying _CUT_TRIES at most; the
    text's end when it comes first; None where no cut is safe; _READ_MORE when that depends on text not read yet.
    Each cut is judged on the _CUT_WINDOW characters each side of it within the piece, so that the same text in other
    blocks is cut the same."""
    far = max(high, start + _CUT_REACH)
    seen = len(text) if final else len(text) - _CUT_WINDOW  # the cuts before this have their window read
    if seen <= high and not final:
        return _READ_MORE
    edges = (m.start() for m in _SPACE_EDGE.finditer(text, max(low, start + 1), min(far, seen)))
    tries = 0
    for cut in itertools.chain(_line_cuts(text, low, high), edges):  # high < seen, or the text is all read
        if cut == len(text) or safe_cut(text[max(start, cut - _CUT_WINDOW) : cut], text[cut : cut + _CUT_WINDOW]):
            return cut
        tries += 1
        if tries == _CUT_TRIES:
            return None
    if not final and seen < far:
        return _READ_MORE
    return len(text) if len(text) <= far else None

