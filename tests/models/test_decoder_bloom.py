"""ALiBi decoders against transformers' BLOOM with the same weights: the whole model, padded and cached, for head
counts that are and are not powers of two. BLOOM normalises its word embeddings (a per-token function of the id, so
our table holds the normalised rows) and ties its output layer to the raw table (ours is untied and holds that)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 61


def bloom_to_ours(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    h, d, c = cfg.n_head, cfg.head_dim, cfg.n_embd
    emb = "transformer.word_embeddings"
    out = {
        "wte.weight": F.layer_norm(
            sd[f"{emb}.weight"], (c,), sd[f"{emb}_layernorm.weight"], sd[f"{emb}_layernorm.bias"], cfg.norm_eps
        ),
        "lm_head.weight": sd["lm_head.weight"],
        "norm_f.weight": sd["transformer.ln_f.weight"],
        "norm_f.bias": sd["transformer.ln_f.bias"],
    }
    names = {
        "attn.proj": "self_attention.dense",
        "norm1": "input_layernorm",
        "norm2": "post_attention_layernorm",
        "mlp.fc": "mlp.dense_h_to_4h",
        "mlp.proj": "mlp.dense_4h_to_h",
    }
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in names.items():
            for kind in ("weight", "bias"):
                out[f"{ours}{a}.{kind}"] = sd[f"{theirs}{b}.{kind}"]
        qkv = theirs + "self_attention.query_key_value."  # rows (head, q|k|v, head_dim): ours are (q|k|v, head, ...)
        out[ours + "attn.qkv.weight"] = sd[qkv + "weight"].view(h, 3, d, c).transpose(0, 1).reshape(3 * c, c)
        out[ours + "attn.qkv.bias"] = sd[qkv + "bias"].view(h, 3, d).transpose(0, 1).reshape(3 * c)
    return out


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("n_head", [4, 6])
@torch.no_grad()
def test_alibi_decoder_equals_transformers_bloom(n_head, kernel):
    torch.manual_seed(0)
    c = 8 * n_head
    ref = transformers.BloomForCausalLM(
        transformers.BloomConfig(
            vocab_size=VOCAB,
            hidden_size=c,
            n_layer=2,
            n_head=n_head,
            layer_norm_epsilon=1e-5,
            initializer_range=0.2,
        )
    ).eval()
    for p in ref.parameters():  # norms and biases away from their initial constants
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.2)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        block_size=32,
        n_layer=2,
        n_head=n_head,
        n_embd=c,
        position="alibi",
        tie_embeddings=False,
        attention=kernel,
    )
    net = DecoderLM(cfg).eval()
    net.load_state_dict(bloom_to_ours(ref.state_dict(), cfg))
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # row 1 left-padded
    want = ref(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(net(ids, attention_mask=mask).logits[real], want[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(net(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
    cache = net.new_cache(2, 20)
    steps = [net(ids[:, :8], attention_mask=mask[:, :8], cache=cache).logits]
    steps += [
        net(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, input_pos=t).logits for t in range(8, 20)
    ]
    torch.testing.assert_close(torch.cat(steps, 1)[real], want[real], atol=1e-5, rtol=0)
