"""Tokenizer copies (for_model, with_bos, with_mask_token) own their mutable state: editing one leaves the other."""

from __future__ import annotations

import os

import pytest

from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def original() -> Tokenizer:
    tok = Tokenizer.train_bpe(["hello world, the quick brown fox\n"] * 10, vocab_size=300, show_progress=False)
    tok.extra_eos_ids = [5]
    tok.hf_settings = {"truncation_side": "left"}
    tok.named_chat_templates = {"rag": "R"}
    return tok


@pytest.mark.parametrize("make", [
    lambda t: t.for_model(block_size=64, causal=False),
    lambda t: t.for_model(block_size=64, causal=True),
    lambda t: t.with_mask_token(),
    lambda t: t.with_bos(True),
], ids=["for_model-encoder", "for_model-decoder", "with_mask_token", "with_bos"])
def test_editing_a_copy_leaves_the_original(make):
    tok = original()
    out = make(tok)
    assert out is not tok
    assert out.named_chat_templates == {"rag": "R"}
    out.extra_eos_ids.append(7)
    out.hf_settings["padding_side"] = "right"
    out.named_chat_templates["tool_use"] = "T"
    assert tok.extra_eos_ids == [5]
    assert tok.hf_settings == {"truncation_side": "left"}
    assert tok.named_chat_templates == {"rag": "R"}
