"""Greedy generate() gives the same tokens as transformers' GPT2LMHeadModel.generate(do_sample=False) on the same
random weights (mapped with neurallayers.interop), plain and with the score processors."""

from __future__ import annotations

import os

import pytest
import torch

from neurallayers.generation import generate
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def models():
    from neurallayers.interop import gpt2

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=1)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = gpt2.config_from_hf(hf_cfg.to_dict())
    ours = DecoderLM(cfg).eval()
    ours.load_state_dict(gpt2.to_ours(hf.state_dict(), cfg), strict=False)
    return hf, ours


@pytest.mark.parametrize("settings", [
    {},
    {"repetition_penalty": 1.4},
    {"no_repeat_ngram_size": 2},
    {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3, "min_new_tokens": 5},
])
def test_greedy_equals_transformers(models, settings: dict) -> None:
    hf, ours = models
    prompts = [[5, 9, 2], [7, 3, 3, 8, 12, 4, 40], [60]]
    got = generate(ours, None, prompts, temperature=0, max_new_tokens=16, stop_token_ids=[1], **settings)
    for prompt, g in zip(prompts, got, strict=True):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=16, eos_token_id=1, pad_token_id=1, **settings)
        want = out[0, len(prompt):].tolist()
        finished = 1 in want
        want = want[:want.index(1)] if finished else want
        assert g.token_ids == want
        assert g.finish_reason == ("stop" if finished else "length")
