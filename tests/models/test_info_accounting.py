"""`info`'s figures held to oracles: parameters against the built model and transformers' own models (GPT-2's
published sizes), FLOPs per token against torch's FlopCounterMode on a real forward and backward, KV-cache bytes
against the tensors the static cache allocates, weight bytes against the model cast to each dtype, and the MFU
against a hand computation from tokens/s and a stated peak."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from neurallayers.cli.info import _size, describe
from neurallayers.config import ModelConfig
from neurallayers.models import build_model
from neurallayers.presets import PRESETS

# Published sizes (GPT-2 paper's table rounds them; these are transformers' exact counts of the released models).
GPT2_PUBLISHED = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                  "gpt2-xl": 1_557_611_200}
LLAMA_PRESETS = [name for name, fields in PRESETS.items() if fields.get("mlp") == "swiglu"]
FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def _meta_numel(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", list(GPT2_PUBLISHED))
def test_gpt2_parameters_are_transformers_and_the_published_count(name):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig.from_name(name)
    hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_layer=cfg.n_layer,
                                     n_head=cfg.n_head, n_embd=cfg.n_embd)
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    assert cfg.param_count() == _meta_numel(cfg) == hf.num_parameters() == GPT2_PUBLISHED[name]
    assert cfg.param_count(include_embeddings=False) == hf.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("name", LLAMA_PRESETS)
def test_llama_style_parameters_are_transformers(name):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig.from_name(name)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, tie_word_embeddings=cfg.tie_embeddings)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hf_cfg)
    assert cfg.param_count() == _meta_numel(cfg) == hf.num_parameters()
    assert cfg.param_count(include_embeddings=False) == hf.num_parameters(exclude_embeddings=True)


BERT_HEADS = {"none": "BertModel", "mlm": "BertForMaskedLM", "sequence_classification": "BertForSequenceClassification",
              "token_classification": "BertForTokenClassification"}


@pytest.mark.parametrize("head", list(BERT_HEADS))
@pytest.mark.parametrize("name", [name for name, fields in PRESETS.items() if fields.get("causal") is False])
def test_encoder_parameters_are_transformers_bert_with_each_head(name, head):
    """The masked LM has no pooler and ties its decoder to the word embeddings; the token classifier has no pooler."""
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig.from_name(name).replace(head=head, num_labels=3)
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.block_size, type_vocab_size=cfg.type_vocab_size, num_labels=3)
    with torch.device("meta"):
        hf = getattr(transformers, BERT_HEADS[head])(hf_cfg)
    assert cfg.param_count() == _meta_numel(cfg) == hf.num_parameters()
    assert cfg.param_count(include_embeddings=False) == hf.num_parameters(exclude_embeddings=True)


@FEW
@given(n_head=st.sampled_from([1, 2, 4, 8]), kv_div=st.sampled_from([1, 2, 8]), head_dim=st.sampled_from([4, 6]),
       width=st.integers(1, 10), n_layer=st.integers(1, 3), vocab=st.integers(1, 99), ff=st.integers(1, 50),
       tied=st.booleans(), gpt2=st.booleans())
def test_random_shapes_count_as_transformers_does(n_head, kv_div, head_dim, width, n_layer, vocab, ff, tied, gpt2):
    """GPT-2 style (MHA, biases, learned positions) and Llama style (GQA/MQA, a head_dim of its own, SwiGLU, untied
    or tied) shapes against transformers' models built on the meta device."""
    transformers = pytest.importorskip("transformers")
    n_embd = n_head * width  # transformers' Llama wants a multiple of the heads, whatever head_dim says
    if gpt2:
        cfg = ModelConfig(vocab_size=vocab, block_size=16, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim,
                          intermediate_size=ff)
        hf_cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_layer=n_layer, n_head=n_head,
                                         n_embd=n_head * head_dim, n_inner=ff, bos_token_id=0, eos_token_id=0)
        klass = transformers.GPT2LMHeadModel
    else:
        n_kv_head = max(1, n_head // kv_div)
        cfg = ModelConfig(vocab_size=vocab, block_size=16, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                          head_dim=head_dim, n_embd=n_embd, intermediate_size=ff, norm="rmsnorm", mlp="swiglu",
                          position="rope", bias=False, tie_embeddings=tied)
        hf_cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=n_embd, intermediate_size=ff,
                                          num_hidden_layers=n_layer, num_attention_heads=n_head,
                                          num_key_value_heads=n_kv_head, head_dim=head_dim,
                                          max_position_embeddings=16, tie_word_embeddings=tied, bos_token_id=0,
                                          eos_token_id=0)
        klass = transformers.LlamaForCausalLM
    with torch.device("meta"):
        hf = klass(hf_cfg)
    assert cfg.param_count() == _meta_numel(cfg) == hf.num_parameters()
    assert cfg.param_count(include_embeddings=False) == hf.num_parameters(exclude_embeddings=True)


# Decoders of every switch `info` accounts for: GPT-2 and Llama style, MHA/GQA/MQA, GELU/SwiGLU/GeGLU, tied or not,
# biases, every position kind, windows, post-norm with or without a final norm, LayerScale, a head_dim of its own.
DECODERS = st.fixed_dictionaries({
    "vocab_size": st.integers(2, 97), "n_layer": st.integers(1, 3), "n_head": st.sampled_from([1, 2, 4, 6]),
    "kv_div": st.sampled_from([1, 2, 3, 6]), "head_dim": st.sampled_from([2, 4, 8]), "n_embd": st.integers(4, 24),
    "mlp": st.sampled_from(["gelu", "swiglu", "geglu"]), "norm": st.sampled_from(["layernorm", "rmsnorm"]),
    "position": st.sampled_from(["learned", "sinusoidal", "rope", "alibi", "none"]), "bias": st.booleans(),
    "tie_embeddings": st.booleans(), "sliding_window": st.sampled_from([None, 3]),
    "norm_placement": st.sampled_from(["pre", "post"]), "final_norm": st.sampled_from([None, False]),
    "layer_scale": st.sampled_from([None, 0.5]), "intermediate_size": st.sampled_from([None, 20]),
})


def _decoder(d: dict, **changes) -> ModelConfig:
    n_kv_head = d["n_head"] // d["kv_div"] if d["n_head"] % d["kv_div"] == 0 else d["n_head"]
    final_norm = d["final_norm"] if d["norm_placement"] == "post" else None
    fields = {k: v for k, v in d.items() if k not in ("kv_div", "final_norm")}
    return ModelConfig(**fields, block_size=12, n_kv_head=n_kv_head, final_norm=final_norm, init_std=0.1, **changes)


@FEW
@given(d=DECODERS)
def test_parameter_count_is_the_built_models_for_random_decoders(d):
    cfg = _decoder(d)
    with torch.device("meta"):
        model = build_model(cfg)
    assert cfg.param_count() == model.num_params() == sum(p.numel() for p in model.parameters())
    tables = sum(p.numel() for name, p in model.named_parameters() if name.split(".")[0] in ("wte", "wpe"))
    assert cfg.param_count(include_embeddings=False) == model.num_params(exclude_embeddings=True) \
        == model.num_params() - tables


def _counted(model: torch.nn.Module, ids: torch.Tensor, *, backward: bool) -> float:
    """FlopCounterMode's total per token of one forward (and backward) of `ids`."""
    model.train(backward)  # dropout is 0: train mode only lets the backward run
    with FlopCounterMode(display=False) as counter:
        out = model(ids, targets=ids) if backward else model(ids)
        if backward:
            out.loss.backward()
    return counter.get_total_flops() / ids.numel()


@FEW
@given(d=DECODERS, t=st.integers(1, 12))
def test_flops_per_token_is_what_torch_counts_forward_and_backward(d, t):
    """The count is exact for every switch: 2 FLOPs per linear weight (head included), QK^T and AV against all `t`
    keys of every token, as the eager kernel computes them (torch counts nothing for the CPU sdpa kernel), and a
    backward of twice the forward. A window is the one difference: its model scores all t keys and masks those past
    the window, which the count leaves out as FLOPs the model does not use."""
    cfg = _decoder(d, attention="eager")
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, t))
    unused = 0
    if cfg.sliding_window is not None and t > cfg.sliding_window:
        unused = cfg.n_layer * 4 * cfg.n_head * cfg.head_dim * (t - cfg.sliding_window)
    assert _counted(model, ids, backward=False) == cfg.flops_per_token(t) + unused
    assert _counted(model, ids, backward=True) == cfg.flops_per_token(t, training=True) + 3 * unused


@pytest.mark.parametrize("head", ["none", "mlm"])
def test_flops_per_token_of_an_encoder_is_what_torch_counts(head):
    """The bare encoder (its pooler runs on [CLS] only, once a sequence: T of them cost 2 d^2 / T a token, left out)
    and the masked LM, whose transform and vocabulary projection run at every position."""
    cfg = ModelConfig.from_name("bert-tiny").replace(vocab_size=97, block_size=16, n_embd=32, n_head=4,
                                                     attention="eager", head=head)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    t = 16
    ids = torch.randint(0, cfg.vocab_size, (2, t))
    with FlopCounterMode(display=False) as counter:
        model(ids)
    pooler = 2 * cfg.n_embd * cfg.n_embd / t if head == "none" else 0
    assert counter.get_total_flops() / ids.numel() == cfg.flops_per_token(t) + pooler


@FEW
@given(d=DECODERS, batch=st.integers(1, 3), t=st.integers(1, 12),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_kv_cache_bytes_are_the_static_caches_tensors(d, batch, t, dtype):
    cfg = _decoder(d)
    with torch.device("meta"):
        cache = build_model(cfg).new_cache(batch, t, dtype=dtype)
    allocated = sum(x.numel() * x.element_size() for x in (cache.k, cache.v))
    assert cache.k.shape == (cfg.n_layer, batch, cfg.n_kv_head, t, cfg.head_dim)  # what the count multiplies
    assert cfg.kv_cache_bytes(t, batch_size=batch, bytes_per_value=dtype.itemsize) == allocated


@pytest.mark.parametrize("name", list(PRESETS))
def test_weight_memory_is_the_models_bytes_in_each_dtype(name):
    """`info`'s weights row: every parameter once (a tied head shares the embedding's storage), 4 or 2 bytes each."""
    cfg = ModelConfig.from_name(name)
    text = describe(cfg)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16/fp16"), (torch.float16, "bf16/fp16")):
        with torch.device("meta"):
            model = build_model(cfg).to(dtype)
        n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        assert cfg.param_count() * dtype.itemsize == n_bytes
        assert f"{label} {_size(n_bytes)}" in text


def test_mfu_is_training_flops_times_tokens_per_second_over_the_stated_peak():
    """estimate_mfu assumes no peak: the caller gives it (benchmarks/train.py measures an n^3 torch.mm and prints the
    rate). GPT-2 at 162 tokens/s against 200 GFLOP/s is the README's fp32 row: 69%."""
    cfg = ModelConfig.from_name("gpt2")
    with torch.device("meta"):
        model = build_model(cfg)
    d, layers, t, vocab = 768, 12, 1024, 50257
    matmul = layers * (d * 3 * d + d * d + 2 * d * 4 * d) + d * vocab  # qkv, out, MLP up and down, head
    by_hand = 6 * matmul + 12 * layers * d * t  # 6N + 12 L H Q T, H x Q = n_embd
    assert by_hand == 854_438_400
    tokens_per_second, peak = 162.0, 200e9
    assert model.estimate_mfu(tokens_per_second, peak) == pytest.approx(by_hand * 162.0 / 200e9, rel=1e-12)
    assert model.estimate_mfu(tokens_per_second, peak) == pytest.approx(0.692, abs=5e-4)
