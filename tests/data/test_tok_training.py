"""Bad training input is named: which text or special token, and what is wrong with it; vocab_size's bounds."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.data import tokenizer_training
from neurallayers.data.tokenizers import Tokenizer

MAX_BPE_VOCAB = 2**24  # the largest vocab_size train_bpe takes, as documented


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


def test_special_tokens_given_as_one_str_are_refused():
    """A str is an iterable of characters: "<|endoftext|>" made 13 one-character special tokens ("e", "o", ...), and
    decode then dropped those letters from every text ("hello world" came back "hll wrl"), with no eos at all."""
    with pytest.raises(TypeError, match=r"^special_tokens must be a list of str, not a single str"):
        Tokenizer.train_bpe(["hello world"], vocab_size=300, special_tokens="<|endoftext|>", show_progress=False)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", r"special_tokens\[1\]='' is empty"),
        (None, r"special_tokens\[1\] is NoneType, expected str"),
        (5, r"special_tokens\[1\] is int, expected str"),
        ("<x\ud800>", r"special_tokens\[1\] has a character that is not valid Unicode at position 2"),
    ],
)
def test_a_bad_special_token_is_named(bad, message):
    """An empty one took an id of its own as a plain "" token; the others failed in HF with "special_tokens must be
    a List[Union[str, AddedToken]]", naming none."""
    with pytest.raises((TypeError, ValueError), match=rf"^{message}"):
        Tokenizer.train_bpe(["hello world"], vocab_size=300, special_tokens=["<|endoftext|>", bad],
                            show_progress=False)


def test_a_special_token_named_twice_counts_once_in_vocab_size():
    """HF's trainer adds a repeated special token once, but it was counted twice against vocab_size: 257 was refused
    as "too small: 256 bytes + 2 special tokens = 258"."""
    tok = Tokenizer.train_bpe(["hello world"] * 3, vocab_size=257, special_tokens=["<|endoftext|>"] * 2,
                              show_progress=False)
    assert tok.vocab_size == 257 and tok.eos_id == 0 and tok.decode(tok.encode("hello world")) == "hello world"


@pytest.mark.parametrize("vocab_size", [MAX_BPE_VOCAB + 1, 2**31, 2**64])
def test_a_vocab_size_past_the_largest_is_refused(vocab_size):
    """HF's trainer reserves room for vocab_size tokens before it reads a text: 2**31 (or `--vocab-size 5000000000`)
    aborted the whole process ("memory allocation of 141733920784 bytes failed", no Python error), and 2**64 was
    "OverflowError: int too big to convert"."""
    with pytest.raises(ValueError, match=rf"^vocab_size={vocab_size} is too large: at most {MAX_BPE_VOCAB:,}"):
        Tokenizer.train_bpe(["hello world"], vocab_size=vocab_size, show_progress=False)
    # the largest trains on a small corpus like any size past what it holds
    largest = Tokenizer.train_bpe(["hello world"], vocab_size=MAX_BPE_VOCAB, show_progress=False)
    assert largest.hf.to_str() == Tokenizer.train_bpe(["hello world"], vocab_size=1000, show_progress=False).hf.to_str()


class _TrainerSpy:
    """An HF tokenizer that records the longest text its trainer is given (HF's own class takes no new attributes)."""

    longest: list[int] = []

    def __init__(self, model):
        object.__setattr__(self, "hf", HFTokenizer(model))

    def __getattr__(self, name):
        return getattr(self.hf, name)

    def __setattr__(self, name, value):
        setattr(self.hf, name, value)

    def train_from_iterator(self, texts, trainer):
        texts = list(texts)
        _TrainerSpy.longest.append(max(map(len, texts)))
        self.hf.train_from_iterator(texts, trainer=trainer)


def test_a_text_given_whole_is_trained_on_in_pieces_into_the_same_tokenizer(monkeypatch):
    """HF's trainer holds ~100 bytes a character of each text it is given: the documented `doc.text for doc in
    corpus.documents()` of a file read whole took 660 MB of memory for 4.4 MB of text (100 GB for a 1 GB file), where
    the same text in pieces took 256 MB. Cut where GPT-2's split starts a pre-token anyway, the pieces count the same
    words: the same merges."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefgh", k=rng.randint(1, 6))) for _ in range(200)]
    text = "\n".join(" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(1000))
    text += "   trailing\t\r\n\r\n  " + "x" * 3000 + " end  "  # a word longer than a piece
    pieces = text.splitlines(keepends=True)  # cut at line ends, where the split starts a pre-token too
    lines = Tokenizer.train_bpe(pieces, vocab_size=400, show_progress=False)
    monkeypatch.setattr(tokenizer_training, "TRAIN_PIECE_CHARS", 1000, raising=False)  # 50,000 in use
    monkeypatch.setattr(tokenizer_training, "HFTokenizer", _TrainerSpy)
    _TrainerSpy.longest.clear()
    whole = Tokenizer.train_bpe([text], vocab_size=400, show_progress=False)
    assert _TrainerSpy.longest[0] < len(text) / 4  # pieces, not the text whole
    assert whole.hf.to_str() == lines.hf.to_str()
    assert whole.decode(whole.encode(text)) == text


@pytest.mark.parametrize("train", [train_bpe, Tokenizer.train_char], ids=["bpe", "char"])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"caf\xc3\xa9", r"not a single bytes \(decode it first"),  # was "texts[0] is int, expected str"
        (bytearray(b"ab"), r"not a single bytearray \(decode it first"),
        (None, r"got NoneType"),  # was "'NoneType' object is not iterable", naming nothing
        (5, r"got int"),
    ],
    ids=["bytes", "bytearray", "None", "int"],
)
def test_texts_that_are_not_an_iterable_of_texts_are_named(train, bad, message):
    """A file read in binary mode was taken byte by byte: "texts[0] is int, expected str"."""
    expected = r"^train_(bpe|char) expects an iterable of texts \(a list of str\), "
    with pytest.raises(TypeError, match=expected + message):
        train(bad)


def test_special_tokens_that_are_not_an_iterable_are_named():
    with pytest.raises(TypeError, match=r"^special_tokens must be a list of str, got NoneType"):
        Tokenizer.train_bpe(["hello world"], vocab_size=300, special_tokens=None, show_progress=False)
