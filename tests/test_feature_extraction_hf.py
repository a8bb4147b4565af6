"""The feature-extraction pipeline's transformers options (tokenize_kwargs, return_tensors) on the bundled MiniLM,
against transformers' own feature-extraction pipeline: its token states, mean-pooled and normalised as MiniLM's
sentence-transformers pipeline does, are our sentence embedding."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.embeddings import minilm_folder  # noqa: E402
from neurallayers.pipelines import pipeline  # noqa: E402

TEXTS = ["A man is playing a guitar on the street corner tonight.", "short"]


@pytest.fixture(scope="module")
def pipelines():
    folder = minilm_folder()
    return pipeline("feature-extraction", model=folder), transformers.pipeline("feature-extraction",
                                                                               model=str(folder), device="cpu")


def pooled(states: torch.Tensor) -> torch.Tensor:
    """(1, T, C) token states of one text -> its normalised mean, (C,)."""
    return torch.nn.functional.normalize(states[0].mean(0), dim=-1)


@pytest.mark.parametrize("options", [{"max_length": 6, "truncation": True}, {"truncation": True},
                                     {"add_special_tokens": False}, {"max_length": 4, "add_special_tokens": False,
                                                                     "truncation": True}])
def test_tokenize_kwargs_cut_and_tokenize_as_transformers(pipelines, options):
    ours, theirs = pipelines
    for text in TEXTS:
        want = pooled(theirs(text, tokenize_kwargs=options, return_tensors=True))
        torch.testing.assert_close(ours(text, tokenize_kwargs=options), want, atol=1e-5, rtol=1e-4)
    if "max_length" in options:  # the cut changes the embedding: the option is read, not dropped
        assert not torch.allclose(ours(TEXTS[0], tokenize_kwargs=options), ours(TEXTS[0]), atol=1e-3)


def test_max_length_past_the_folders_limit_as_embed_takes_it(pipelines):
    """MiniLM reads 256 tokens (sentence-transformers' max_seq_length) of its 512 positions: tokenize_kwargs
    max_length=300 was refused, where transformers and nl.embed(max_length=300) cut there."""
    ours, theirs = pipelines
    long = " ".join(["guitar"] * 290)
    got = ours(long, tokenize_kwargs={"max_length": 300, "truncation": True})
    want = pooled(theirs(long, tokenize_kwargs={"max_length": 300, "truncation": True}, return_tensors=True))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, ours(long), atol=1e-4)  # cut at 300, not at 256


def test_return_tensors_false_gives_lists_as_transformers(pipelines):
    ours, _ = pipelines
    one, both = ours(TEXTS[0], return_tensors=False), ours(TEXTS, return_tensors=False)
    assert isinstance(one, list) and isinstance(one[0], float) and len(one) == 384
    assert isinstance(both, list) and len(both) == 2
    torch.testing.assert_close(torch.tensor(both), ours(TEXTS))
    assert torch.equal(ours(TEXTS, return_tensors=True), ours(TEXTS))


@pytest.mark.parametrize("kwargs, message", [
    # the bounds nl.embed has (a max_length of 1 passed this check, then failed in embed with another message)
    (dict(tokenize_kwargs={"max_length": 0}), r"^tokenize_kwargs max_length=0: must be an int >= 2 \(room for"),
    (dict(tokenize_kwargs={"max_length": 1}), r"^tokenize_kwargs max_length=1: must be an int >= 2 \(room for"),
    (dict(tokenize_kwargs={"max_length": 513}), r"^tokenize_kwargs max_length=513 exceeds the model's context length "
                                                r"block_size=512$"),
    (dict(tokenize_kwargs={"max_lenght": 8}), r"^tokenize_kwargs: unknown key 'max_lenght'; keys: max_length"),
    (dict(tokenize_kwargs={"truncation": False}), r"^tokenize_kwargs truncation=False: only True"),
    (dict(tokenize_kwargs=8), r"^tokenize_kwargs=8: must be a dict"),
    (dict(return_tensors="pt"), r"^return_tensors='pt': must be True or False"),
])
def test_bad_options_are_one_clear_line(pipelines, kwargs, message):
    ours, _ = pipelines
    with pytest.raises(ValueError, match=message):
        ours(TEXTS[0], **kwargs)


def test_bad_inputs_are_named_inputs(pipelines):
    """The pipeline's argument is `inputs`; embed's messages named `texts`."""
    ours, _ = pipelines
    with pytest.raises(ValueError, match=r"^inputs\[1\] must be a str, got int$"):
        ours(["fine", 5])
    with pytest.raises(ValueError, match=r"^inputs\[0\] is '', which this tokenizer encodes to no tokens "
                                         r"\(add_special_tokens is False\)"):
        ours([""], tokenize_kwargs={"add_special_tokens": False})
