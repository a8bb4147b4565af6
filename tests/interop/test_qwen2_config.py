"""ModelConfig.qkv_bias (Qwen2's biases on q, k and v alone): validated, round-tripped through YAML, counted; the fast
decode step equals the plain model with them; a Qwen2-style run trains from a YAML config and exports to
transformers with the same logits."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from neurallayers import ModelConfig, build_model
from neurallayers.generation import GenerationConfig, generate_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN2_STYLE = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48,
                   norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=True, rope_theta=1e6,
                   tie_embeddings=True, scale_residual_init=False)


@pytest.mark.parametrize("fields, message", [
    (dict(qkv_bias="yes"), "ModelConfig.qkv_bias='yes': expected bool or None"),
    # no family has q, k, v without biases beside every other bias, and no export could write it
    (dict(qkv_bias=False), "ModelConfig.qkv_bias=False: False needs bias=False"),
])
def test_a_bad_qkv_bias_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ModelConfig(**fields)


def test_qkv_bias_puts_biases_on_q_k_v_alone_and_is_counted():
    cfg = ModelConfig(**QWEN2_STYLE)
    assert cfg.has_qkv_bias and ModelConfig(**{**QWEN2_STYLE, "qkv_bias": None}).has_qkv_bias is False
    model = build_model(cfg)
    biases = sorted({name.split(".", 2)[-1] for name, _ in model.named_parameters() if name.endswith("bias")})
    assert biases == ["attn.qkv.bias"]
    assert model.blocks[0].attn.qkv.bias.shape == (32 + 2 * 16,)  # q, then k and v of 2 kv heads
    assert cfg.param_count() == sum(p.numel() for p in model.parameters())
    without = ModelConfig(**{**QWEN2_STYLE, "qkv_bias": None})
    assert cfg.param_count() - without.param_count() == 2 * 64  # 2 layers of 64 biases
    # None and False follow `bias`: True gives every linear a bias, as before the field existed
    assert ModelConfig(**{**QWEN2_STYLE, "bias": True, "qkv_bias": None}).param_count() == \
        ModelConfig(**{**QWEN2_STYLE, "bias": True}).param_count()


def test_qkv_bias_round_trips_through_yaml(tmp_path):
    cfg = ModelConfig(**QWEN2_STYLE)
    cfg.save(tmp_path / "model.yaml")
    assert yaml.safe_load((tmp_path / "model.yaml").read_text())["model"]["qkv_bias"] is True
    assert ModelConfig.from_file(tmp_path / "model.yaml") == cfg
    (tmp_path / "run.yaml").write_text("model:\n  preset: llama-tiny\n  qkv_bias: true\n")
    from_preset = ModelConfig.from_file(tmp_path / "run.yaml")
    assert from_preset.has_qkv_bias and not from_preset.bias


def test_a_run_config_saved_before_qkv_bias_is_still_a_whole_model_section(tmp_path):
    """A saved run's config.yaml gives every model field; one saved before qkv_bias existed lacks it and is still
    that run's whole model (`info` took it as a partial section and resized its vocabulary to data.vocab_size)."""
    from neurallayers.cli.info import resolve_config

    old = ModelConfig.from_name("llama-tiny").replace(vocab_size=300).to_dict()
    del old["qkv_bias"]
    run = {"model": old, "data": {"source": "shakespeare", "tokenizer": "bpe", "vocab_size": 1024}, "train": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(run))
    cfg = resolve_config(str(tmp_path / "config.yaml"))
    assert cfg.vocab_size == 300 and cfg.qkv_bias is None


@pytest.mark.parametrize("window", [None, 5])
def test_the_eager_fast_decode_step_equals_the_plain_model(window):
    """prepare_for_decode swaps the linears for RowLinear, whose one-row path adds the bias itself: the step's logits
    and greedy tokens equal the plain model's with biases on q, k and v alone."""
    from neurallayers.generation.fast import decode_step_for, prepare_for_decode, release

    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**QWEN2_STYLE, "sliding_window": window})).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias.normal_()
    ids = torch.randint(0, 96, (1, 14), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    with torch.no_grad():
        plain = [model(ids[:, :p + 1]).logits[:, -1] for p in range(ids.shape[1])]
    want = generate_ids(model, [ids[0, :4].tolist()], config, eos_ids=[])[0].token_ids
    prepare_for_decode(model, compile=False)
    try:
        step = decode_step_for(model)
        cache = step.new_cache(1, ids.shape[1])
        with torch.no_grad():
            model(ids[:, :4], cache=cache)  # prefill
            for p in range(4, ids.shape[1]):
                torch.testing.assert_close(step(ids[:, p:p + 1], cache=cache, input_pos=p), plain[p], atol=1e-5,
                                           rtol=0)
        assert generate_ids(model, [ids[0, :4].tolist()], config, eos_ids=[])[0].token_ids == want
    finally:
        release(model)


def test_a_qwen2_style_run_trains_from_yaml_and_exports_to_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from neurallayers.api import load, train
    from neurallayers.interop.convert import convert

    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    run = {"model": {"preset": "llama-tiny", "qkv_bias": True, "n_layer": 1, "n_embd": 32, "n_head": 4,
                     "n_kv_head": 2, "block_size": 32, "tie_embeddings": True},
           "data": {"source": str(tmp_path / "corpus.txt"), "tokenizer": "char", "val_fraction": 0.1,
                    "cache_dir": str(tmp_path / "cache")},
           "train": {"max_steps": 4, "batch_size": 4, "eval_interval": 0, "save_interval": 0, "sample_tokens": 0,
                     "device": "cpu", "precision": "fp32", "lr": 1e-2, "warmup_steps": 0}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    train(tmp_path / "run.yaml", tmp_path / "run", progress=False)
    model, _ = load(tmp_path / "run")
    assert model.config.qkv_bias is True and model.blocks[0].attn.qkv.bias.abs().sum() > 0  # trained
    convert(tmp_path / "run", tmp_path / "hf", to="hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(ref).__name__ == "Qwen2ForCausalLM" and ref.num_parameters() == model.config.param_count()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
