"""fill-mask on batches whose padding holds the mask token's id, and the cut-off message naming its input."""

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model
from neurallayers.pipelines import pipeline

CORPUS = ["some text to train on, and more words here"] * 5


def mlm_of(tok: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        causal=False,
        vocab_size=tok.vocab_size,
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=16,
        head="mlm",
        type_vocab_size=0,
    )
    return build_model(cfg).eval()


def test_a_batch_padded_with_the_mask_tokens_id_fills_each_text_as_alone():
    """A tokenizer without a pad token pads with id 0; where 0 is the mask token, every padded position counted as a
    second mask and a batch of two short texts failed with "the mask token was cut off, the text is longer than 16
    tokens"."""
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300, special_tokens=["<mask>", "<|endoftext|>"], show_progress=False)
    assert (tok.mask_id, tok.pad_id) == (0, None)
    fill = pipeline("fill-mask", model=(mlm_of(tok), tok))
    texts = ["some <mask>", "and more words <mask> here"]
    for text, got in zip(texts, fill(texts, top_k=3), strict=True):
        alone = fill(text, top_k=3)
        assert [(p["token"], p["sequence"]) for p in got] == [(p["token"], p["sequence"]) for p in alone]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in alone], abs=1e-6)


def test_a_mask_cut_off_by_truncation_names_its_input():
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300, special_tokens=["<|endoftext|>", "<mask>"], show_progress=False)
    fill = pipeline("fill-mask", model=(mlm_of(tok), tok))
    with pytest.raises(ValueError, match=r"inputs\[1\]: the mask token was cut off, the text is longer than 16 tokens"):
        fill(["some <mask>", "some text " * 20 + "<mask>"])
