"""Tiny decoder configs covering every architecture switch, shared by the decoder tests beside this file."""

from __future__ import annotations

import functools

import torch

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM

VOCAB = 61
BASE = dict(vocab_size=VOCAB, block_size=48, n_layer=2, n_head=4, n_embd=32, init_std=0.1)
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
             scale_residual_init=False)

# name -> fields over BASE; "dynamic" rope changes its base with the sequence length, so cached decoding (which
# keeps keys rotated at their own time, as transformers does) is not the full forward past the trained length.
CONFIGS: dict[str, dict] = {
    "gpt2": dict(),
    "llama-gqa": dict(LLAMA, n_kv_head=2),
    "mqa-rope-linear": dict(LLAMA, n_kv_head=1, rope_scaling={"type": "linear", "factor": 2.0}),
    "rope-llama3": dict(LLAMA, n_kv_head=2, rope_scaling={"type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 16}),
    "rope-dynamic": dict(LLAMA, rope_scaling={"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8}),
    "alibi": dict(position="alibi", n_head=6, n_embd=36),  # 6 heads: the non-power-of-2 ALiBi slopes
    "sinusoidal-geglu": dict(position="sinusoidal", mlp="geglu"),
    "post-norm": dict(norm_placement="post"),
    "gpt1": dict(norm_placement="post", final_norm=False, gelu_approx="none"),
    "sliding-window": dict(LLAMA, sliding_window=5),
    # Qwen2's form: layers 0 and 2 slide, layer 1 attends to every token
    "window-layers": dict(LLAMA, n_layer=3, sliding_window=5, sliding_window_layers=[0, 2]),
    # the original length is below the test sequences; betas that put YaRN's ramp inside the 8-dim head
    "rope-yarn": dict(LLAMA, n_kv_head=2, rope_scaling={"type": "yarn", "factor": 4.0, "beta_fast": 4,
                                                        "beta_slow": 0.5, "original_max_position_embeddings": 12}),
    "layer-scale-no-pos": dict(position="none", layer_scale=0.5, bias=False),
}
CACHED = [name for name in CONFIGS if name != "rope-dynamic"]


def config(name: str, **changes) -> ModelConfig:
    return ModelConfig(**{**BASE, **CONFIGS[name], **changes})


@functools.cache
def model(name: str, seed: int = 0, **changes) -> DecoderLM:
    """A random DecoderLM in eval mode (cached: tests must not change it)."""
    torch.manual_seed(seed)
    return DecoderLM(config(name, **changes)).eval()


def random_ids(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))
