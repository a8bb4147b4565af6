"""Decoder families against transformers on random weights: logits (left-padded batches too), loss, KV-cache decoding
and greedy generation equal both ways (a transformers folder loaded here, our export loaded by transformers); families
and fields we do not build refused by name."""

from __future__ import annotations

import os

import pytest
import torch
from nl_hf_oracle import VOCAB, assert_same_model, perturbed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.api import load  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402

GPT2 = dict(vocab_size=VOCAB, n_positions=40, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, max_position_embeddings=40)
CASES = {  # name -> (transformers class, config kwargs)
    "gpt2-inner-erf-untied": ("GPT2LMHeadModel", GPT2 | {"n_inner": 20, "activation_function": "gelu",
                                                         "tie_word_embeddings": False, "layer_norm_epsilon": 1e-3}),
    "gpt2-upcast": ("GPT2LMHeadModel", GPT2 | {"reorder_and_upcast_attn": True}),
    # transformers' other names for the two GELUs (ACT2FN)
    "gpt2-gelu_fast": ("GPT2LMHeadModel", GPT2 | {"activation_function": "gelu_fast"}),
    "gpt2-gelu_accurate": ("GPT2LMHeadModel", GPT2 | {"activation_function": "gelu_accurate"}),
    "gpt2-gelu_python_tanh": ("GPT2LMHeadModel", GPT2 | {"activation_function": "gelu_python_tanh"}),
    "gpt2-gelu_python": ("GPT2LMHeadModel", GPT2 | {"activation_function": "gelu_python"}),
    "llama-headdim-bias-mqa": ("LlamaForCausalLM", LLAMA | {"head_dim": 16, "attention_bias": True, "mlp_bias": True,
                                                            "num_key_value_heads": 1, "rms_norm_eps": 1e-3}),
    "llama-heads6-kv3-tied": ("LlamaForCausalLM", LLAMA | {"hidden_size": 48, "num_attention_heads": 6,
                                                           "num_key_value_heads": 3, "tie_word_embeddings": True}),
    "llama-linear": ("LlamaForCausalLM", LLAMA | {"rope_parameters": {"rope_type": "linear", "factor": 3.0,
                                                                      "rope_theta": 500.0}}),
    "llama-llama3": ("LlamaForCausalLM", LLAMA | {"rope_parameters": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8, "rope_theta": 5e5}}),
    # the prompt and the generation run past the original length, so the base grows while decoding
    "llama-dynamic": ("LlamaForCausalLM", LLAMA | {"max_position_embeddings": 6, "rope_parameters": {
        "rope_type": "dynamic", "factor": 4.0, "rope_theta": 100.0}}),
    "llama-swish": ("LlamaForCausalLM", LLAMA | {"hidden_act": "swish"}),  # transformers' other name for SiLU
    "mistral-window-below-prompt": ("MistralForCausalLM", LLAMA | {"sliding_window": 3}),
    "mistral-window-above-all": ("MistralForCausalLM", LLAMA | {"sliding_window": 40, "head_dim": 16}),
    # MistralConfig keeps these keys, but transformers' Mistral has no biases
    "mistral-bias-keys": ("MistralForCausalLM", LLAMA | {"sliding_window": 4, "attention_bias": True,
                                                         "mlp_bias": True}),
}


def hf_model(case: str) -> torch.nn.Module:
    cls, kwargs = CASES[case]
    config_class = transformers.GPT2Config if cls.startswith("GPT2") else getattr(transformers, cls[:-11] + "Config")
    torch.manual_seed(0)
    return perturbed(getattr(transformers, cls)(config_class(**kwargs)).eval())


@pytest.mark.parametrize("case", list(CASES))
def test_a_transformers_folder_and_our_export_of_it_match_transformers(tmp_path, case):
    ref = hf_model(case)
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load(tmp_path / "hf")
    assert_same_model(ours, ref)
    save_hf(ours, None, tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == CASES[case][0]
    assert_same_model(ours, back)


@pytest.mark.parametrize("name", ["Qwen3", "Gemma", "Gemma2", "Phi3", "GPTNeoX", "Mixtral", "Falcon"])
def test_a_family_we_do_not_build_is_refused_in_one_line_naming_it(tmp_path, name):
    config = getattr(transformers, f"{name}Config")(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=48)
    config.save_pretrained(tmp_path)  # refused from config.json, before any weights are read
    with pytest.raises(ValueError) as e:
        load(tmp_path)
    assert f"model_type={config.model_type!r} is not supported" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("cls, change, field", [
    ("GPT2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("GPT2", {"scale_attn_weights": False}, "scale_attn_weights"),
    ("GPT2", {"add_cross_attention": True}, "add_cross_attention"),
    ("GPT2", {"activation_function": "quick_gelu"}, "activation_function"),
    ("Llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("Llama", {"attention_bias": True}, "attention_bias"),
    ("Llama", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                                   "long_factor": [2.0] * 4, "original_max_position_embeddings": 20}},
     "rope_type='longrope'"),
    ("Mistral", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                                     "long_factor": [2.0] * 4, "original_max_position_embeddings": 20}},
     "rope_type='longrope'"),
])
def test_a_field_we_do_not_build_is_refused_naming_it(tmp_path, cls, change, field):
    kwargs = GPT2 if cls == "GPT2" else LLAMA
    getattr(transformers, f"{cls}Config")(**(kwargs | change)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        load(tmp_path)
