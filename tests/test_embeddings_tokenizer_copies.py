"""tokenize_batch / embed cut texts at a caller's max_length without a tokenizer copy per length: a server client
choosing a new truncate_prompt_tokens per request grew one ~6 MB copy each, kept for the tokenizer's life. The cut
must stay what HF's own truncation gives (special tokens kept, pairs cut longest-first)."""

import gc
import weakref

import pytest

from neurallayers import embeddings
from neurallayers.data.tokenizer_files import copy_hf
from neurallayers.data.tokenizers import Tokenizer

TEXTS = ["x", "hello world", "héllo wörld 😀 ÜNÏCODE " * 5, "The quick brown fox " * 40]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load(embeddings.minilm_folder())


def test_many_lengths_keep_few_copies(tokenizer, monkeypatch):
    made = []

    def counted(hf):
        copy = copy_hf(hf)
        made.append(weakref.ref(copy))
        return copy

    monkeypatch.setattr(embeddings, "copy_hf", counted)
    fresh = Tokenizer.load(embeddings.minilm_folder())  # no copies cached yet
    for n in range(3, 53):
        embeddings.tokenize_batch(fresh, ["hello world"], max_length=n)
    for n in range(5, 13):  # pairs keep HF's longest-first cut in a truncating copy: only the latest few stay
        embeddings.tokenize_batch(fresh, ["hello world"], text_pairs=["and more"], max_length=n)
    gc.collect()
    alive = sum(r() is not None for r in made)
    assert alive <= 5, f"{alive} tokenizer copies kept after 58 lengths"


def _rows(batch):
    """tokenize_batch's padded tensors -> per text (ids, type ids, offsets, special mask) of its real tokens."""
    out = []
    for i, m in enumerate(batch["attention_mask"].bool()):
        out.append((batch["input_ids"][i, m].tolist(), batch["token_type_ids"][i, m].tolist(),
                    [tuple(o) for o in batch["offsets"][i, m].tolist()], batch["special_tokens_mask"][i, m].tolist()))
    return out


@pytest.mark.parametrize("special", [True, False])
def test_cut_matches_hf_truncation(tokenizer, special):
    pairs = ["a second segment here"] * len(TEXTS)
    hf = copy_hf(tokenizer.hf)
    hf.no_padding()
    for n in (5, 17, 256):
        hf.enable_truncation(n)
        for second in (None, pairs):
            inputs = TEXTS if second is None else list(zip(TEXTS, second, strict=True))
            want = [(e.ids, e.type_ids, e.offsets, e.special_tokens_mask)
                    for e in hf.encode_batch(inputs, add_special_tokens=special)]
            got = embeddings.tokenize_batch(tokenizer, TEXTS, text_pairs=second, max_length=n,
                                            add_special_tokens=special, return_offsets=True)
            assert _rows(got) == want, (n, second is not None)
