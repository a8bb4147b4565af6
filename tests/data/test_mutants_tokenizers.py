"""A character-level tokenizer gives every character of its alphabet one id and decodes back to the text, whatever
the characters' order: a pre-tokenizer that skips newlines (Oniguruma's "." does) still round-trips a lone newline,
but joins a blank line's two into one piece, which has no id (<unk>)."""

from __future__ import annotations

import functools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from neurallayers.data.tokenizers import Tokenizer

ALPHABET = "ab .\n\r\t"


@functools.cache
def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char([ALPHABET])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(alphabet=ALPHABET, max_size=30))
@example("a.\n\nb\r\n\r\n\tab")  # blank lines, as in any prose
def test_char_tokenizer_gives_each_character_its_id_and_round_trips(text):
    tok = char_tokenizer()
    ids = tok.encode(text)
    assert ids == [tok.token_to_id(c) for c in text]
    assert tok.decode(ids) == text
