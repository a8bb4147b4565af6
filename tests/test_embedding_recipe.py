"""Sentence embeddings of the real all-MiniLM-L6-v2 against the sentence-transformers recipe, computed with
transformers on each text alone: tokenize (truncated at the model's max_seq_length, 256), mean over the attention
mask, L2-normalise. embed, the feature-extraction pipeline and `neurallayers batch` must all give it, whatever the
batch (short texts padded beside long ones), for long texts and for empty ones."""

import functools
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.batch import run_batch  # noqa: E402
from neurallayers.embeddings import embed, load_minilm, minilm_folder  # noqa: E402
from neurallayers.pipelines import pipeline  # noqa: E402

LONG = " ".join(f"sentence {i} tells of rivers, mountains and the {i % 7}th city." for i in range(60))  # ~700 tokens
TEXTS = [
    "A man is eating food.",
    LONG,
    "Überraschung: naïve café-goers ate crème brûlée 😀",
    "hi",
    LONG[:900] + " the end differs here.",  # past 256 tokens too: its end must not count
    "Quantum chromodynamics describes the strong interaction between quarks and gluons in hadrons.",
]
EMPTY = ["", "   "]  # sentence-transformers embeds them as [CLS] [SEP]


@pytest.fixture(scope="module")
def recipe():
    """text -> the sentence-transformers embedding, from transformers, one text at a time (no padding)."""
    folder = str(minilm_folder())
    model = transformers.AutoModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)

    @functools.cache
    def one(text: str) -> torch.Tensor:
        batch = tok([text], truncation=True, max_length=256, padding=False, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state  # (1, T, 384)
        m = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)[0]

    return one


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_the_recipe_reads_only_256_tokens(recipe, minilm):
    _, tok = minilm
    assert len(tok.encode(LONG)) > 512  # truncated at 256 by the recipe; at 512 (the tokenizer's own) would differ
    assert torch.equal(recipe(LONG), recipe(LONG + " more words at the end"))


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_embed_equals_the_recipe_in_any_batch(recipe, minilm, batch_size):
    want = torch.stack([recipe(t) for t in TEXTS + EMPTY])
    got = embed(*minilm, TEXTS + EMPTY, batch_size=batch_size)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5


def test_feature_extraction_equals_the_recipe(recipe, minilm):
    fe = pipeline("feature-extraction", model=minilm, batch_size=3)
    want = torch.stack([recipe(t) for t in TEXTS + EMPTY])
    assert (fe(TEXTS + EMPTY) - want).abs().max() < 1e-5
    assert (fe("") - recipe("")).abs().max() < 1e-5
    with pytest.raises(ValueError, match="empty"):
        fe([])


def test_batch_embeddings_equal_the_recipe(recipe, minilm, tmp_path):
    """Blank rows too: `batch` refused a corpus holding one ("'text' must be a non-empty string")."""
    inp = tmp_path / "texts.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS + EMPTY)))
    run_batch(*minilm, inp, tmp_path / "v.npy", batch_size=4, progress=False)
    want = torch.stack([recipe(t) for t in TEXTS + EMPTY]).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), want, atol=1e-5)
    inp.write_text('{"text": "a"}\n{"text": 5}\n')
    with pytest.raises(ValueError, match=r"line 2: 'text' must be a string, got 5$"):
        run_batch(*minilm, inp, tmp_path / "w.npy", progress=False)


def test_a_text_the_tokenizer_turns_into_no_tokens_is_named(minilm):
    from neurallayers.data.tokenizers import Tokenizer

    model, _ = minilm
    bare = Tokenizer.load(minilm_folder())
    bare.hf.post_processor = None  # no [CLS] / [SEP]: "" has no token to pool
    with pytest.raises(ValueError, match=r"^texts\[1\] is '', which this tokenizer encodes to no tokens"):
        embed(model, bare, ["hello", ""])
