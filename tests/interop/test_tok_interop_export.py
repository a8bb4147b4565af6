"""A folder `convert --to hf` writes, read by transformers: its tokenizer's model_max_length is the model's context,
and a batch of prompts pads on the left, so transformers' generate on the folder gives each prompt what ours does."""

from __future__ import annotations

import os

import pytest
import torch

from neurallayers import ModelConfig, build_model
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import generate
from neurallayers.interop.hf import save_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

BLOCK = 24
CORPUS = ["the quick brown fox jumps over the lazy dog, café 日本 🎉\n"] * 20


def exported(tmp_path, tokenizer: Tokenizer, **model) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=tokenizer.vocab_size, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16),
                         **model})
    ours = build_model(cfg).eval()
    save_hf(ours, tokenizer, tmp_path)
    return ours, str(tmp_path)


@pytest.mark.parametrize("kind", ["bpe", "char", "gpt2"])
def test_the_exported_tokenizer_knows_the_models_context(tmp_path, kind):
    """transformers read 1e30 (no limit) for a trained tokenizer and 1024 for GPT-2's, whatever the model's
    block_size, so it neither truncated nor warned at the model's real limit."""
    tok = Tokenizer.gpt2() if kind == "gpt2" else getattr(Tokenizer, f"train_{kind}")(
        CORPUS, **({"vocab_size": 300, "show_progress": False} if kind == "bpe" else {}))
    _, folder = exported(tmp_path, tok)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert theirs.model_max_length == BLOCK
    assert theirs("x " * 40, truncation=True)["input_ids"] == theirs("x " * 40)["input_ids"][:BLOCK]
    assert tok.model_max_length == (1024 if kind == "gpt2" else None)  # the caller's tokenizer is left as it was


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_transformers_batched_generate_on_the_export_equals_ours(tmp_path, position):
    """Prompts of different lengths in one batch: with the right padding transformers' default gave the shorter
    prompt's continuation after its pad tokens (and a warning)."""
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300, show_progress=False)
    llama = dict(norm="rmsnorm", mlp="swiglu", bias=False) if position == "rope" else {}
    ours, folder = exported(tmp_path, tok, position=position, **llama)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert theirs.padding_side == "left"
    theirs.pad_token = theirs.eos_token  # a batch needs a pad token; the one transformers' docs suggest
    prompts = ["the quick brown fox", "café"]
    batch = theirs(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=theirs.pad_token_id)
    texts = theirs.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert texts == [g.text for g in generate(ours, tok, prompts, max_new_tokens=6, temperature=0)]
