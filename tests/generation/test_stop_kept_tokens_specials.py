"""A stop string after a special token, with the text written with special tokens (the server's
skip_special_tokens: false): the tokens before the stop string are all kept, so a choice's logprobs are not cut
short (they were: the check decoded without the special tokens the text holds)."""

from __future__ import annotations

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer
from neurallayers.generation.stop_strings import _RowText


def test_tokens_before_a_stop_after_a_written_special_token_are_kept():
    tok = Tokenizer.load("gpt2")
    eot = tok.eos_id
    ids = tok.encode("Hello there") + [eot] + tok.encode(" and more STOP after")
    row = _RowText(tok, ["STOP"], tok.encode("Say:"))
    row.decoder = StreamDecoder(tok, skip_special_tokens=False, context=row.context)
    for i in ids:
        row.push(i)
    row.finish()
    assert row.stopped and row.text == "Hello there<|endoftext|> and more "
    assert row.kept_tokens() == len(tok.encode("Hello there")) + 1 + len(tok.encode(" and more"))
    plain = _RowText(tok, ["STOP"], tok.encode("Say:"))  # special tokens skipped: the same count
    for i in ids:
        plain.push(i)
    plain.finish()
    assert plain.text == "Hello there and more " and plain.kept_tokens() == row.kept_tokens()
