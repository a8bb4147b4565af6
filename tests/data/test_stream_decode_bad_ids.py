"""StreamDecoder refuses a bad id and stays usable; ids follow one rule in push, decode and a context."""

import functools
import os

import numpy as np
import pytest
import torch

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = "Hello wörld, café 🎉 日本語"


@functools.cache
def gpt2() -> Tokenizer:
    return Tokenizer.load("gpt2")


def _stream(decoder: StreamDecoder, ids: list, bad) -> str:
    """The text of `ids` pushed one at a time, with `bad` pushed (and refused) before each of them."""
    out = []
    for i in ids:
        with pytest.raises((ValueError, TypeError)):
            decoder.push(bad)
        out.append(decoder.push(i))
    with pytest.raises((ValueError, TypeError)):
        decoder.push(bad)
    return "".join(out) + decoder.flush()


@pytest.mark.parametrize("bad", [50257, 50303, -1, 10**12])
def test_out_of_vocabulary_id_is_refused_and_the_stream_goes_on(bad):
    # a model with a padded vocabulary (50304 rows) can sample ids 50257..50303
    tok = gpt2()
    ids = tok.encode(TEXT)
    decoder = StreamDecoder(tok)
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary \\[0, 50257\\)"):
        decoder.push(bad)
    assert _stream(decoder, ids, bad) == tok.decode(ids) == TEXT


def test_refused_id_mid_character_keeps_the_held_bytes():
    tok = gpt2()
    ids = tok.encode("🎉")  # bytes split over several tokens: the first ones are held back
    assert len(ids) > 1
    decoder = StreamDecoder(tok)
    assert decoder.push(ids[0]) == ""
    with pytest.raises(ValueError):
        decoder.push(50300)
    assert decoder.incomplete
    assert "".join(decoder.push(i) for i in ids[1:]) + decoder.flush() == "🎉"


@pytest.mark.parametrize("bad", [5.9, 5.0, np.float32(5), torch.tensor(5.0), True, np.bool_(False), torch.tensor(True),
                                 "5", None])
def test_push_refuses_what_decode_refuses(bad):
    tok = gpt2()
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([bad])
    decoder = StreamDecoder(tok)
    with pytest.raises(TypeError, match="token ids must be integers"):
        decoder.push(bad)
    assert _stream(decoder, tok.encode(TEXT), bad) == TEXT


@pytest.mark.parametrize("good", [np.int64(15496), np.int32(15496), torch.tensor(15496), torch.tensor([15496])[0],
                                  np.array(15496)])
def test_numpy_and_torch_integers_are_ids(good):
    tok = gpt2()
    assert tok.decode([good]) == "Hello"
    assert StreamDecoder(tok).push(good) == "Hello"
    assert StreamDecoder(tok, context=[good]).push(995) == " world"


def test_context_refuses_floats():
    with pytest.raises(TypeError, match="token ids must be integers, got 15496.5"):
        StreamDecoder(gpt2(), context=[15496.5])
