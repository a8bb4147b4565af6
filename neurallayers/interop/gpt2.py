"""Hugging Face GPT-2 (`model_type: "gpt2"`) <-> NeuralLayers DecoderLM: config and weights.

One literal weight-name map drives both directions. GPT-2 stores its linear layers as `Conv1D` with the weight
laid out (in, out), the transpose of `nn.Linear`; those four weights are transposed on the way in and out.
"""

from __future__ import annotations

import torch

from neurallayers.config import ModelConfig
from neurallayers.interop.hf_config import config_architecture, config_number
from neurallayers.interop.weight_maps import (
    drop_tied_lm_head,
    expand_map,
    hf_shapes,
    reference_state,
    rename_to_hf,
    rename_to_ours,
)

# ours <-> Hugging Face GPT2LMHeadModel. "{i}" is the layer index.
_H = "transformer.h.{i}."
WEIGHT_MAP: tuple[tuple[str, str], ...] = (
    ("wte.weight", "transformer.wte.weight"),
    ("wpe.weight", "transformer.wpe.weight"),
    ("blocks.{i}.norm1.weight", _H + "ln_1.weight"),
    ("blocks.{i}.norm1.bias", _H + "ln_1.bias"),
    ("blocks.{i}.attn.qkv.weight", _H + "attn.c_attn.weight"),
    ("blocks.{i}.attn.qkv.bias", _H + "attn.c_attn.bias"),
    ("blocks.{i}.attn.proj.weight", _H + "attn.c_proj.weight"),
    ("blocks.{i}.attn.proj.bias", _H + "attn.c_proj.bias"),
    ("blocks.{i}.norm2.weight", _H + "ln_2.weight"),
    ("blocks.{i}.norm2.bias", _H + "ln_2.bias"),
    ("blocks.{i}.mlp.fc.weight", _H + "mlp.c_fc.weight"),
    ("blocks.{i}.mlp.fc.bias", _H + "mlp.c_fc.bias"),
    ("blocks.{i}.mlp.proj.weight", _H + "mlp.c_proj.weight"),
    ("blocks.{i}.mlp.proj.bias", _H + "mlp.c_proj.bias"),
    ("norm_f.weight", "transformer.ln_f.weight"),
    ("norm_f.bias", "transformer.ln_f.bias"),
    ("lm_head.weight", "lm_head.weight"),
)
# Conv1D weights, (in, out) in the checkpoint.
TRANSPOSED = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight")
# Causal-mask buffers that older checkpoints saved; they carry no weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# HF name -> our gelu_approx: transformers' ACT2FN names for the tanh approximation and for the exact (erf) GELU
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_python_tanh": "tanh", "gelu_fast": "tanh",
               "gelu_accurate": "tanh", "gelu": "none", "gelu_python": "none"}
ARCHITECTURE = "GPT2LMHeadModel"
# what config.json's `architectures` may name: the LM, or the bare GPT2Model (the hub's gpt2; its head is the tied
# embedding). A task head (GPT2ForSequenceClassification ...) is refused rather than loaded without it.
READ_ARCHITECTURES = (ARCHITECTURE, "GPT2Model")


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a Hugging Face GPT2Config dict (config.json).

    Raises:
        ValueError: not a GPT-2 config, or a GPT-2 variant DecoderLM does not build (cross attention,
            per-layer attention scaling, unscaled attention, an activation other than GELU, a task head).
    """
    if not isinstance(hf, dict):
        raise ValueError(f"expected a config.json dict, got {type(hf).__name__}")
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"config model_type={hf.get('model_type')!r}: this converter reads 'gpt2'")
    if config_architecture(hf, ARCHITECTURE) not in READ_ARCHITECTURES:
        raise ValueError(f"config architectures={hf['architectures']!r}: NeuralLayers reads GPT-2 language models "
                         f"({', '.join(READ_ARCHITECTURES)}); that model's head has no place here")
    act = hf.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in ACTIVATIONS:  # a list or an object: unhashable
        raise ValueError(f"config activation_function={act!r}: supported are {', '.join(ACTIVATIONS)}")
    unsupported = {"add_cross_attention": True, "scale_attn_by_inverse_layer_idx": True, "scale_attn_weights": False}
    bad = [f"{k}={hf[k]!r}" for k, v in unsupported.items() if k in hf and hf[k] == v]
    if bad:
        raise ValueError(f"config {', '.join(bad)}: not supported by NeuralLayers' GPT-2")
    n_embd = hf.get("n_embd", 768)
    return ModelConfig(
        name=str(hf.get("_name_or_path") or "gpt2"), causal=True, vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024), n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12),
        n_embd=n_embd, intermediate_size=hf.get("n_inner"), norm="layernorm",  # None: 4 * n_embd, as in HF
        norm_eps=config_number(hf, "layer_norm_epsilon", 1e-5), norm_placement="pre", mlp="gelu",
        gelu_approx=ACTIVATIONS[act], position="learned", bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), dropout=config_number(hf, "resid_pdrop", 0.1),
        attn_dropout=config_number(hf, "attn_pdrop", 0.1), init_std=config_number(hf, "initializer_range", 0.02),
        extra={"hf_model_type": "gpt2"},
    )


def config_to_hf(cfg: ModelConfig) -> dict:
    """A GPT2Config dict (architectures ["GPT2LMHeadModel"]) for `cfg`.

    Raises:
        ValueError: `cfg` has a switch GPT-2 cannot express; the message names every such field.
    """
    wanted = {"causal": True, "norm": "layernorm", "norm_placement": "pre", "mlp": "gelu", "position": "learned",
              "bias": True, "layer_scale": None, "sliding_window": None, "n_kv_head": cfg.n_head,
              "head_dim": cfg.n_embd // cfg.n_head}
    bad = [f"{k}={getattr(cfg, k)!r} (GPT-2 needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if bad:
        raise ValueError("config cannot be written as a Hugging Face GPT-2: " + "; ".join(bad))
    return {
        "architectures": [ARCHITECTURE], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "n_inner": cfg.intermediate_size, "activation_function": "gelu_new" if cfg.gelu_approx == "tanh" else "gelu",
        "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout, "initializer_range": cfg.init_std, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _transform_in(our: str, hf_tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    (t,) = hf_tensors
    return t.t() if our.endswith(TRANSPOSED) else t


def _transform_out(our: str, t: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    return [t.t().contiguous() if our.endswith(TRANSPOSED) else t]


def _entries(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    return expand_map(WEIGHT_MAP, cfg.n_layer, skip=("lm_head.weight",) if cfg.tie_embeddings else ())


def to_ours(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our DecoderLM state dict from a Hugging Face GPT-2 state dict (GPT2LMHeadModel or bare GPT2Model keys).

    Raises:
        CheckpointError: missing, unexpected or mis-shaped weights, named by their Hugging Face keys.
    """
    hf_sd = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in hf_sd.items()}
    hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        drop_tied_lm_head(hf_sd, "transformer.wte.weight")  # an alias of the embedding when tied; the embedding wins
    return rename_to_ours(hf_sd, _entries(cfg), hf_shapes(cfg, to_hf), _transform_in, cfg, family="GPT-2")


def to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The Hugging Face GPT2LMHeadModel state dict (the keys `save_pretrained` writes) from ours.

    Raises:
        CheckpointError: `sd` does not match the config (missing, unexpected or mis-shaped keys, named).
    """
    return rename_to_hf(sd, _entries(cfg), reference_state(cfg), _transform_out, cfg)
