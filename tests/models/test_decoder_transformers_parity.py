"""The decoder against transformers on the same weights where the logits alone would not show it: the attention
weights the eager kernel returns equal transformers' output_attentions (GPT-2, Llama with grouped and multi-query
heads, Mistral's sliding window; a left-padded row), and a bf16 model errs from the float32 logits about as much as
transformers' bf16 model does, and stays near its logits (both kernels, and under bf16 autocast)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.interop import gpt2, llama  # noqa: E402

VOCAB = 61
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, max_position_embeddings=64)
CASES = {  # name -> (transformers class, config kwargs)
    "gpt2": ("GPT2LMHeadModel", dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
    "llama-gqa": ("LlamaForCausalLM", LLAMA),
    "llama-mqa-llama3": ("LlamaForCausalLM", LLAMA | {"num_key_value_heads": 1, "rope_parameters": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8, "rope_theta": 500.0}}),
    "mistral-window": ("MistralForCausalLM", LLAMA | {"sliding_window": 4}),  # shorter than the sequences
    # the base grows past 6 positions
    "llama-dynamic": ("LlamaForCausalLM", LLAMA | {"max_position_embeddings": 6, "rope_parameters": {
        "rope_type": "dynamic", "factor": 3.0, "rope_theta": 100.0}}),
}
PADDED = [case for case in CASES if case != "llama-dynamic"]  # transformers scales a padded batch by its longest row


def twin(case: str, *, scale: float = 0.02, attention: str = "eager") -> tuple[torch.nn.Module, DecoderLM]:
    """A transformers model with random weights (norms and biases away from 1 and 0) and ours holding them."""
    cls, kwargs = CASES[case]
    config_class = getattr(transformers, cls.replace("LMHeadModel", "Config").replace("ForCausalLM", "Config"))
    torch.manual_seed(0)
    ref = getattr(transformers, cls)(config_class(**kwargs, initializer_range=scale,
                                                  attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    family = gpt2 if cls.startswith("GPT2") else llama
    cfg = family.config_from_hf(ref.config.to_dict()).replace(attention=attention)
    ours = DecoderLM(cfg).eval()
    ours.load_state_dict(family.to_ours(ref.state_dict(), cfg))
    return ref, ours


def left_padded(t: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids) of two rows, the second left-padded by `pad`."""
    ids = torch.randint(0, VOCAB, (2, t), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("case", PADDED)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_attention_weights_equal_transformers_output_attentions(case, attention):
    ref, ours = twin(case, attention=attention)
    ids, mask, pos = left_padded(10, 3)
    got = ours(ids, attention_mask=mask, position_ids=pos, output_attentions=True)
    want = ref(ids, attention_mask=mask, position_ids=pos, output_attentions=True)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-5, rtol=0)
    assert len(got.attentions) == len(want.attentions) == 2
    for a, b in zip(got.attentions, want.attentions, strict=True):
        assert a.shape == b.shape == (2, 4, 10, 10)
        torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[1, :, 3:], b[1, :, 3:], atol=1e-6, rtol=0)  # the padded row's real queries
        if case == "mistral-window":  # the window is what it shows: no key 4 or more behind its query
            assert (a[:, :, torch.ones(10, 10, dtype=torch.bool).tril(-4)] == 0).all()


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_bf16_logits_err_as_transformers_bf16_does(case, attention):
    """Weights at init 0.1 (logits of a few units), 40 tokens, a left-padded row: a bf16 cast of either model, and
    either under bf16 autocast, against transformers' float32 logits."""
    ref, ours = twin(case, scale=0.1, attention=attention)
    ids, mask, pos = left_padded(40, 7)
    real = mask.bool()
    want = ref(ids, attention_mask=mask, position_ids=pos).logits[real]
    assert want.abs().max() > 1.0  # large enough for bf16's rounding to show

    def logits(model: torch.nn.Module) -> torch.Tensor:
        return model(ids, attention_mask=mask, position_ids=pos).logits[real].float()

    theirs, mine = logits(copy.deepcopy(ref).to(torch.bfloat16)), logits(copy.deepcopy(ours).to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs_autocast, mine_autocast = logits(ref), logits(ours)
    for t, m in ((theirs, mine), (theirs_autocast, mine_autocast)):
        err, ref_err = (m - want).abs().max().item(), (t - want).abs().max().item()
        assert 1e-4 < ref_err < 0.1  # bf16 rounds visibly, and transformers' bf16 model is still the same model
        assert err <= 2 * ref_err, (err, ref_err)
        torch.testing.assert_close(m, t, atol=2 * ref_err, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_dynamic_ntk_equals_transformers_past_the_original_length_and_over_a_growing_cache(attention):
    """Dynamic NTK against transformers' dynamic rope (original length 6): a whole sequence of 16 grows the base for
    every position, and decoding over a KV cache grows it token by token (keys keep the rotation of the step that wrote
    them), the attention weights of the whole sequence too. Each transformers run on a fresh copy: it keeps the
    longest length it has seen."""
    ref, ours = twin("llama-dynamic", scale=0.2, attention=attention)
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(2))
    got, want = ours(ids, output_attentions=True), copy.deepcopy(ref)(ids, output_attentions=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    for a, b in zip(got.attentions, want.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    cache = ours.new_cache(1, 16)
    mine = [ours(ids[:, :4], cache=cache).logits] + [ours(ids[:, t:t + 1], cache=cache, input_pos=t).logits
                                                      for t in range(4, 16)]
    hf = copy.deepcopy(ref)
    out = hf(ids[:, :4], use_cache=True)
    theirs = [out.logits]
    for t in range(4, 16):
        out = hf(ids[:, t:t + 1], cache=out.cache, use_cache=True)
        theirs.append(out.logits)
    torch.testing.assert_close(torch.cat(mine, 1), torch.cat(theirs, 1), atol=1e-5, rtol=0)
    assert not torch.allclose(torch.cat(mine, 1), got.logits, atol=1e-3)  # the cache does differ from the whole
