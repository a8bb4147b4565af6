"""fill-mask on an encoder whose vocabulary is padded past its tokenizer's (vocab_size rounded up): a padded id among
the predictions raised "token id ... is outside the vocabulary"; it reads as "" there, as transformers decodes it."""

import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import minilm_folder
from neurallayers.models import build_model
from neurallayers.pipelines import pipeline


def test_padded_ids_among_the_predictions_read_as_empty_text():
    tok = Tokenizer.load(minilm_folder())  # 30522 ids
    torch.manual_seed(0)
    cfg = ModelConfig(causal=False, vocab_size=tok.vocab_size + 6, block_size=64, n_layer=1, n_head=2, n_embd=16,
                      intermediate_size=32, norm_placement="post", gelu_approx="none", type_vocab_size=2,
                      pad_token_id=0, head="mlm")
    fill = pipeline("fill-mask", model=(build_model(cfg).eval(), tok))
    out = fill("the [MASK] is red", top_k=cfg.vocab_size)  # every row, the padded ones too
    padded = [p for p in out if p["token"] >= tok.vocab_size]
    assert len(padded) == 6
    assert all(p["token_str"] == "" and p["sequence"] == "the is red" for p in padded)
    assert abs(sum(p["score"] for p in out) - 1) < 1e-4
