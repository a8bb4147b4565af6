"""Stop strings: the text of a sequence as its tokens arrive, cut before its first stop string (`_RowText`); the
same cut applied to a finished Generation (`_apply_stop_strings`); the check beam search asks of every
candidate (`_stop_check`), which decodes only the text near its end; and the watch the other search methods keep on
each sequence they grow (`_stop_watch`), to end it where the plain loop would.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from neurallayers.data.tokenizers import StreamDecoder, continuation_text
from neurallayers.generation.config import Generation, GenerationConfig

STOP_MARGIN = 8  # characters that decoding a text's last tokens alone may get wrong at its start (split UTF-8, spaces)


class _RowText:
    """The text of one sequence as its tokens arrive: never half a UTF-8 character (StreamDecoder), cut before
    the first stop string, and holding back a tail that could still become a stop string."""

    def __init__(self, tokenizer, stops: list[str], context: list[int], *, search_after: int = 0) -> None:
        self.context = context  # the prompt's ids: the text is what the tokens add after it (continuation_text)
        # a model's vocabulary may be padded past its tokenizer's: an id there has no text (as transformers decodes it)
        self.decoder = StreamDecoder(tokenizer, context=context, skip_padded_ids=True)
        self.stops = stops
        # a stop string counts only where it ends in the text of a token after the first `search_after` (vLLM's
        # min_tokens: its stop checker skips them); one wholly in their text stays in the output
        self.search_after = search_after
        self.after = 0  # where the text of the first `search_after` tokens ends, once they have come
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.sent = 0  # characters already handed out by push()
        self.ids: list[int] = []
        self.ends: list[float] = []  # len(text) after each token (before any cut; inf once stopped)
        self.stopped = False
        self.stops_at_cut: list[str] = []  # once stopped: the stop strings that start at the cut, in listed order

    def push(self, token_id: int) -> str:
        """Add a token; returns the text that is now final (may be "")."""
        piece = self.decoder.push(token_id)
        self.ids.append(token_id)
        self.ends.append(len(self.text) + len(piece) if not self.stopped else math.inf)
        self._add(piece)
        if len(self.ids) == self.search_after:
            # their text as vLLM reads it, decoded whole: the decoder may still hold some of it back (a word-piece
            # tokenizer's last word, for cleaning up spaces; a run of byte tokens), which then came out with a later
            # token and was searched as that token's; the first bytes of a character a later token completes are not
            skip = getattr(self.decoder, "skip_special_tokens", True)
            self.after = len(continuation_text(self.decoder.tokenizer, self.context, self.ids, skip_special_tokens=skip,
                                               skip_padded_ids=True).rstrip("\ufffd"))
        return self._release(final=False)

    def finish(self) -> str:
        """End of sequence: the rest of the text (a stop string in the flushed tail still cuts it)."""
        if not self.stopped:
            self._add(self.decoder.flush())
        return self._release(final=True)

    def kept_tokens(self) -> int:
        """How many tokens lie entirely before the stop string (all of them when none was found)."""
        if not self.stopped:
            return len(self.ends)
        k = sum(1 for e in self.ends if e <= len(self.text))
        # a token just before the cut may also hold the first bytes of a character after it: drop such tokens (the
        # text decoded as the decoder writes it: a server's skip_special_tokens false writes special tokens too)
        skip = getattr(self.decoder, "skip_special_tokens", True)
        while k > 0 and not self._before_cut(continuation_text(self.decoder.tokenizer, self.context, self.ids[:k],
                                                               skip_special_tokens=skip, skip_padded_ids=True)):
            k -= 1
        return k

    def _before_cut(self, prefix: str) -> bool:
        """Whether `prefix`, the text of the first tokens decoded alone, lies within the cut text. Cleaning up spaces
        (a word-piece tokenizer's " ' " to "'") depends on the text after a token: alone, a quote before the stop
        string keeps the space the cut text lost, and was dropped with its logprob while a stream sent it. Cleaning
        up only drops spaces, so there the texts are compared without them."""
        if not self.decoder.tokenizer.cleans_up_spaces:
            return self.text.startswith(prefix)
        squeezed = prefix.replace(" ", "")
        if not self.text.replace(" ", "").startswith(squeezed):
            return False
        if not prefix.endswith(" "):
            return True
        # a token of spaces alone (SentencePiece's "▁" before ","): before the cut only where a space it wrote is
        # still there, not where cleaning up took it away with the stop string's punctuation
        seen = 0
        for char in self.text:
            if seen == len(squeezed):
                return char == " "
            seen += char != " "
        return False

    def _add(self, piece: str) -> None:
        if self.stopped or not piece:
            return
        before = len(self.text)
        self.text += piece
        if len(self.ids) <= self.search_after:
            return
        # each stop string where it ends in the new piece (it may start before it), after the first tokens' text
        start = max(before, self.after)
        found = [(i, s) for s in self.stops if (i := self.text.find(s, max(0, start - len(s) + 1))) >= 0]
        if found:
            cut = min(i for i, _ in found)
            self.text, self.stopped = self.text[:cut], True
            self.stops_at_cut = [s for i, s in found if i == cut]

    def _release(self, *, final: bool) -> str:
        safe = len(self.text)
        if not final and not self.stopped:
            # hold back the longest tail that is the start of some stop string
            for k in range(min(self.longest - 1, len(self.text)), 0, -1):
                if any(s.startswith(self.text[-k:]) for s in self.stops):
                    safe -= k
                    break
        out, self.sent = self.text[self.sent:safe], max(self.sent, safe)
        return out


def stop_search_after(config: GenerationConfig) -> int:
    """How many generated tokens come before stop strings are looked for: min_new_tokens where they wait for it
    (stop_strings_after_min_new_tokens, vLLM's min_tokens), else none."""
    return config.min_new_tokens if config.stop_strings_after_min_new_tokens else 0


def _apply_stop_strings(gen: Generation, tokenizer, stops: list[str], context: list[int], *,
                        search_after: int = 0) -> Generation:
    """Decode gen's tokens (after its prompt's, `context`) into gen.text, cutting at the first stop string (tokens
    and logprobs trimmed)."""
    if not stops:
        gen.text = continuation_text(tokenizer, context, gen.token_ids, skip_padded_ids=True)
        return gen
    row = _RowText(tokenizer, stops, context, search_after=search_after)
    for t in gen.token_ids:
        row.push(t)
        if row.stopped:
            break
    _finish(gen, row)
    return gen


def _finish(gen: Generation, row: _RowText) -> None:
    """`gen`'s text from `row`, and where a stop string completed, its tokens cut after the one that completed it."""
    row.finish()
    gen.text = row.text
    if row.stopped:
        k = row.kept_tokens()
        gen.generated_tokens = len(row.ids)  # up to the token that completed the stop string
        gen.token_ids, gen.finish_reason, gen.stopped_by = gen.token_ids[:k], "stop", row.stops_at_cut[0]
        gen.logprobs = None if gen.logprobs is None else gen.logprobs[:k]


def _stop_check(tokenizer, stops: list[str], input_ids: list[list[int]], *,
                search_after: int = 0) -> Callable[[int, list[int]], bool] | None:
    """Whether prompt i's generated tokens' text holds a stop string (None without stop strings); the text is
    theirs after the prompt (continuation_text), as the final text is cut, so " br" is found after a SentencePiece
    prompt too.

    Beam search asks this of every candidate at every step, and a candidate's parent holds no stop string (it would
    have finished): so only the text near its end is decoded, the last tokens doubling until the text before the
    newest token's is longer than any stop string (plus STOP_MARGIN characters a token boundary may garble): a stop
    string ends in the newest token's text, and may start before it however long that text is. Decoding all of it
    made a beam search with stop strings quadratic in its length (400 tokens with 2 beams: 670,000 tokens decoded).

    search_after (as _RowText's): none within the first that many tokens, and later only one that ends in the newest
    token's text (a parent may hold one from before)."""
    if not stops:
        return None
    need = max(len(s) for s in stops) + STOP_MARGIN

    def holds_stop(i: int, ids: list[int]) -> bool:
        if len(ids) <= search_after:
            return False
        m, newest = 1, None
        while True:
            m = min(m, len(ids))
            text = continuation_text(tokenizer, input_ids[i] + ids[:len(ids) - m], ids[len(ids) - m:],
                                     skip_padded_ids=True)
            newest = len(text) if newest is None else newest  # m == 1: the newest token's text
            if m == len(ids) or len(text) - newest >= need:
                if search_after:
                    return any(text.find(s, max(0, len(text) - newest - len(s) + 1)) >= 0 for s in stops)
                return any(s in text for s in stops)
            m *= 2

    return holds_stop


def _stop_watch(tokenizer, stops: list[str], input_ids: list[list[int]], *,
                search_after: int = 0) -> Callable[[int], Callable[[int], bool]] | None:
    """For the methods that grow one sequence per row (speculative decoding, contrastive search and decoding): given
    prompt i, a fresh watch over one of its sequences, called with each generated token in turn, that says whether
    the text has met a stop string (None without stop strings). It is the plain loop's own _RowText, so a sequence
    ends at the very token where generate() ends it, and _apply_stop_strings then cuts what decoding on to
    max_new_tokens and cutting afterwards gave: the same text and tokens, without the wasted forwards."""
    if not stops:
        return None

    def watch(i: int) -> Callable[[int], bool]:
        row = _RowText(tokenizer, stops, input_ids[i], search_after=search_after)

        def push(token_id: int) -> bool:
            if not row.stopped:
                row.push(token_id)
            return row.stopped

        return push

    return watch
