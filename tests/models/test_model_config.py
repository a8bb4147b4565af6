"""ModelConfig: every validation error names its field and what is allowed; derived fields follow replace();
YAML round-trips; parameter, FLOP and KV-cache figures equal hand-computed ones (and the published GPT-2 count)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.models import build_model
from neurallayers.presets import PRESETS

ROPE = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}

# (case id, fields, field named in the message, what the message says is allowed)
BAD = [
    ("name-type", dict(name=3), "name", "expected str"),
    ("causal-type", dict(causal="yes"), "causal", "expected bool"),
    ("vocab_size-type", dict(vocab_size=1.5), "vocab_size", "expected int"),
    ("vocab_size-bool", dict(vocab_size=True), "vocab_size", "expected int"),
    ("vocab_size-zero", dict(vocab_size=0), "vocab_size", "must be >= 1"),
    ("block_size", dict(block_size=0), "block_size", "must be >= 1"),
    ("n_layer", dict(n_layer=-2), "n_layer", "must be >= 1"),
    ("n_head", dict(n_head=0), "n_head", "must be >= 1"),
    ("n_embd", dict(n_embd=0), "n_embd", "must be >= 1"),
    ("n_embd-divisible", dict(n_embd=30, n_head=4), "n_embd", "must be divisible by n_head=4"),
    ("num_labels", dict(num_labels=0), "num_labels", "must be >= 1"),
    ("n_kv_head-range", dict(n_head=4, n_kv_head=8), "n_kv_head", "must be in [1, n_head=4]"),
    ("n_kv_head-zero", dict(n_head=4, n_kv_head=0), "n_kv_head", "must be in [1, n_head=4]"),
    ("n_kv_head-divides", dict(n_head=4, n_kv_head=3), "n_kv_head", "must divide n_head=4"),
    ("n_kv_head-type", dict(n_kv_head="2"), "n_kv_head", "expected int or None"),
    ("head_dim", dict(head_dim=0), "head_dim", "must be >= 1"),
    ("head_dim-rope-odd", dict(head_dim=15, **ROPE), "head_dim", "must be even for rope"),
    ("head_dim-dynamic", dict(n_embd=8, n_head=4, rope_scaling={"type": "dynamic", "factor": 2.0}, **ROPE), "head_dim",
     "must be > 2 for dynamic rope scaling"),  # a ZeroDivisionError at the first forward
    ("intermediate_size", dict(intermediate_size=0), "intermediate_size", "must be >= 1"),
    ("norm", dict(norm="batchnorm"), "norm", "one of 'layernorm', 'rmsnorm'"),
    ("norm_eps", dict(norm_eps=0.0), "norm_eps", "must be > 0"),
    # infinite: norms that output only their bias, RoPE that rotates nothing, LayerScale that gives NaN
    ("norm_eps-inf", dict(norm_eps=math.inf), "norm_eps", "must be > 0 and finite"),
    ("rope_theta-inf", dict(rope_theta=math.inf, **ROPE), "rope_theta", "must be > 0 and finite"),
    ("layer_scale-inf", dict(layer_scale=math.inf), "layer_scale", "must be > 0 or None, and finite"),
    ("init_std-huge-int", dict(init_std=10**400), "init_std", "expected float (this int is past float's range)"),
    ("rope_scaling-factor-huge-int", dict(rope_scaling={"type": "linear", "factor": 10**400}, **ROPE),
     "rope_scaling.factor", "must be a finite number >= 1"),
    ("final_norm", dict(final_norm="no"), "final_norm", "expected bool or None"),
    ("final_norm-pre", dict(final_norm=False), "final_norm", "False needs norm_placement='post'"),
    ("final_norm-encoder", dict(causal=False, norm_placement="post", final_norm=True), "final_norm",
     "a post-norm encoder (causal=False, BERT) has no final norm"),
    ("norm_placement", dict(norm_placement="middle"), "norm_placement", "one of 'pre', 'post'"),
    ("mlp", dict(mlp="relu"), "mlp", "one of 'gelu', 'swiglu', 'geglu'"),
    ("gelu_approx", dict(gelu_approx="erf"), "gelu_approx", "one of 'tanh', 'none'"),
    ("position", dict(position="xpos"), "position", "one of 'learned', 'sinusoidal', 'rope', 'alibi', 'none'"),
    ("rope_theta", dict(rope_theta=-1.0), "rope_theta", "must be > 0"),
    ("rope_scaling-position", dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling",
     "needs position='rope'"),
    ("rope_scaling-type", dict(rope_scaling={"type": "longrope", "factor": 2.0}, **ROPE), "rope_scaling",
     "'type' must be one of 'linear', 'dynamic', 'llama3', 'yarn'"),
    # YaRN: transformers only warns on most of these, then divides by zero, takes a log of a negative or zeroes q, k
    ("rope_scaling-yarn-original", dict(rope_scaling={"type": "yarn", "factor": 2.0}, **ROPE), "rope_scaling",
     "yarn scaling needs ['original_max_position_embeddings']"),
    ("rope_scaling-yarn-keys", dict(rope_scaling={**YARN, "low_freq_factor": 1.0}, **ROPE), "rope_scaling",
     "unknown keys ['low_freq_factor'] for type 'yarn'"),
    *[(f"rope_scaling-yarn-{key}-{v}", dict(rope_scaling={**YARN, key: v}, **ROPE), f"rope_scaling.{key}",
       f"must be a finite number {low}, or None") for key, low, values in (
        ("attention_factor", "> 0", (0.0, -1.0, math.inf, "x")), ("beta_fast", "> 0", (0, -32.0, math.nan)),
        ("beta_slow", "> 0", (0.0, True)), ("mscale", ">= 0", (-0.5, math.inf)), ("mscale_all_dim", ">= 0", (-1,)))
      for v in values],
    ("rope_scaling-yarn-betas", dict(rope_scaling={**YARN, "beta_fast": 2.0, "beta_slow": 4.0}, **ROPE),
     "rope_scaling.beta_fast", "must be >= beta_slow=4.0"),
    ("rope_scaling-yarn-betas-default", dict(rope_scaling={**YARN, "beta_slow": 64}, **ROPE),
     "rope_scaling.beta_fast", "must be >= beta_slow=64"),
    ("rope_scaling-yarn-truncate", dict(rope_scaling={**YARN, "truncate": None}, **ROPE), "rope_scaling.truncate",
     "must be true or false"),
    ("rope_scaling-yarn-factor", dict(rope_scaling={**YARN, "factor": 0.5}, **ROPE), "rope_scaling.factor",
     "must be a finite number >= 1"),
    ("rope_scaling-yarn-original-float", dict(rope_scaling={**YARN, "original_max_position_embeddings": 64.0}, **ROPE),
     "rope_scaling.original_max_position_embeddings", "must be a positive int"),
    ("rope_theta-yarn", dict(rope_theta=1.0, rope_scaling=YARN, **ROPE), "rope_theta",
     "must not be 1 with yarn rope scaling"),
    ("rope_scaling-keys", dict(rope_scaling={"type": "linear", "factor": 2.0, "beta": 1}, **ROPE), "rope_scaling",
     "unknown keys ['beta'] for type 'linear'"),
    # transformers 5's rope_parameters pasted in: rope_theta inside, or the plain rope of type 'default'
    ("rope_scaling-rope_theta", dict(rope_scaling={**LLAMA3, "rope_theta": 5e5}, **ROPE), "rope_scaling",
     "unknown keys ['rope_theta'] for type 'llama3' (rope_theta is a field of its own, beside rope_scaling)"),
    ("rope_scaling-default", dict(rope_scaling={"rope_type": "default", "rope_theta": 5e5}, **ROPE), "rope_scaling",
     "('default' is plain RoPE: leave rope_scaling None and set rope_theta)"),
    ("rope_scaling-factor", dict(rope_scaling={"type": "linear", "factor": 0.5}, **ROPE), "rope_scaling.factor",
     "must be a finite number >= 1"),
    ("rope_scaling-factor-inf", dict(rope_scaling={"type": "linear", "factor": math.inf}, **ROPE),
     "rope_scaling.factor", "must be a finite number >= 1"),
    ("rope_scaling-factor-missing", dict(rope_scaling={"type": "linear"}, **ROPE), "rope_scaling.factor",
     "must be a finite number >= 1"),
    ("rope_scaling-llama3", dict(rope_scaling={"type": "llama3", "factor": 8.0}, **ROPE), "rope_scaling",
     "llama3 scaling needs ['high_freq_factor', 'low_freq_factor', 'original_max_position_embeddings']"),
    *[(f"rope_scaling-original-{v}", dict(rope_scaling={**LLAMA3, "original_max_position_embeddings": v}, **ROPE),
       "rope_scaling.original_max_position_embeddings", "must be a positive int") for v in ("x", None, 0, -8, 64.0)],
    ("rope_scaling-original-dynamic", dict(rope_scaling={"type": "dynamic", "factor": 2.0,
                                                         "original_max_position_embeddings": None}, **ROPE),
     "rope_scaling.original_max_position_embeddings", "must be a positive int"),
    ("rope_scaling-low_freq_factor", dict(rope_scaling={**LLAMA3, "low_freq_factor": "x"}, **ROPE),
     "rope_scaling.low_freq_factor", "must be a finite number > 0"),
    ("rope_scaling-high_freq_factor-inf", dict(rope_scaling={**LLAMA3, "high_freq_factor": math.inf}, **ROPE),
     "rope_scaling.high_freq_factor", "must be a finite number > 0"),
    ("rope_scaling-high_freq_factor", dict(rope_scaling={**LLAMA3, "high_freq_factor": 1.0}, **ROPE),
     "rope_scaling.high_freq_factor", "must be > low_freq_factor=1.0"),
    ("rope_scaling-type-of", dict(rope_scaling=[2.0], **ROPE), "rope_scaling", "expected dict or None"),
    ("sliding_window", dict(sliding_window=0), "sliding_window", "must be >= 1 or None"),
    ("sliding_window-causal", dict(sliding_window=8, causal=False), "sliding_window", "needs causal=True"),
    ("sliding_window_layers-type", dict(n_layer=4, sliding_window=8, sliding_window_layers=[1, "2"]),
     "sliding_window_layers", "expected a list of int or None"),
    ("sliding_window_layers-window", dict(n_layer=4, sliding_window_layers=[1]), "sliding_window_layers",
     "needs a sliding_window"),
    *[(f"sliding_window_layers-{layers}", dict(n_layer=4, sliding_window=8, sliding_window_layers=layers),
       "sliding_window_layers", "must list layer indices in [0, n_layer=4), increasing, at least one")
      for layers in ([], [4], [-1, 2], [2, 1], [1, 1])],
    ("sliding_window_layers-all", dict(n_layer=2, sliding_window=8, sliding_window_layers=[0, 1]),
     "sliding_window_layers", "lists every layer: leave it None"),
    ("bias", dict(bias="no"), "bias", "expected bool"),
    ("qkv_bias", dict(qkv_bias="no"), "qkv_bias", "expected bool or None"),
    ("qkv_bias-bias", dict(qkv_bias=False), "qkv_bias", "False needs bias=False"),
    ("tie_embeddings", dict(tie_embeddings=1), "tie_embeddings", "expected bool"),
    ("layer_scale", dict(layer_scale=0.0), "layer_scale", "must be > 0 or None"),
    ("drop_path", dict(drop_path=1.0), "drop_path", "must be in [0, 1)"),
    ("dropout", dict(dropout=-0.1), "dropout", "must be in [0, 1)"),
    ("attn_dropout", dict(attn_dropout=1.5), "attn_dropout", "must be in [0, 1)"),
    ("attention", dict(attention="flash"), "attention", "one of 'sdpa', 'eager'"),
    ("init_std", dict(init_std=0.0), "init_std", "must be > 0"),
    ("init_std-inf", dict(init_std=math.inf), "init_std", "must be > 0 and finite"),
    ("scale_residual_init", dict(scale_residual_init=None), "scale_residual_init", "expected bool"),
    ("type_vocab_size", dict(type_vocab_size=-1), "type_vocab_size", "must be >= 0"),
    ("pad_token_id", dict(vocab_size=10, pad_token_id=10), "pad_token_id", "must be a valid token id"),
    ("pooler", dict(pooler="yes"), "pooler", "expected bool"),
    ("head", dict(head="qa"), "head",
     "one of 'none', 'mlm', 'sequence_classification', 'token_classification'"),
    ("extra", dict(extra=[1]), "extra", "expected dict"),
    # past fp32's range: NaN logits, one output for every token, a traceback from torch.full
    ("init_std-past-fp32", dict(init_std=1e39), "init_std", "must be at most 3.403e+38, fp32's largest number"),
    ("norm_eps-past-fp32", dict(norm_eps=1e39), "norm_eps", "must be at most 3.403e+38"),
    ("layer_scale-past-fp32", dict(layer_scale=1e39), "layer_scale", "must be at most 3.403e+38"),
    # weights torch cannot create: `info` failed with "Storage size calculation overflowed" or a C++ trace
    ("n_embd-huge", dict(n_embd=10**12, n_head=1), "n_embd",
     "the attention projection would hold more than 2**60 values, the most a torch tensor can"),
    ("block_size-huge", dict(block_size=10**20), "block_size", "the position table would hold more"),
    ("vocab_size-huge", dict(vocab_size=10**18), "vocab_size", "the token embedding weight would hold more"),
    ("intermediate_size-huge", dict(intermediate_size=10**18), "intermediate_size", "the MLP weight would hold"),
    ("head_dim-huge", dict(head_dim=10**18), "head_dim", "the attention projection would hold"),
    ("n_layer-huge", dict(n_layer=10**20), "n_layer", "the KV cache of one sequence would hold more than 2**60"),
    # transformers' two spellings of the kind, disagreeing: the later one won silently
    ("rope_scaling-type-and-rope_type", dict(rope_scaling={"type": "linear", "rope_type": "dynamic", "factor": 2.0},
                                              **ROPE), "rope_scaling", "'type' and 'rope_type' name different"),
    # encoder settings on a decoder, which would build without them
    ("head-causal", dict(head="mlm"), "head", "is an encoder's (causal=False); a decoder has its LM head"),
    ("pooler-causal", dict(pooler=True), "pooler", "is an encoder's (causal=False)"),
    ("type_vocab_size-causal", dict(type_vocab_size=2), "type_vocab_size", "is an encoder's (causal=False)"),
    # the encoder builds no ALiBi bias: the config validated and `info` or training failed when building it
    ("position-alibi-encoder", dict(causal=False, norm_placement="post", position="alibi"), "position",
     "an encoder (causal=False) takes 'learned', 'sinusoidal', 'rope', 'none'; ALiBi is a decoder's"),
]


@pytest.mark.parametrize(("fields", "name", "allowed"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_every_validation_error_names_the_field_and_what_is_allowed(fields, name, allowed):
    with pytest.raises(ValueError) as err:
        ModelConfig(**fields)
    message = str(err.value)
    assert message.startswith(f"ModelConfig.{name}="), message
    assert allowed in message, message


def test_every_field_is_covered_by_a_validation_case():
    import dataclasses

    named = {b[2] for b in BAD}
    assert {f.name for f in dataclasses.fields(ModelConfig)} - named == set()


def test_unknown_fields_and_presets_suggest_the_closest_name(tmp_path):
    with pytest.raises(ValueError, match=r"no field 'n_embed' \(did you mean 'n_embd'\?\)"):
        ModelConfig.from_dict({"n_embed": 64})
    with pytest.raises(ValueError, match=r"no field 'n_heads' \(did you mean 'n_head'\?\)"):
        ModelConfig.from_name("tiny").replace(n_heads=4)
    with pytest.raises(ValueError, match=r"unknown preset 'gtp2' \(did you mean 'gpt2'\?\); available: gpt2"):
        ModelConfig.from_name("gtp2")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        ModelConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping of config fields, got list"):
        ModelConfig.from_file(tmp_path / "list.yaml")


def test_typos_inside_rope_scaling_and_preset_names_of_another_type_are_named(tmp_path):
    """A typo in a nested key got no suggestion; a non-string preset or key (`preset: 3`, `1: 2`) was a TypeError
    from difflib."""
    with pytest.raises(ValueError, match=r"unknown keys \['factr'\] for type 'linear' \(did you mean 'factor' for "
                                         r"'factr'\?\)"):
        ModelConfig(rope_scaling={"type": "linear", "factr": 2.0}, **ROPE)
    with pytest.raises(ValueError, match=r"'type' must be one of .* \(did you mean 'type' for 'typ'\?\)"):
        ModelConfig(rope_scaling={"typ": "linear", "factor": 2.0}, **ROPE)
    for text, needle in (("preset: 3\n", "a preset is named by a string, got 3; available: gpt2"),
                         ("preset:\n", "a preset is named by a string, got None"),
                         ("1: 2\n", "ModelConfig field names are strings, got 1; valid fields: ")):
        (tmp_path / "m.yaml").write_text(text)
        with pytest.raises(ValueError, match=needle):
            ModelConfig.from_file(tmp_path / "m.yaml")
    with pytest.raises(ValueError, match="a preset is named by a string"):
        ModelConfig.resolve({"preset": 5})
    (tmp_path / "m.yaml").write_text("model: tiny\n")  # was "ModelConfig has no field 'model'"
    with pytest.raises(ValueError, match=r"m.yaml: 'model' must be a mapping of config fields .*got str"):
        ModelConfig.from_file(tmp_path / "m.yaml")


# ----- derived fields follow replace() -----
def test_replace_derives_head_dim_intermediate_size_and_n_kv_head_again():
    gpt2 = ModelConfig.from_name("gpt2")
    wider = gpt2.replace(n_embd=1024, n_head=16)
    assert (wider.head_dim, wider.intermediate_size, wider.n_kv_head) == (64, 4096, 16)
    tiny = ModelConfig.from_name("tiny")  # n_embd 64, n_head 2
    assert tiny.replace(n_embd=128).head_dim == 64 and tiny.replace(n_embd=128).intermediate_size == 512
    assert tiny.replace(n_head=4).head_dim == 16 and tiny.replace(n_head=4).n_kv_head == 4
    # the gated-MLP rule: 2/3 of 4d rounded up to a multiple of 64
    assert tiny.replace(mlp="swiglu").intermediate_size == 192
    assert ModelConfig.from_name("llama-tiny").replace(n_embd=256).intermediate_size == 704


def test_explicit_derived_fields_are_kept():
    cfg = ModelConfig(n_embd=64, n_head=2, head_dim=16, intermediate_size=100)
    kept = cfg.replace(n_embd=128)
    assert (kept.head_dim, kept.intermediate_size, kept.n_kv_head) == (16, 100, 2)
    # set in replace, then kept by a later replace
    assert ModelConfig.from_name("tiny").replace(head_dim=8).replace(n_embd=128).head_dim == 8
    # the preset sets llama-tiny's n_kv_head: it stays 2 when n_head grows
    assert ModelConfig.from_name("llama-tiny").replace(n_head=8).n_kv_head == 2
    # None asks for derivation again
    assert cfg.replace(head_dim=None, n_embd=128).head_dim == 64


def test_derivation_survives_dicts_and_yaml(tmp_path):
    cfg = ModelConfig.from_name("tiny")
    data = cfg.to_dict()
    assert data["head_dim"] is None and data["intermediate_size"] is None and cfg.head_dim == 32
    assert ModelConfig.from_dict({**data, "n_embd": 128}).head_dim == 64  # dict-level overrides (CLI, RunConfig)
    cfg.save(tmp_path / "c.yaml")
    back = ModelConfig.from_file(tmp_path / "c.yaml")
    assert back == cfg and back.replace(n_embd=128).intermediate_size == 512
    explicit = ModelConfig(n_embd=64, n_head=2, head_dim=16)
    explicit.save(tmp_path / "e.yaml")
    assert ModelConfig.from_file(tmp_path / "e.yaml").replace(n_embd=128).head_dim == 16


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_yaml(tmp_path, name):
    cfg = ModelConfig.from_name(name)
    cfg.save(tmp_path / "model.yaml")
    back = ModelConfig.from_file(tmp_path / "model.yaml")
    assert back == cfg and back.to_dict() == cfg.to_dict() and back.name == name
    assert ModelConfig.resolve(tmp_path / "model.yaml") == cfg and ModelConfig.resolve(name) == cfg


def test_yaml_with_a_preset_and_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("model:\n  preset: gpt2\n  n_layer: 2\n  n_embd: 256\n  n_head: 4\n")
    cfg = ModelConfig.from_file(tmp_path / "run.yaml")
    assert (cfg.n_layer, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (2, 64, 1024, 50257)
    rope = ModelConfig.from_name("llama-tiny").replace(rope_scaling=LLAMA3)
    rope.save(tmp_path / "rope.yaml")
    assert ModelConfig.from_file(tmp_path / "rope.yaml").rope_scaling == LLAMA3
    hf_spelling = ModelConfig.from_name("llama-tiny").replace(rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert hf_spelling.rope_scaling == {"type": "linear", "factor": 2.0}  # transformers' key is normalised


# ----- figures -----
def _gpt2_params(*, vocab: int, ctx: int, n_layer: int, d: int) -> int:
    """GPT-2 by hand: embeddings (tied head), per layer 2 LayerNorms + qkv + proj + MLP with biases, final LN."""
    layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + ctx * d + n_layer * layer + 2 * d


def test_gpt2_parameter_count_is_the_published_figure():
    cfg = ModelConfig.from_name("gpt2")
    assert cfg.param_count() == 124_439_808 == _gpt2_params(vocab=50257, ctx=1024, n_layer=12, d=768)
    assert cfg.param_count(include_embeddings=False) == 124_439_808 - 50257 * 768 - 1024 * 768
    # the published sizes of the larger GPT-2s (transformers' num_parameters(), tied embeddings)
    assert ModelConfig.from_name("gpt2-medium").param_count() == 354_823_168
    assert ModelConfig.from_name("gpt2-large").param_count() == 774_030_080
    assert ModelConfig.from_name("gpt2-xl").param_count() == 1_557_611_200


def test_llama_gqa_parameter_count_by_hand():
    cfg = ModelConfig.from_name("llama-110m")  # 12 x 768, 12 heads, 4 kv heads, SwiGLU 2048, untied, no biases
    d, kv, ff = 768, 4 * 64, 2048
    layer = d * (d + 2 * kv) + d * d + 3 * d * ff + 2 * d  # fused qkv, out proj, gate/up/down, two RMSNorms
    assert cfg.intermediate_size == ff
    assert cfg.param_count() == 2 * 32000 * d + 12 * layer + d == 124_668_672
    assert cfg.param_count() - cfg.replace(tie_embeddings=True).param_count() == 32000 * d


def test_flops_per_token_by_hand():
    gpt2 = ModelConfig.from_name("gpt2")
    n_matmul = 12 * (768 * 3 * 768 + 768 * 768 + 2 * 768 * 3072) + 768 * 50257  # weights in matmuls, head included
    forward = 2 * n_matmul + 4 * 12 * 768 * 1024  # 2 FLOPs per weight; QK^T and AV over 1024 keys (PaLM's 6N+12LHQT)
    assert gpt2.flops_per_token(1024) == forward == 284_812_800
    assert gpt2.flops_per_token(1024, training=True) == 3 * forward
    assert gpt2.flops_per_token() == forward  # default: the full context
    # nanoGPT's estimate (6N + 12LHQT, N = all parameters but wpe) differs only by its biases and norms
    nanogpt = 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024
    biases_and_norms = 124_439_808 - 1024 * 768 - n_matmul
    assert nanogpt - gpt2.flops_per_token(1024, training=True) == 6 * biases_and_norms
    llama = ModelConfig.from_name("llama-110m")
    d, kv, ff = 768, 256, 2048
    per_layer = 2 * (d * (d + 2 * kv) + d * d + 3 * d * ff) + 4 * d * 512
    assert llama.flops_per_token(512) == 12 * per_layer + 2 * d * 32000


def test_kv_cache_bytes_by_hand():
    gpt2 = ModelConfig.from_name("gpt2")
    assert gpt2.kv_cache_bytes(1) == 2 * 12 * 768 * 2 == 36_864  # k and v, 12 layers, 768 wide, bf16
    assert gpt2.kv_cache_bytes() == 36_864 * 1024
    assert gpt2.kv_cache_bytes(100, batch_size=4, bytes_per_value=4) == 2 * 12 * 4 * 100 * 768 * 4
    llama = ModelConfig.from_name("llama-110m")  # GQA: only 4 of 12 heads are cached
    assert llama.kv_cache_bytes(1) == 2 * 12 * 4 * 64 * 2 == gpt2.replace(vocab_size=32000).kv_cache_bytes(1) // 3


@pytest.mark.parametrize(("count", "kwargs", "named", "allowed"), [
    ("flops_per_token", dict(seq_len=0), "flops_per_token seq_len=0",
     "must be an int >= 1, or None for block_size=128"),
    ("flops_per_token", dict(seq_len=-5), "flops_per_token seq_len=-5", "must be an int >= 1"),
    ("flops_per_token", dict(seq_len=2.5), "flops_per_token seq_len=2.5", "must be an int >= 1"),
    ("flops_per_token", dict(seq_len=8, mask_prob=1.5), "flops_per_token mask_prob=1.5", "must be a number in [0, 1]"),
    ("kv_cache_bytes", dict(seq_len=0), "kv_cache_bytes seq_len=0", "must be an int >= 1, or None"),
    ("kv_cache_bytes", dict(seq_len=8, batch_size=-2), "kv_cache_bytes batch_size=-2", "must be an int >= 1"),
    ("kv_cache_bytes", dict(seq_len=8, bytes_per_value=0), "kv_cache_bytes bytes_per_value=0", "must be an int >= 1"),
])
def test_count_arguments_that_are_no_count_are_named(count, kwargs, named, allowed):
    """A length of 0 counted the full context (block_size) silently, a negative one a negative count."""
    cfg = ModelConfig.from_name("tiny")
    with pytest.raises(ValueError) as err:
        getattr(cfg, count)(**kwargs)
    assert str(err.value).startswith(f"ModelConfig.{named}: {allowed}"), str(err.value)
    assert getattr(cfg, count)(np.int64(8)) == getattr(cfg, count)(8)  # a numpy length is a length


def test_build_model_takes_a_mapping_as_a_run_configs_model_section():
    from neurallayers.models import build_model

    assert build_model({"preset": "tiny", "n_layer": 1}).config == ModelConfig.from_name("tiny").replace(n_layer=1)
    with pytest.raises(ValueError, match=r"no field 'n_layers' \(did you mean 'n_layer'\?\)"):
        build_model({"n_layers": 1})
    with pytest.raises(ValueError, match="a model config is a ModelConfig, a preset name"):
        build_model(5)


def test_numeric_strings_yaml_reads_are_floats_in_a_model_file_and_a_run_config(tmp_path):
    """PyYAML reads `1e-6` and `1e1` (no dot) as strings: a model YAML failed "expected float" where a run config's
    model section worked, and a rope_scaling factor failed under both."""
    import yaml

    from neurallayers.training.config import RunConfig

    text = ("norm_eps: 1e-6\nrope_theta: 5e5\nlayer_scale: 1e-4\n"
            "rope_scaling:\n  type: linear\n  factor: 1e1\n")
    assert yaml.safe_load(text)["rope_scaling"]["factor"] == "1e1"  # what YAML 1.1 gives
    want = ModelConfig.from_name("llama-tiny").replace(norm_eps=1e-6, rope_theta=5e5, layer_scale=1e-4,
                                                       rope_scaling={"type": "linear", "factor": 10.0})
    (tmp_path / "bare.yaml").write_text("preset: llama-tiny\n" + text)
    (tmp_path / "fields.yaml").write_text(yaml.safe_dump({**want.to_dict(), "norm_eps": "1e-6"}))
    assert ModelConfig.from_file(tmp_path / "bare.yaml") == want
    assert ModelConfig.from_file(tmp_path / "fields.yaml") == want
    run = RunConfig.from_dict({"model": yaml.safe_load("preset: llama-tiny\n" + text)})
    assert run.model == want and isinstance(run.model.rope_scaling["factor"], float)
    with pytest.raises(ValueError, match=r"ModelConfig.norm_eps='tiny': expected float"):  # not a number: named
        ModelConfig(norm_eps="tiny")


def test_flops_per_token_counts_a_masked_lm_head():
    """A masked LM's forward runs BERT's prediction head at every position: the d x d transform and the vocabulary
    projection (`info` and the figures built on flops_per_token left it out); its training step (logits_at_labels)
    only at the mask_prob share of the tokens (counted at every position, `info` said 4.8x MiniLM's training cost)."""
    from neurallayers.models import build_model

    enc = ModelConfig.from_name("bert-tiny").replace(n_layer=1)  # head "none": no vocabulary head runs
    mlm = enc.replace(head="mlm")
    d, vocab = 128, 30522
    assert mlm.flops_per_token(512) - enc.flops_per_token(512) == 2 * (d * d + d * vocab)
    head = build_model(mlm).head  # what runs: its dense layer, then the (tied) word embedding as the projection
    assert head.dense.weight.numel() + vocab * d == d * d + d * vocab and head.decoder is None
    assert mlm.flops_per_token(512, training=True) == 3 * (enc.flops_per_token(512) + 0.15 * 2 * (d * d + d * vocab))
    assert mlm.flops_per_token(512, training=True, mask_prob=0.3) == pytest.approx(
        3 * (enc.flops_per_token(512) + 0.3 * 2 * (d * d + d * vocab)))
    assert enc.replace(head="token_classification").flops_per_token(512) == enc.flops_per_token(512)


def test_geglu_follows_gelu_approx():
    """GeGLU always used the tanh GELU; gelu_approx="none" now gives the exact erf form, as the GELU MLP does."""
    import torch
    import torch.nn.functional as F

    from neurallayers.models.decoder import build_mlp

    cfg = ModelConfig(n_embd=16, n_head=2, mlp="geglu")
    assert cfg.gelu_approx == "tanh" and build_mlp(cfg).activation == "gelu_tanh"  # the default, as before
    torch.manual_seed(0)
    mlp = build_mlp(cfg.replace(gelu_approx="none"))
    x = 3 * torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    gate, up = mlp.fc(x).split(mlp.hidden, dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.proj(F.gelu(gate, approximate="none") * up))
        assert not torch.allclose(mlp(x), mlp.proj(F.gelu(gate, approximate="tanh") * up), atol=1e-5, rtol=0)


MIXES = {  # every switch that changes the parameter count, over a small shape
    "gqa-untied": dict(n_kv_head=2, tie_embeddings=False, **ROPE),
    "geglu": dict(mlp="geglu"),
    "layer-scale": dict(layer_scale=0.1),
    "alibi-no-bias": dict(position="alibi", bias=False),
    "head-dim": dict(head_dim=12, n_kv_head=1),
    "gpt1": dict(norm_placement="post", final_norm=False),
    "encoder-mlm-untied": dict(causal=False, head="mlm", tie_embeddings=False, type_vocab_size=2, pooler=True),
    "encoder-pre-rope": dict(causal=False, norm_placement="pre", position="rope", head="token_classification"),
}


def _unique_numel(model: torch.nn.Module) -> int:
    return sum({id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}.values())


@pytest.mark.parametrize("name", [*PRESETS, *MIXES])
def test_info_parameters_are_the_built_models_with_ties_counted_once(name):
    from neurallayers.cli.info import describe

    small = dict(vocab_size=101, block_size=16, n_layer=2, n_head=4, n_embd=32)
    cfg = ModelConfig.from_name(name) if name in PRESETS else ModelConfig(**small, **MIXES[name])
    with torch.device("meta"):
        n = _unique_numel(build_model(cfg))
    assert cfg.param_count() == n
    assert f"parameters       {n:,} (" in describe(cfg)


@pytest.mark.parametrize("name", ["tiny", "llama-tiny", "gqa-untied", "head-dim"])
def test_info_kv_cache_is_the_bytes_of_the_cache_tensors(name):
    from neurallayers.cli.info import _size, describe

    small = dict(vocab_size=101, block_size=16, n_layer=2, n_head=4, n_embd=32)
    cfg = ModelConfig.from_name(name) if name in PRESETS else ModelConfig(**small, **MIXES[name])
    model = build_model(cfg)
    for dtype, size in ((torch.bfloat16, 2), (torch.float32, 4)):
        cache = model.new_cache(3, 10, dtype=dtype)
        actual = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
        assert cfg.kv_cache_bytes(10, batch_size=3, bytes_per_value=size) == actual
    one = model.new_cache(1, 1, dtype=torch.bfloat16)
    per_token, full = 2 * one.k.numel() * 2, 2 * model.new_cache(3, cfg.block_size).k.numel() * 2
    assert f"KV cache         {_size(per_token)} per token (bf16); {_size(full)} bf16, {_size(2 * full)} fp32 for " \
           f"batch 3 x {cfg.block_size:,} tokens" in describe(cfg, batch_size=3)


def test_info_sizes_never_print_1024_of_a_unit():
    """1023.96 KiB rounded to "1024.0 KiB" instead of moving to the next unit."""
    from neurallayers.cli.info import _size

    assert _size(1023) == "1023 B" and _size(1024) == "1.0 KiB"
    assert _size(1024**2 - 1) == "1.0 MiB" and _size(1023.9 * 1024) == "1023.9 KiB"
    assert _size(5 * 1024**3) == "5.0 GiB"


def test_new_cache_refuses_zero_and_negative_lengths():
    """max_len=0 was read as "the default" (a block_size cache); a negative length or batch failed inside torch."""
    model = build_model(ModelConfig.from_name("tiny"))
    assert model.new_cache(1).max_len == 128 and model.new_cache(2, 5).k.shape[1:4:2] == (2, 5)
    for max_len in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"new_cache max_len={max_len!r}: must be an int >= 1, or None for "
                                             r"block_size=128"):
            model.new_cache(1, max_len)
    for batch in (0, -1):
        with pytest.raises(ValueError, match=rf"KV cache batch_size={batch}: must be an int >= 1"):
            model.new_cache(batch, 4)


def test_info_notes_a_context_past_block_size(capsys):
    from neurallayers.__main__ import main

    assert main(["info", "tiny", "--context", "4096"]) == 0
    out, err = capsys.readouterr()
    assert "(context 4,096)" in out  # the figures still print
    assert err.strip() == "note: --context 4,096 is past the model's context, block_size=128"
    assert main(["info", "tiny", "--context", "128"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("scaling, block, needle", [
    ({"type": "dynamic", "factor": 2.0}, 64,
     "original_max_position_embeddings=64 (the block_size default), which no sequence within block_size=64 passes: "
     "it changes nothing (to scale, set original_max_position_embeddings below block_size (e.g. block_size / factor "
     "= 32))"),
    ({"type": "dynamic", "factor": 1.0, "original_max_position_embeddings": 64}, 64, "below block_size)"),
])
def test_a_dynamic_scaling_that_never_acts_builds_with_a_warning(scaling, block, needle):
    """It grows the base only past the original length: from block_size on it changes nothing. A warning, not an
    error: runs saved with one, and Hugging Face configs with factor 1.0, load as the plain RoPE they are."""
    cfg = ModelConfig(vocab_size=64, block_size=block, n_layer=1, n_head=2, n_embd=16, rope_scaling=scaling, **ROPE)
    with pytest.warns(UserWarning, match="rope_scaling dynamic acts only past") as caught:
        model = build_model(cfg)
    assert needle in str(caught[0].message)
    plain = build_model(cfg.replace(rope_scaling=None))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (1, block))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=0)


def test_numpy_scalars_are_read_as_python_numbers_and_save_as_yaml(tmp_path):
    """A sweep's np.int64 was refused as "expected int" and np.float32 as "expected float"; an np.float64 passed (a
    float subclass) and then failed YAML's dump of the config (RepresenterError)."""
    import numpy as np

    cfg = ModelConfig(n_layer=np.int64(2), n_embd=np.int32(64), n_head=2, dropout=np.float64(0.1),
                      attn_dropout=np.float32(0.25), **{**ROPE, "bias": np.bool_(False)},
                      rope_scaling={"type": "linear", "factor": np.float64(2.0)})
    assert (cfg.n_layer, cfg.n_embd, cfg.dropout, cfg.attn_dropout, cfg.bias) == (2, 64, 0.1, 0.25, False)
    assert [type(v) for v in (cfg.n_layer, cfg.dropout, cfg.attn_dropout, cfg.bias, cfg.rope_scaling["factor"])] == \
        [int, float, float, bool, float]
    cfg.save(tmp_path / "m.yaml")
    assert ModelConfig.from_file(tmp_path / "m.yaml") == cfg
    with pytest.raises(ValueError, match=r"ModelConfig.n_layer=12.0: expected int"):  # still no int from a float
        ModelConfig(n_layer=np.float64(12.0))


def test_param_count_of_any_depth_answers_at_once():
    """param_count built every block on the meta device: `info` on a mistyped depth ran for minutes (n_layer 10**5)
    or for days (10**12). It now counts one and two blocks; the count is exact at every depth."""
    import signal

    tiny = ModelConfig.from_name("tiny")
    per_layer = tiny.replace(n_layer=2).param_count() - tiny.replace(n_layer=1).param_count()
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("param_count of 10**12 layers did not answer"))
    signal.alarm(30)
    try:
        huge = tiny.replace(n_layer=10**12)
        assert huge.param_count() == tiny.param_count() + (10**12 - 2) * per_layer
        assert huge.param_count(include_embeddings=False) == \
            tiny.param_count(include_embeddings=False) + (10**12 - 2) * per_layer
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_mappings_name_a_missing_or_empty_preset_and_from_dict_takes_only_a_mapping():
    """`{preset: None}` (YAML `preset:` left empty) built ModelConfig's defaults, GPT-2's 124M shape, silently;
    from_dict(None) was a TypeError."""
    for preset in (None, ""):
        with pytest.raises(ValueError, match="preset"):
            ModelConfig.resolve({"preset": preset, "n_layer": 2})
    with pytest.raises(ValueError, match="ModelConfig.from_dict takes a mapping of fields, got NoneType"):
        ModelConfig.from_dict(None)
    same = {"type": "linear", "rope_type": "linear", "factor": 2.0}  # both spellings, agreeing: transformers writes it
    assert ModelConfig(rope_scaling=same, **ROPE).rope_scaling == {"type": "linear", "factor": 2.0}


@pytest.mark.parametrize("fields", [
    dict(rope_theta=10**30),  # torch's `int ** tensor` overflowed at build ("int too big to convert")
    dict(rope_scaling={"type": "yarn", "factor": 10**30, "original_max_position_embeddings": 4}),
    dict(rope_scaling={"type": "linear", "factor": 2}, layer_scale=1, norm_eps=1),
])
def test_ints_in_float_fields_are_held_as_floats_and_build(fields):
    cfg = ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8, **{**ROPE, **fields})
    for name in ("rope_theta", "layer_scale", "norm_eps"):
        assert getattr(cfg, name) is None or type(getattr(cfg, name)) is float
    assert type(cfg.rope_scaling and cfg.rope_scaling["factor"]) in (float, type(None))
    logits = build_model(cfg)(torch.tensor([[1, 2, 3, 4, 5, 6]])).logits
    assert torch.isfinite(logits).all()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def _alias_bomb(levels: int) -> str:
    """YAML's "billion laughs": each level a list of ten aliases of the one before, 10**levels values once expanded."""
    lines = ["n_layer: 1", "extra:", "  l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, needle", [
    # safe_load gave back shared lists, and checking extra walked every expanded value: 10**6 of them were taken in 4 s,
    # 10**7 in 42 s, and 10**9 (a 1 kB file) ran until memory ran out
    (_alias_bomb(6), r"aliases that expand to over 100,000 values"),
    ("extra: &a [1, *a]\n", r"an alias inside its own anchor \(line 1\)"),  # RecursionError in the extra check
    # yaml's composer recurses a level a bracket: RecursionError, a traceback from `neurallayers info`
    ("extra: " + "[" * 5000 + "]" * 5000 + "\n", r"nested too deep"),
])
def test_a_hostile_yaml_file_is_refused_in_one_line(tmp_path, text, needle):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ValueError, match=rf"m.yaml is not a config file YAML reads safely: .*{needle}"):
        ModelConfig.from_file(tmp_path / "m.yaml")


def test_yaml_aliases_of_a_config_still_load(tmp_path):
    """safe_dump writes a list shared by two fields as an anchor and an alias: such a file is no bomb."""
    (tmp_path / "m.yaml").write_text("n_layer: 1\nextra: {a: &x [1, 2], b: *x, c: {<<: {d: 1}}}\n")
    assert ModelConfig.from_file(tmp_path / "m.yaml").extra == {"a": [1, 2], "b": [1, 2], "c": {"d": 1}}
