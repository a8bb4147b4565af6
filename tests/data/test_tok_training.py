"""Bad training texts are named: which text, and what is wrong with it."""

from __future__ import annotations

import pytest

from neurallayers.data.tokenizers import Tokenizer


def train_bpe(texts):
    return Tokenizer.train_bpe(texts, vocab_size=300, show_progress=False)


@pytest.mark.parametrize("train", [train_bpe, Tokenizer.train_char], ids=["bpe", "char"])
def test_a_lone_surrogate_in_a_training_text_is_named(train):
    """HF failed with a UnicodeEncodeError (train_bpe) or "failed to extract enum PyVocab" (train_char), naming no
    text; a text read with errors="surrogateescape" holds such characters."""
    with pytest.raises(
        ValueError,
        match=r"texts\[1\] has a character that is not valid Unicode at position 3 "
        r"\(U\+DCE9",
    ):
        train(iter(["fine", "caf\udce9 ok"]))


@pytest.mark.parametrize("train", [train_bpe, Tokenizer.train_char], ids=["bpe", "char"])
@pytest.mark.parametrize("bad", [b"bytes", 3])
def test_a_training_text_that_is_not_a_str_is_named(train, bad):
    """It was "'int' object is not an instance of 'str'" or "'<' not supported between instances of 'int' and
    'str'" (bytes in train_char)."""
    with pytest.raises(TypeError, match=rf"texts\[1\] is {type(bad).__name__}, expected str"):
        train(["fine", bad])
