"""Architecture mixtures against a decoder written here from the papers in plain PyTorch, one head at a time: ALiBi
(Press et al.: slopes 2^(-8i/n), the interleaved rule for head counts that are not powers of 2) with grouped and
multi-query attention, the sinusoidal table of "Attention is all you need", GeGLU (Shazeer 2020) with biases,
LayerScale (CaiT) in pre- and post-norm blocks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nl_model_helpers import BASE, random_ids

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM

MIXES = {
    "alibi-gqa-6-heads": dict(position="alibi", n_head=6, n_embd=36, n_kv_head=2),
    "alibi-mqa-12-heads-rmsnorm": dict(position="alibi", n_head=12, n_embd=48, n_kv_head=1, norm="rmsnorm"),
    "post-norm-layer-scale": dict(norm_placement="post", layer_scale=0.3),
    "gpt1-sinusoidal-geglu-layer-scale": dict(
        norm_placement="post", final_norm=False, position="sinusoidal", mlp="geglu", layer_scale=0.3
    ),
    "geglu-biases-erf": dict(mlp="geglu", bias=True, gelu_approx="none"),
}


def paper_slopes(n: int) -> list[float]:
    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    if math.log2(n).is_integer():
        return geometric(n)
    closest = 2 ** math.floor(math.log2(n))
    return geometric(closest) + geometric(2 * closest)[0::2][: n - closest]


def paper_sinusoid(t: int, d: int) -> torch.Tensor:
    return torch.tensor(
        [
            [math.sin(p / 10000 ** (c / d)) if c % 2 == 0 else math.cos(p / 10000 ** ((c - 1) / d)) for c in range(d)]
            for p in range(t)
        ]
    )


def reference_logits(net: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    cfg, w = net.config, {k: v.detach() for k, v in net.state_dict().items()}
    b, t = ids.shape
    h, kv, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    x = w["wte.weight"][ids]
    if cfg.position == "sinusoidal":
        x = x + paper_sinusoid(t, cfg.n_embd)
    elif cfg.position == "learned":
        x = x + w["wpe.weight"][:t]

    def norm(name: str, y: torch.Tensor) -> torch.Tensor:
        if cfg.norm == "layernorm":
            return F.layer_norm(y, (cfg.n_embd,), w[name + ".weight"], w.get(name + ".bias"), cfg.norm_eps)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w[name + ".weight"]

    def linear(name: str, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, w[name + ".weight"], w.get(name + ".bias"))

    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    distance = torch.arange(t)[None, :] - torch.arange(t)[:, None]  # key - query
    slopes = paper_slopes(h)
    pre = cfg.norm_placement == "pre"
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        q, k, v = linear(p + "attn.qkv", norm(p + "norm1", x) if pre else x).split((h * d, kv * d, kv * d), -1)
        heads = []
        for j in range(h):
            g = j * kv // h  # the key/value head that query head j reads: h / kv query heads share one
            qj, kj, vj = q[..., j * d : (j + 1) * d], k[..., g * d : (g + 1) * d], v[..., g * d : (g + 1) * d]
            scores = qj @ kj.transpose(-1, -2) / math.sqrt(d)
            if cfg.position == "alibi":
                scores = scores + slopes[j] * distance
            heads.append(scores.masked_fill(future, float("-inf")).softmax(-1) @ vj)
        a = linear(p + "attn.proj", torch.cat(heads, -1))
        a = a * w[p + "ls1.gamma"] if cfg.layer_scale else a
        x = x + a if pre else norm(p + "norm1", x + a)
        fc = linear(p + "mlp.fc", norm(p + "norm2", x) if pre else x)
        if cfg.mlp == "geglu":
            gate, up = fc.chunk(2, -1)
            m = linear(p + "mlp.proj", F.gelu(gate, approximate=cfg.gelu_approx) * up)
        else:
            m = linear(p + "mlp.proj", F.gelu(fc, approximate=cfg.gelu_approx))
        m = m * w[p + "ls2.gamma"] if cfg.layer_scale else m
        x = x + m if pre else norm(p + "norm2", x + m)
    if cfg.has_final_norm:
        x = norm("norm_f", x)
    return x @ w["lm_head.weight"].T


@pytest.mark.parametrize("name", list(MIXES))
@torch.no_grad()
def test_mixture_equals_the_plain_reference(name):
    torch.manual_seed(0)
    net = DecoderLM(ModelConfig(**{**BASE, **MIXES[name], "init_std": 0.2})).eval()
    for p in net.parameters():  # norms, biases and LayerScale away from their initial constants
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.2)
    ids = random_ids(2, 30, seed=1)
    torch.testing.assert_close(net(ids).logits, reference_logits(net, ids), atol=1e-5, rtol=0)
