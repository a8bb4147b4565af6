"""ALiBi decoders against transformers' MPT with the same weights: logits and attention weights, padded and cached, for
head counts that are and are not powers of two. MPT's slopes for 6 or 12 heads come from its own rule (the slopes of
the next power of two, odd ones first), a second oracle beside BLOOM's (test_decoder_bloom.py); its bias is relative
to the last key, which equals ours (relative to the query) up to a constant per query row. MPT has no biases, an
exact-erf GELU MLP and its output layer tied to the embedding."""

from __future__ import annotations

import os

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 61
NAMES = {  # ours -> MPT's, in each block
    "attn.qkv": "attn.Wqkv",  # rows q | k | v, as ours
    "attn.proj": "attn.out_proj",
    "norm1": "norm_1",
    "norm2": "norm_2",
    "mlp.fc": "ffn.up_proj",
    "mlp.proj": "ffn.down_proj",
}


def mpt_twin(n_head: int, kernel: str) -> tuple[torch.nn.Module, DecoderLM]:
    torch.manual_seed(0)
    c = 8 * n_head
    ref = transformers.MptForCausalLM(transformers.MptConfig(
        vocab_size=VOCAB, d_model=c, n_heads=n_head, n_layers=2, max_seq_len=32, layer_norm_epsilon=1e-5,
        initializer_range=0.2)).eval()
    with torch.no_grad():  # norms away from their initial ones
        for p in ref.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    cfg = ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=n_head, n_embd=c, position="alibi",
                      bias=False, gelu_approx="none", attention=kernel)
    sd = ref.state_dict()
    ours = {"wte.weight": sd["transformer.wte.weight"], "norm_f.weight": sd["transformer.norm_f.weight"]}
    for i in range(cfg.n_layer):
        for a, b in NAMES.items():
            ours[f"blocks.{i}.{a}.weight"] = sd[f"transformer.blocks.{i}.{b}.weight"]
    net = DecoderLM(cfg).eval()
    net.load_state_dict(ours)  # strict: every weight is MPT's; lm_head is the tied embedding
    return ref, net


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("n_head", [4, 6, 12])
@torch.no_grad()
def test_alibi_decoder_equals_transformers_mpt(n_head, kernel):
    ref, net = mpt_twin(n_head, kernel)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # row 1 left-padded
    real = mask.bool()
    for kw in ({}, {"attention_mask": mask}):
        got, want = net(ids, output_attentions=True, **kw), ref(ids, output_attentions=True, **kw)
        torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-5, rtol=0)
        for a, b in zip(got.attentions, want.attentions, strict=True):
            torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(a[1, :, 5:], b[1, :, 5:], atol=1e-5, rtol=0)  # the real queries
    cache = net.new_cache(2, 20)
    steps = [net(ids[:, :8], attention_mask=mask[:, :8], cache=cache).logits]
    steps += [net(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache, input_pos=t).logits
              for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, 1)[real], ref(ids, attention_mask=mask).logits[real], atol=1e-5,
                               rtol=0)
