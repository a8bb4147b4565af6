"""Streaming decode: token ids, pushed one at a time, into text that never splits a UTF-8 character; the text a
continuation adds after its prompt; transformers' clean-up of the spaces word-piece tokenizers put before punctuation.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from neurallayers.data.token_ids import check_id, text_id, text_ids, token_id

if TYPE_CHECKING:
    from neurallayers.data.tokenizers import Tokenizer


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text pieces that never split a UTF-8 character.

    Byte-level tokens can end inside a multi-byte character. Like vLLM's incremental detokenizer, we
    decode a short window (the last emitted token for context, then the pending ones), emit what is new,
    and hold back a trailing U+FFFD (an incomplete character) until the next token completes it. A run of
    byte-fallback tokens (Llama's "<0xE6>") is held whole until a token after it: its decoder turns every byte of a
    run into U+FFFD when any byte is bad, so "$" followed by a stray 0x9F decodes as two U+FFFD, not "$\ufffd".
    The pieces join to `Tokenizer.decode` of all the ids.

    Args:
        tokenizer: The tokenizer whose ids are pushed.
        skip_special_tokens: Drop special tokens from the text, as `Tokenizer.decode` does.
        context: ids before the pushed ones (a prompt), read as the text's start but never emitted: a SentencePiece
            decoder strips the space of the text's first token ("▁world" alone is "world"), so a continuation decoded
            alone lost the space after its prompt; the pieces then join to `continuation_text(context, ids)`.
        skip_padded_ids: an id past the tokenizer's vocabulary (a row of a model's vocabulary padded past it) adds no
            text, in a push or the context, as transformers' decode skips it; False: refused, as Tokenizer.decode
            refuses it. Generation sets it: a model may choose such an id.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True, context: Iterable[int] = (),
                 skip_padded_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.skip_padded_ids = skip_padded_ids
        self._context = _context_tail(tokenizer, context, skip_padded_ids=skip_padded_ids)
        # the ids decode drops: held with the text before them, so that a window never starts with them alone (the
        # token after one decoded as the first of the text and lost its space: "x</s> y" streamed as "xy") and bytes
        # on both sides of one stay one run
        self._skipped = ({i for i, t in tokenizer.hf.get_added_tokens_decoder().items() if t.special}
                         if skip_special_tokens else set())
        self._cleans_up = tokenizer.cleans_up_spaces
        self._byte_ids = _byte_fallback_ids(tokenizer)
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = list(self._context)
        self._prefix = 0  # window start: tokens before it are done with
        self._read = len(self._ids)  # tokens before it are fully emitted
        self._held = 0  # characters of the pending text already emitted ahead of an incomplete one
        self._unclean = ""  # text not yet cleaned up (clean_up_tokenization_spaces): its end may still change

    def _decode(self, start: int, stop: int | None = None) -> str:
        return self.tokenizer.decode(self._ids[start:stop], skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    @property
    def pending(self) -> bool:
        """Whether the text of the last tokens is held back (a character, or a run of bytes, not yet complete; or
        spaces that cleaning up may still drop)."""
        return self.incomplete or bool(self._unclean)

    @property
    def incomplete(self) -> bool:
        """Whether the last tokens' text is held back for tokens to come (a character or a run of bytes not yet
        complete, or a skipped special)."""
        return self._read < len(self._ids)

    @property
    def uncleaned(self) -> str:
        """The text held back only because cleaning up spaces may still drop some of its spaces ("" when none)."""
        return self._unclean

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (often "", never half a character).

        Raises:
            TypeError: `token_id` is not an integer (a float or a bool), as `Tokenizer.decode` refuses it.
            ValueError: `token_id` is outside the vocabulary (a model's padded rows: 50304 for GPT-2's 50257), unless
                skip_padded_ids (then such an id returns "" and is not kept, so the bytes around it still join). The
                decoder is left as it was, so the stream goes on with the next id.
        """
        if self.skip_padded_ids and text_id(token_id, self.tokenizer.vocab_size) is None:
            return ""
        # checked before it is kept: a kept bad id made every later push and flush raise the same error
        self._ids.append(check_id(token_id, self.tokenizer.vocab_size))
        if self._ids[-1] in self._byte_ids or self._ids[-1] in self._skipped:
            return ""
        prefix_text = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        if text.endswith("\ufffd"):
            # Emit complete characters before the incomplete tail, but keep the window open.
            stable = text.rstrip("\ufffd")
            start = len(prefix_text) + self._held
            piece = stable[start:] if len(stable) > start else ""
            self._held += len(piece)
            return self._clean(piece)
        piece = text[len(prefix_text) + self._held :]
        self._prefix, self._read, self._held = self._read, len(self._ids), 0
        return self._clean(piece)

    def flush(self) -> str:
        """Ends the stream: returns any held-back text (U+FFFD if the bytes never completed) and resets."""
        piece = self._decode(self._prefix)[len(self._decode(self._prefix, self._read)) + self._held :]
        piece = clean_up_spaces(self._unclean + piece) if self._cleans_up else piece
        self._reset()
        return piece

    def _clean(self, piece: str) -> str:
        """The text before the last point where cleaning up spaces can no longer change it."""
        if not self._cleans_up:
            return piece
        self._unclean += piece
        cut = _last_clean_cut(self._unclean)
        done, self._unclean = self._unclean[:cut], self._unclean[cut:]
        return clean_up_spaces(done)


CONTEXT_TOKENS = 5  # prompt tokens a continuation is decoded after (vLLM's incremental detokenizer reads as many)


def _byte_fallback_ids(tokenizer: Tokenizer) -> set[int]:
    """The ids of a byte-fallback tokenizer's byte tokens ("<0xE6>"; none for other tokenizers). Cached: 256 lookups
    doubled the cost of continuation_text, which beam search with stop strings calls for every candidate."""
    if tokenizer not in _BYTE_IDS:
        _BYTE_IDS[tokenizer] = {tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)} - {None}
    return _BYTE_IDS[tokenizer]


_BYTE_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def anchor_id(tokenizer: Tokenizer) -> int | None:
    """The id of a plain token that decodes to "a" (None where there is none), computed once per tokenizer: decoded
    after it, a SentencePiece token keeps the space its decoder strips from a text's first token."""
    if tokenizer not in _ANCHORS:
        ids = tokenizer.encode("a")[-1:]  # "▁a", or "a" after a "▁" of its own
        _ANCHORS[tokenizer] = ids[0] if ids and tokenizer.decode(ids, skip_special_tokens=False) == "a" else None
    return _ANCHORS[tokenizer]


_ANCHORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _context_tail(tokenizer: Tokenizer, context: Iterable[int], *, skip_padded_ids: bool = False) -> list[int]:
    """The prompt's last ids, less those holding the first bytes of a character the continuation may complete: its
    text would not start with the prompt's (U+FFFD there), and a stream would drop the completed character. A
    prompt's last byte-fallback tokens go too: the continuation's byte tokens would join their run, and one stray
    byte then turned the prompt's own characters into U+FFFD, so generate() and a stream cut that text differently.
    skip_padded_ids: a prompt's ids past the vocabulary are dropped first (as decoding the whole would skip them)."""
    context = text_ids(context, tokenizer.vocab_size) if skip_padded_ids else [token_id(i) for i in context]
    byte_ids = _byte_fallback_ids(tokenizer)
    end = len(context)
    while end and context[end - 1] in byte_ids:
        end -= 1
    tail = context[max(0, end - CONTEXT_TOKENS):end]
    while tail and tokenizer.decode(tail).endswith("\ufffd"):
        tail.pop()
    if end < len(context) and not tokenizer.decode(tail) and (anchor := anchor_id(tokenizer)) is not None:
        # the bytes were the prompt's only text: a continuation decoded after nothing lost its first space ("🙂" then
        # "▁x" read "x"); after a plain token in their place it reads " x", as after the bytes themselves
        tail.append(anchor)
    return tail


def continuation_text(tokenizer: Tokenizer, context: Iterable[int], ids: Iterable[int], *,
                      skip_special_tokens: bool = True, skip_padded_ids: bool = False) -> str:
    """The text `ids` add after `context` (a prompt's ids): decode(context + ids) less decode(context). Decoded
    alone, a SentencePiece (Llama) continuation loses the space of its first token, "Hello" + "spac", where
    transformers' pipeline and vLLM give "Hello" + " spac"; for byte-level BPE both are the same. Spaces are cleaned
    up (clean_up_tokenization_spaces) in the continuation alone, as a stream cleans its pieces: cleaned with the
    prompt, "dog '" + " x" became "dog'x", which no longer starts with the prompt's text. skip_special_tokens: as
    Tokenizer.decode (False: a StreamDecoder that writes special tokens gets the same text). skip_padded_ids: ids past
    the tokenizer's vocabulary (a model's padded rows) have no text, as in StreamDecoder, instead of being refused."""
    ids = text_ids(ids, tokenizer.vocab_size) if skip_padded_ids else list(ids)
    tail = _context_tail(tokenizer, context, skip_padded_ids=skip_padded_ids)
    kw = {"clean_up_tokenization_spaces": False, "skip_special_tokens": skip_special_tokens}
    text = tokenizer.decode(ids, **kw)
    if tail:
        head = tokenizer.decode(tail, **kw)
        whole = tokenizer.decode(tail + ids, **kw)
        text = whole[len(head):] if whole.startswith(head) else text
    return clean_up_spaces(text) if tokenizer.cleans_up_spaces else text


def clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization: the spaces word-piece tokenizers put before punctuation and in
    contractions removed, in its order (each replacement sees the text the earlier ones left)."""
    for dirty, clean in _CLEAN_UPS:
        text = text.replace(dirty, clean)
    return text


_CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
              (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _last_clean_cut(text: str) -> int:
    """The last index p where clean_up_spaces(text[:p] + rest) == clean_up_spaces(text[:p]) + clean_up_spaces(rest)
    for every continuation (0 if none): a space after a character other than a space or "'" (no pattern reaches
    back across it), followed by a character that starts no pattern (so the space itself stays)."""
    p = text.rfind(" ")
    while p > 0:
        if text[p - 1] not in " '" and p + 1 < len(text) and text[p + 1] not in " .?!,'n":
            return p
        p = text.rfind(" ", 0, p)
    return 0
