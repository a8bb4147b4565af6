"""Hugging Face Llama and Mistral (`model_type: "llama" | "mistral"`) <-> NeuralLayers DecoderLM; the config
fields and weights every Llama-shaped family shares (Qwen2 too: interop/qwen2.py).

One literal weight-name map drives both directions. Llama keeps q, k and v (and the MLP's gate and up) as
separate linears; ours are fused, so those are concatenated along the output rows on the way in (q, then k,
then v; gate, then up) and split back on the way out. Our RoPE uses the same half-split layout as Hugging
Face, so q/k need no permutation. Mistral is Llama with a sliding attention window and no biases.
"""

from __future__ import annotations

import math

import torch

from neurallayers.checks import is_int
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

# ours <-> Hugging Face LlamaForCausalLM / MistralForCausalLM. "{i}" is the layer index; a tuple on the HF side
# is concatenated along dim 0 on ours.
_L = "model.layers.{i}."
WEIGHT_MAP: tuple[tuple[str, str | tuple[str, ...]], ...] = (
    ("wte.weight", "model.embed_tokens.weight"),
    ("blocks.{i}.norm1.weight", _L + "input_layernorm.weight"),
    ("blocks.{i}.attn.qkv.weight", (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight",
                                    _L + "self_attn.v_proj.weight")),
    ("blocks.{i}.attn.qkv.bias", (_L + "self_attn.q_proj.bias", _L + "self_attn.k_proj.bias",
                                  _L + "self_attn.v_proj.bias")),
    ("blocks.{i}.attn.proj.weight", _L + "self_attn.o_proj.weight"),
    ("blocks.{i}.attn.proj.bias", _L + "self_attn.o_proj.bias"),
    ("blocks.{i}.norm2.weight", _L + "post_attention_layernorm.weight"),
    ("blocks.{i}.mlp.fc.weight", (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight")),
    ("blocks.{i}.mlp.fc.bias", (_L + "mlp.gate_proj.bias", _L + "mlp.up_proj.bias")),
    ("blocks.{i}.mlp.proj.weight", _L + "mlp.down_proj.weight"),
    ("blocks.{i}.mlp.proj.bias", _L + "mlp.down_proj.bias"),
    ("norm_f.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # a buffer older checkpoints saved
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
FAMILY_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}  # for messages about a family's weights
# transformers' MistralConfig defaults that differ from LlamaConfig's, for keys a config.json leaves out (a missing
# sliding_window is a 4096-token window there, not none)
MISTRAL_DEFAULTS = {"sliding_window": 4096, "num_key_value_heads": 8, "intermediate_size": 14336,
                    "max_position_embeddings": 4096 * 32}
SILU_NAMES = ("silu", "swish")  # transformers' two names for SiLU (ACT2FN)
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")  # rope_type values we build ("default" = unscaled)
# config.json key for a dynamic-NTK or YaRN model's context when it is not the one read back from the other keys
# (transformers keeps unknown keys as attributes and writes them back)
BLOCK_SIZE_KEY = "neurallayers_block_size"


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a Hugging Face LlamaConfig or MistralConfig dict (config.json).

    RoPE settings are read from `rope_parameters` (transformers 5) or from `rope_scaling` + `rope_theta` (older; it
    wins where both are set, as in transformers). With dynamic NTK scaling, max_position_embeddings is the original
    length and block_size becomes factor times it; with YaRN, block_size is factor times the original length (vLLM's
    rule) or max_position_embeddings where that is longer. Keys a Mistral config.json leaves out take MistralConfig's
    defaults.

    Raises:
        ValueError: not a Llama/Mistral config, or a variant DecoderLM does not build (an activation other than
            SiLU, attention and MLP biases that differ, a RoPE type other than those in ROPE_TYPES, an architecture
            other than a causal LM).
    """
    if not isinstance(hf, dict):
        raise ValueError(f"expected a config.json dict, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"config model_type={model_type!r}: this converter reads {', '.join(ARCHITECTURES)}")
    if model_type == "mistral":
        hf = MISTRAL_DEFAULTS | hf
    # transformers' Mistral builds no biases, whatever attention_bias / mlp_bias its config.json carries
    reads_bias = model_type == "llama"
    attn_bias = reads_bias and bool(hf.get("attention_bias", False))
    mlp_bias = reads_bias and bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise ValueError(f"config attention_bias={attn_bias} with mlp_bias={mlp_bias}: NeuralLayers needs both "
                         "equal (one `bias` switch)")
    window = hf.get("sliding_window") if model_type == "mistral" else None
    return llama_shaped_config(hf, model_type, ARCHITECTURES[model_type], bias=attn_bias, sliding_window=window)


def llama_shaped_config(hf: dict, model_type: str, architecture: str, *, bias: bool, qkv_bias: bool | None = None,
                        sliding_window: int | None, sliding_window_layers: list[int] | None = None) -> ModelConfig:
    """The ModelConfig of a Llama-shaped config.json (Llama's defaults for the keys it leaves out), given what the
    family decides: its biases and its attention window (and the layers that slide, None for every one).

    Raises:
        ValueError: an architecture other than a causal LM, an activation other than SiLU, a RoPE type other than
            those in ROPE_TYPES.
    """
    arch = config_architecture(hf, architecture)
    if not arch.endswith("ForCausalLM"):  # a task head or a bare LlamaModel: no LM head to load
        raise ValueError(f"config architectures={hf['architectures']!r}: NeuralLayers reads causal language models "
                         f"({architecture}); that model's head has no place here")
    act = hf.get("hidden_act", "silu")
    if act not in SILU_NAMES:
        raise ValueError(f"config hidden_act={act!r}: only {' or '.join(map(repr, SILU_NAMES))} (SwiGLU) is supported")
    n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    theta, scaling = _rope_from_hf(hf)
    block_size = hf.get("max_position_embeddings", 2048)
    if scaling and scaling["type"] == "dynamic":
        # transformers grows the RoPE base past max_position_embeddings (it ignores any other original length);
        # the context that scaling is made for is factor times longer.
        scaling["original_max_position_embeddings"] = block_size
        # the context: what an export of ours recorded (config_to_hf), else factor times the original
        block_size = int(hf.get(BLOCK_SIZE_KEY) or block_size * scaling["factor"])
    elif scaling and scaling["type"] == "yarn" and is_int(block_size) and is_int(
            scaling["original_max_position_embeddings"]):  # else ModelConfig names the bad one
        # Qwen2.5's long-context recipe leaves max_position_embeddings at the original length; DeepSeek's states both
        block_size = hf.get(BLOCK_SIZE_KEY) or max(block_size, _yarn_context(scaling))
    return ModelConfig(
        name=str(hf.get("_name_or_path") or model_type), causal=True, vocab_size=hf.get("vocab_size", 32000),
        block_size=block_size, n_layer=hf.get("num_hidden_layers", 32),
        n_head=n_head, n_embd=n_embd, n_kv_head=hf.get("num_key_value_heads") or n_head,
        head_dim=hf.get("head_dim") or n_embd // n_head, intermediate_size=hf.get("intermediate_size", 11008),
        norm="rmsnorm", norm_eps=config_number(hf, "rms_norm_eps", 1e-6), norm_placement="pre", mlp="swiglu",
        position="rope", rope_theta=theta, rope_scaling=scaling, sliding_window=sliding_window,
        sliding_window_layers=sliding_window_layers, bias=bias,
        qkv_bias=qkv_bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_dropout=config_number(hf, "attention_dropout", 0.0),
        init_std=config_number(hf, "initializer_range", 0.02),
        scale_residual_init=False, extra={"hf_model_type": model_type},
    )


def _rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling) from the older `rope_scaling` + `rope_theta`, or else `rope_parameters`."""
    # transformers 5 takes `rope_scaling` over `rope_parameters` when both are set (4.x reads only the former), as
    # in a 5.x folder whose config.json a user extended the 4.x way
    field = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(field) or {}
    if not isinstance(params, dict):
        raise ValueError(f"config {field}={params!r}: expected an object")
    theta = config_number(params if params.get("rope_theta") is not None else hf, "rope_theta", 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"config {field} rope_type={kind!r}: supported are {', '.join(ROPE_TYPES)}")
    if kind == "default":
        return theta, None
    scaling = {k: v for k, v in params.items() if k not in ("rope_type", "type", "rope_theta")}
    if kind in ("llama3", "yarn"):
        # transformers' pretraining length: a top-level original_max_position_embeddings (Phi-3's place) overrides the
        # one in the RoPE dict, which else defaults to max_position_embeddings
        if hf.get("original_max_position_embeddings") is not None:
            scaling["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
    if kind == "yarn" and scaling.get("factor", 0) is None:  # DeepSeek-V3's form: the ratio of the two lengths
        old_len, new_len = scaling["original_max_position_embeddings"], hf.get("max_position_embeddings", 2048)
        if is_int(old_len) and old_len >= 1 and is_int(new_len):  # else ModelConfig names the bad one
            scaling["factor"] = new_len / old_len
    if kind == "yarn" and "truncate" in scaling and scaling["truncate"] is None:
        scaling["truncate"] = False  # transformers tests `if truncate`, so null does not truncate
    if "factor" not in scaling or isinstance(scaling["factor"], bool) or not isinstance(scaling["factor"], int | float):
        # read before ModelConfig checks it (dynamic scaling sizes the context by it): a KeyError said only 'factor'
        raise ValueError(f"config {field} factor={scaling.get('factor')!r}: rope_type {kind!r} needs a number >= 1")
    return theta, {"type": kind, **scaling}  # ModelConfig names any key it does not know


def _yarn_context(scaling: dict) -> int:
    """The context a YaRN scaling is made for: factor times the original length."""
    context = scaling["original_max_position_embeddings"] * scaling["factor"]
    return int(context) if math.isfinite(context) else 0  # an infinite factor: ModelConfig names it


def config_to_hf(cfg: ModelConfig) -> dict:
    """A LlamaConfig dict, or a MistralConfig dict when `cfg` has a sliding window (or was read from Mistral).

    RoPE goes into `rope_parameters` (rope_type, rope_theta and the scaling keys), as transformers 5 writes it, and
    into the top-level `rope_theta` and `rope_scaling` that transformers 4.x reads; with dynamic scaling,
    max_position_embeddings is the original length (where transformers reads it from).

    Raises:
        ValueError: `cfg` has a switch Llama/Mistral cannot express; the message names every such field.
    """
    model_type = "mistral" if cfg.sliding_window is not None or cfg.extra.get("hf_model_type") == "mistral" else "llama"
    # Llama's attention_bias puts biases on q, k, v and the output projection alike (with the MLP's: one `bias`);
    # Mistral has none
    wanted = {"bias": False} if model_type == "mistral" else {}
    wanted["sliding_window_layers"] = None  # Mistral's window is on every layer
    out = llama_shaped_hf_config(cfg, model_type, ARCHITECTURES[model_type], wanted, qkv_bias=cfg.bias)
    if model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    else:
        out.update(attention_bias=cfg.bias, mlp_bias=cfg.bias, pretraining_tp=1)
    return out


def llama_shaped_hf_config(cfg: ModelConfig, model_type: str, architecture: str, wanted: dict, *,
                           qkv_bias: bool) -> dict:
    """The config.json keys every Llama-shaped family shares, after checking that `cfg` has the switches they all
    need, the family's `wanted` fields and q, k, v biases as `qkv_bias`.

    Raises:
        ValueError: the message names every field of `cfg` the family cannot express.
    """
    wanted = {"causal": True, "norm": "rmsnorm", "norm_placement": "pre", "mlp": "swiglu", "position": "rope",
              "layer_scale": None, **wanted}
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.has_qkv_bias != qkv_bias:
        bad.append(f"qkv_bias={cfg.qkv_bias!r} (needs {'True' if qkv_bias else 'None or False'})")
    if bad:
        raise ValueError(f"config cannot be written as a Hugging Face {model_type}: " + "; ".join(bad))
    scaling = dict(cfg.rope_scaling or {})
    scaling_type = scaling.get("type")
    max_positions = cfg.block_size
    if scaling.get("type") == "dynamic":  # transformers reads the original length from max_position_embeddings
        max_positions = scaling.pop("original_max_position_embeddings", cfg.block_size)
    rope = {"rope_type": scaling.pop("type", "default"), "rope_theta": cfg.rope_theta, **scaling}
    # transformers 4.x reads only the older top-level keys (and would run with theta 10000, unscaled, silently);
    # transformers 5 reads those too when present, so both say the same
    legacy_scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if rope["rope_type"] != "default" else None
    out = {
        "architectures": [architecture], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu", "max_position_embeddings": max_positions, "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope, "rope_theta": cfg.rope_theta, "rope_scaling": legacy_scaling,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": cfg.attn_dropout,
        "initializer_range": cfg.init_std,
    }
    if scaling_type == "dynamic" and cfg.block_size != int(max_positions * cfg.rope_scaling["factor"]):
        out[BLOCK_SIZE_KEY] = cfg.block_size  # HF keeps one length (the original): ours comes back on import
    if scaling_type == "yarn" and cfg.block_size < _yarn_context(cfg.rope_scaling):
        out[BLOCK_SIZE_KEY] = cfg.block_size  # shorter than the import's rule reads back
    return out


def _split_sizes(ours: str, cfg: ModelConfig) -> list[int]:
    if ".attn.qkv." in ours:
        return [cfg.n_head * cfg.head_dim, cfg.kv_dim, cfg.kv_dim]
    if ".mlp.fc." in ours:
        return [cfg.intermediate_size, cfg.intermediate_size]
    return [-1]


def _transform_in(ours: str, hf_tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    return torch.cat(hf_tensors, dim=0) if len(hf_tensors) > 1 else hf_tensors[0]


def _transform_out(ours: str, t: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    sizes = _split_sizes(ours, cfg)
    if len(sizes) == 1:
        return [t]
    return [part.clone() for part in t.split(sizes, dim=0)]  # clones: no two saved tensors share storage


def _entries(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    skip = ("lm_head.weight",) if cfg.tie_embeddings else ()
    for ours, _ in WEIGHT_MAP:
        has = cfg.has_qkv_bias if ours == "blocks.{i}.attn.qkv.bias" else cfg.bias
        skip += (ours,) if ours.endswith(".bias") and not has else ()
    return expand_map(WEIGHT_MAP, cfg.n_layer, skip=skip)


def to_ours(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our DecoderLM state dict from a Hugging Face Llama, Mistral or Qwen2 state dict (the same names).

    Raises:
        CheckpointError: missing, unexpected or mis-shaped weights, named by their Hugging Face keys.
    """
    hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        drop_tied_lm_head(hf_sd, "model.embed_tokens.weight")  # an alias of the embedding when tied; the embedding wins
    family = FAMILY_NAMES.get(cfg.extra.get("hf_model_type"), "Llama")
    return rename_to_ours(hf_sd, _entries(cfg), hf_shapes(cfg, to_hf), _transform_in, cfg, family=family)


def to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The Hugging Face Llama, Mistral or Qwen2 ForCausalLM state dict from ours: the inverse of `to_ours`.

    Raises:
        CheckpointError: `sd` does not match the config (missing, unexpected or mis-shaped keys, named).
    """
    return rename_to_hf(sd, _entries(cfg), reference_state(cfg), _transform_out, cfg)
