"""Texts that are not str (bytes, None, numbers) are refused where they are handed in, naming their position."""

import functools
import os

import pytest

from neurallayers.data.corpora import TextCorpus
from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.cache
def gpt2() -> Tokenizer:
    return Tokenizer.load("gpt2")


@pytest.mark.parametrize(("bad", "message"), [
    (b"caf\xc3\xa9", r"texts\[3\] is bytes; each text must be a str \(decode it first\)"),
    (bytearray(b"x"), r"texts\[3\] is bytearray; each text must be a str \(decode it first\)"),
    (None, r"texts\[3\] is NoneType; each text must be a str$"),
    (42, r"texts\[3\] is int; each text must be a str$"),
])
def test_text_corpus_refuses_a_text_that_is_not_str(bad, message):
    with pytest.raises(TypeError, match=message):
        TextCorpus(["a", "b", "c", bad, "e"])


def test_text_corpus_dict_names_the_key():
    with pytest.raises(TypeError, match=r"texts\['doc b'\] is bytes; each text must be a str \(decode it first\)"):
        TextCorpus({"doc a": "fine", "doc b": b"raw"})


def test_text_corpus_refuses_a_single_bytes_object():
    with pytest.raises(TypeError, match="not a single bytes"):
        TextCorpus(b"one text")


def test_text_corpus_refuses_names_that_collide():
    with pytest.raises(ValueError, match="same name"):
        TextCorpus({1: "a", "1": "b"})


def test_text_corpus_of_str_reads_back():
    corpus = TextCorpus(iter(["x", "", "z"]))  # a generator is read once, at construction
    assert [(d.name, d.text) for d in corpus.documents()] == [("0", "x"), ("1", ""), ("2", "z")]


def test_encode_batch_names_the_position():
    with pytest.raises(TypeError, match=r"texts\[1\] is bytes; each text must be a str \(decode it first\)"):
        gpt2().encode_batch(["ok", b"raw"])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType; each text must be a str$"):
        gpt2().encode_batch([None])


@pytest.mark.parametrize("single", ["hello", b"hello"])
def test_encode_batch_refuses_a_single_text(single):
    # a str is an iterable of str: it was encoded one character at a time, five "texts"
    with pytest.raises(TypeError, match="encode_batch expects a list of texts, not a single .*; use encode"):
        gpt2().encode_batch(single)


def test_encode_hints_at_decoding_bytes():
    with pytest.raises(TypeError, match=r"encode expects a str, got bytes \(decode it first\)"):
        gpt2().encode(b"hello")
