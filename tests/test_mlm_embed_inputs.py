"""Bad text into embed, tokenize_batch and the encoder pipelines: one clear ValueError naming the input."""

import os

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import embed, minilm_folder, tokenize_batch
from neurallayers.models import build_model
from neurallayers.pipelines import pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.load(minilm_folder())


def tiny_bert(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        causal=False,
        vocab_size=30522,
        block_size=32,
        n_layer=1,
        n_head=2,
        n_embd=16,
        intermediate_size=32,
        norm_placement="post",
        gelu_approx="none",
        type_vocab_size=2,
        pad_token_id=0,
        pooler=head == "sequence_classification",
        head=head,
    )
    return build_model(cfg).eval()


def test_a_lone_surrogate_is_named_not_a_tokenizers_type_error(wordpiece):
    """JSON's "\\ud83d" (half an emoji) or a non-UTF-8 argument decodes to a lone surrogate; HF tokenizers refuse it
    with "TypeError: TextEncodeInput must be Union[TextInputSequence, ...]", naming neither the text nor the cause."""
    bad = ["fine", "half an emoji \ud83d here"]
    where = r"\[1\] has a character that is not valid Unicode at position 14 \(U\+D83D, a lone surrogate"
    with pytest.raises(ValueError, match="texts" + where):
        embed(tiny_bert("none"), wordpiece, bad)
    with pytest.raises(ValueError, match="texts" + where):
        tokenize_batch(wordpiece, bad)
    with pytest.raises(ValueError, match="text_pairs" + where):
        tokenize_batch(wordpiece, ["a", "b"], text_pairs=bad)
    with pytest.raises(ValueError, match="inputs" + where):
        pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece))(["[MASK] is", bad[1]])
    with pytest.raises(ValueError, match="inputs" + where):
        pipeline("token-classification", model=(tiny_bert("token_classification"), wordpiece))(bad)
    with pytest.raises(ValueError, match="texts" + where):
        pipeline("feature-extraction", model=(tiny_bert("none"), wordpiece))(bad)
    assert embed(tiny_bert("none"), wordpiece, ["a whole emoji \U0001f600"]).shape == (1, 16)
