"""Qwen2 (transformers' Qwen2ForCausalLM) against transformers on random weights: logits, loss, KV-cache decoding and
greedy generation equal both ways (a transformers folder loaded here, our export loaded by transformers); parameter
counts equal; sliding-window settings and fields we do not build refused by name."""

from __future__ import annotations

import json
import os

import pytest
import torch
from nl_hf_oracle import VOCAB, assert_same_model, perturbed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.api import load  # noqa: E402
from neurallayers.interop import qwen2  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402
from neurallayers.weights import CheckpointError, read_safetensors, save_safetensors  # noqa: E402

BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=40)
CASES = {  # name -> Qwen2Config kwargs over BASE
    "gqa-untied": {},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},  # small Qwen2.5 models tie
    "mqa-tied-headdim": {"num_key_value_heads": 1, "tie_word_embeddings": True, "head_dim": 16},
    "theta-eps-swish": {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rms_norm_eps": 1e-3,
                        "hidden_act": "swish"},
    "rope-linear": {"rope_parameters": {"rope_type": "linear", "factor": 3.0, "rope_theta": 500.0}},
    "rope-llama3": {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8,
                                        "rope_theta": 5e5}},
    # the prompt and the generation run past the original length, so the base grows while decoding
    "rope-dynamic": {"max_position_embeddings": 6, "rope_parameters": {"rope_type": "dynamic", "factor": 4.0,
                                                                       "rope_theta": 100.0}},
    # every layer slides (max_window_layers 0), with a window shorter than the prompt
    "window-every-layer": {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0},
    # the window is on, but no layer reaches max_window_layers: every layer attends to every token
    "window-no-layer": {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2},
    "window-off": {"use_sliding_window": False, "sliding_window": 3},  # sliding_window is then ignored
    # Qwen2 has biases on q, k and v alone whatever these keys say (transformers keeps them unread)
    "bias-keys": {"attention_bias": False, "mlp_bias": True},
}
WINDOWS = {"window-every-layer": 3}  # our sliding_window per case (None elsewhere)


def hf_model(case: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturbed(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**(BASE | CASES[case]))).eval())


@pytest.mark.parametrize("case", list(CASES))
def test_a_qwen2_folder_and_our_export_of_it_match_transformers(tmp_path, case):
    ref = hf_model(case)
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load(tmp_path / "hf")
    cfg = ours.config
    assert (cfg.bias, cfg.qkv_bias, cfg.sliding_window) == (False, True, WINDOWS.get(case))
    assert (cfg.n_kv_head, cfg.tie_embeddings) == (ref.config.num_key_value_heads, ref.config.tie_word_embeddings)
    assert cfg.param_count() == ref.num_parameters()
    assert cfg.param_count(include_embeddings=False) == ref.num_parameters(exclude_embeddings=True)
    assert_same_model(ours, ref)
    save_hf(ours, None, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert (written["model_type"], written["architectures"]) == ("qwen2", ["Qwen2ForCausalLM"])
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == "Qwen2ForCausalLM"
    assert set(back.config.layer_types) == {"sliding_attention" if case in WINDOWS else "full_attention"}
    assert back.num_parameters() == cfg.param_count()
    assert_same_model(ours, back)
    assert load(tmp_path / "ours")[0].config == cfg  # and read back, the same config


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("tied", [False, True])
def test_a_model_of_ours_with_q_k_v_biases_alone_is_written_as_qwen2(tmp_path, tied, window):
    """A config built here (no Hugging Face origin) with biases on q, k and v alone exports as Qwen2, its window (if
    any) on every layer; transformers runs the same model."""
    cfg = ModelConfig(vocab_size=VOCAB, block_size=40, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                      intermediate_size=48, norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=True,
                      tie_embeddings=tied, sliding_window=window, scale_residual_init=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # biases start at zero: make them count
        for block in model.blocks:
            block.attn.qkv.bias.normal_()
    save_hf(model, None, tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == "Qwen2ForCausalLM" and ref.config.sliding_window == window
    assert ref.num_parameters() == cfg.param_count()
    assert_same_model(model, ref)


def test_param_count_and_info_are_transformers_num_parameters(tmp_path):
    from neurallayers.cli.info import describe, resolve_config

    ref = hf_model("mha-tied")
    ref.save_pretrained(tmp_path)
    cfg = resolve_config(str(tmp_path))
    assert cfg.param_count() == ref.num_parameters() == sum(p.numel() for p in load(tmp_path)[0].parameters())
    assert f"parameters       {ref.num_parameters():,} (" in describe(cfg)


def test_a_config_without_optional_keys_takes_qwen2s_defaults():
    """Keys a config.json leaves out take Qwen2Config's defaults (vocab 151,936, context 32,768 ...), not Llama's."""
    given = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 8,
             "num_hidden_layers": 2}
    ref = transformers.Qwen2Config(**given)
    cfg = qwen2.config_from_hf(given)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.block_size, cfg.norm_eps, cfg.rope_theta) == (
        ref.vocab_size, ref.intermediate_size, ref.max_position_embeddings, ref.rms_norm_eps,
        ref.rope_parameters["rope_theta"])
    # use_sliding_window with the default window and max_window_layers 28 of 2 layers: no layer slides
    assert qwen2.config_from_hf(given | {"use_sliding_window": True}).sliding_window is None
    assert transformers.Qwen2Config(**given, use_sliding_window=True).layer_types == ["full_attention"] * 2


def test_a_qwen25_style_config_json_loads_as_transformers_builds_it(tmp_path):
    """As the Hub's Qwen2.5 files are written: no layer_types or rope_parameters, rope_theta at the top, the window
    off though max_window_layers is below num_hidden_layers, tied embeddings."""
    hf_model("mha-tied").save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    for key in ("layer_types", "rope_parameters"):
        del written[key]
    written |= {"rope_theta": 1e6, "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 1,
                "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(written))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ours, _ = load(tmp_path)
    assert (ours.config.rope_theta, ours.config.sliding_window, ours.config.tie_embeddings) == (1e6, None, True)
    assert_same_model(ours, ref)


def hand_config(**changes) -> dict:
    """A Qwen2 config.json as older releases write it: no layer_types, so max_window_layers decides."""
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **BASE, **changes}


@pytest.mark.parametrize("change, match", [
    (dict(use_sliding_window=True, max_window_layers="1"), r"max_window_layers='1': expected an int"),
    (dict(layer_types=["full_attention"]), r"layer_types=.*num_hidden_layers=2 entries"),
    (dict(num_hidden_layers=0), r"num_hidden_layers=0: expected an int >= 1"),
    (dict(num_hidden_layers="2"), r"num_hidden_layers='2': expected an int >= 1"),
    (dict(use_sliding_window=True, layer_types=["chunked_attention"] * 2), r"layer_types=.*'full_attention' or"),
    # transformers fails in its forward on this one
    (dict(use_sliding_window=False, sliding_window=3, layer_types=["sliding_attention"] * 2),
     r"layer_types=.*use_sliding_window=False .*sliding layers without a window"),
    (dict(rope_parameters={"rope_type": "longrope", "factor": 2.0, "rope_theta": 1e4}), "rope_type='longrope'"),
    (dict(rope_scaling={"type": "longrope", "factor": 2.0}), "rope_type='longrope'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(architectures=["Qwen2ForSequenceClassification"]), r"architectures=.*Qwen2ForCausalLM"),
    (dict(model_type="llama"), "model_type='llama'"),
])
def test_a_setting_we_would_not_build_identically_is_refused_naming_the_field(change, match):
    hf = {k: v for k, v in hand_config(**change).items() if v is not None}
    with pytest.raises(ValueError, match=match):
        qwen2.config_from_hf(hf)


def test_missing_q_k_v_biases_are_named(tmp_path):
    hf_model("gqa-untied").save_pretrained(tmp_path)
    weights = read_safetensors(tmp_path / "model.safetensors")
    del weights["model.layers.1.self_attn.k_proj.bias"]
    save_safetensors(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
        load(tmp_path)


@pytest.mark.parametrize("change, match", [
    (dict(bias=True), r"qwen2: bias=True \(needs False\)"),
    (dict(qkv_bias=False), r"qwen2: qkv_bias=False \(needs True\)"),
    (dict(qkv_bias=None), r"qwen2: qkv_bias=None \(needs True\)"),
    (dict(norm="layernorm"), r"qwen2: norm='layernorm'"),
])
def test_an_export_qwen2_cannot_express_is_refused_naming_the_field(tmp_path, change, match):
    hf_model("gqa-untied").save_pretrained(tmp_path / "hf")
    model, _ = load(tmp_path / "hf")
    with pytest.raises(ValueError, match=match):
        save_hf(build_model(model.config.replace(**change)), None, tmp_path / "out")


def test_llama_and_mistral_refuse_q_k_v_biases_alone(tmp_path):
    """Llama's attention_bias puts a bias on the output projection too, and Mistral has none: a config read from
    either and given q, k, v biases alone was written without them (their weights dropped, silently)."""
    for kind, extra in (("llama", {}), ("mistral", {"sliding_window": 4})):
        cfg = ModelConfig(vocab_size=VOCAB, block_size=40, n_layer=1, n_head=4, n_embd=32, norm="rmsnorm",
                          mlp="swiglu", position="rope", bias=False, qkv_bias=True, extra={"hf_model_type": kind},
                          **extra)
        with pytest.raises(ValueError, match=rf"{kind}: qkv_bias=True \(needs None or False\)"):
            save_hf(build_model(cfg), None, tmp_path / kind)
