"""YaRN RoPE scaling against transformers' LlamaForCausalLM and Qwen2ForCausalLM (and one MistralForCausalLM case) on
the same weights: logits, loss, KV-cache decoding and greedy generation past original_max_position_embeddings,
through a Hugging Face folder and our export of it (the config read back equal); the eager fast decode step equals
the plain forward (compiled: in test_qwen2_window_layers); the config.json forms transformers reads (legacy
rope_scaling, a top-level original length, a null factor or truncate) read as it reads them; bad keys named."""

from __future__ import annotations

import json
import os

import pytest
import torch
from nl_fast_step_oracle import assert_fast_step_is_the_plain_forward
from nl_hf_oracle import VOCAB, assert_same_model, perturbed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.api import load  # noqa: E402
from neurallayers.interop import llama, qwen2  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402

BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=48, bos_token_id=1, eos_token_id=2)
# name -> (max_position_embeddings, rope_parameters): each original length is below the 20 positions the oracle
# decodes, so the scaled rates are what the logits depend on
YARN = {
    "defaults": (32, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 1e4}),
    # small theta and betas put the ramp inside the 8 rate pairs of a 16-dim head: some kept, some divided, some mixed
    "ramp-untruncated": (30, {"rope_type": "yarn", "factor": 2.5, "original_max_position_embeddings": 12,
                              "rope_theta": 10.0, "beta_fast": 2.0, "beta_slow": 0.5, "truncate": False}),
    "ramp-truncated": (36, {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 12,
                            "rope_theta": 10.0, "beta_fast": 1, "beta_slow": 0.5}),
    # DeepSeek's form: the attention factor from mscale and mscale_all_dim
    "mscale": (160, {"rope_type": "yarn", "factor": 40, "original_max_position_embeddings": 4, "rope_theta": 50.0,
                     "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 4, "beta_slow": 1}),
    "attention-factor": (48, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 6,
                              "rope_theta": 20.0, "attention_factor": 1.3}),
}
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
# every case for Llama and Qwen2; Mistral reads RoPE through the same code, so one case
ORACLE = [(family, case) for family in ("llama", "qwen2") for case in YARN] + [("mistral", "ramp-truncated")]


def hf_model(family: str, max_pos: int, rope: dict, **extra) -> torch.nn.Module:
    kind = FAMILIES[family]
    cfg = getattr(transformers, f"{kind}Config")(**BASE, head_dim=16, max_position_embeddings=max_pos,
                                                 rope_parameters=dict(rope), **extra)
    torch.manual_seed(0)
    return perturbed(getattr(transformers, f"{kind}ForCausalLM")(cfg).eval())


@pytest.mark.parametrize("family, case", ORACLE)
def test_a_yarn_folder_and_our_export_of_it_match_transformers(tmp_path, family, case):
    max_pos, rope = YARN[case]
    ref = hf_model(family, max_pos, rope)
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load(tmp_path / "hf")
    scaling = ours.config.rope_scaling
    assert scaling == {"type": "yarn", **{k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")}}
    assert ours.config.block_size == max_pos == rope["factor"] * rope["original_max_position_embeddings"]
    # the rates and the cos/sin factor are transformers' own, to the bit
    torch.testing.assert_close(ours.rope.inv_freq, ref.model.rotary_emb.inv_freq, atol=0, rtol=0)
    assert ours.rope.attention_factor == ref.model.rotary_emb.attention_scaling != 1.0
    assert_same_model(ours, ref)
    save_hf(ours, None, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["rope_parameters"] == rope and written["max_position_embeddings"] == max_pos
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == f"{FAMILIES[family]}ForCausalLM"
    assert_same_model(ours, back)
    assert load(tmp_path / "ours")[0].config == ours.config
    assert_fast_step_is_the_plain_forward(ours)


def test_the_ramp_cases_keep_some_rates_divide_others_and_blend_between():
    """The oracle cases above exercise every part of YaRN's rates, not only the interpolated ones."""
    for case in ("ramp-untruncated", "ramp-truncated"):
        max_pos, rope = YARN[case]
        plain = hf_model("llama", max_pos, {"rope_type": "default", "rope_theta": rope["rope_theta"]})
        base = plain.model.rotary_emb.inv_freq
        ratio = base / hf_model("llama", max_pos, rope).model.rotary_emb.inv_freq  # 1 kept, factor divided
        kept, divided = torch.isclose(ratio, torch.tensor(1.0)), torch.isclose(ratio, torch.tensor(rope["factor"]))
        assert kept.any() and divided.any() and (~kept & ~divided).any(), ratio


def edit_config(folder, **changes) -> None:
    hf = json.loads((folder / "config.json").read_text())
    hf.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if v is not None}))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_qwen25_style_rope_scaling_takes_factor_times_the_original_context(tmp_path, family):
    """Qwen2.5's long-context recipe adds `rope_scaling: {"type": "yarn", "factor": 4.0,
    "original_max_position_embeddings": 32768}` and leaves max_position_embeddings at 32768: the context is factor
    times the original (vLLM's rule), not the 32768 that block_size would otherwise refuse past."""
    hf_model(family, 8, {"rope_type": "default", "rope_theta": 1e4}).save_pretrained(tmp_path)
    rope = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}
    edit_config(tmp_path, rope_parameters=None, layer_types=None, rope_theta=1e4, rope_scaling=rope)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert ref.config.rope_parameters["rope_type"] == "yarn"
    ours, _ = load(tmp_path)
    assert ours.config.block_size == 32 and ours.config.rope_scaling == rope
    assert_same_model(ours, ref)
    save_hf(ours, None, tmp_path / "out")
    assert load(tmp_path / "out")[0].config == ours.config


@pytest.mark.parametrize("kind", ["yarn", "llama3"])
def test_a_top_level_original_length_overrides_the_rope_dicts_as_in_transformers(tmp_path, kind):
    """transformers puts a top-level original_max_position_embeddings (Phi-3's place for it) into the RoPE parameters
    of yarn and llama3, over the dict's own value: ours took the dict's (llama3: or max_position_embeddings)."""
    rope = {"rope_type": kind, "factor": 4.0, "rope_theta": 10.0, "original_max_position_embeddings": 64}
    if kind == "llama3":
        rope |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    hf_model("llama", 64, rope).save_pretrained(tmp_path)
    edit_config(tmp_path, original_max_position_embeddings=8)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert ref.config.rope_parameters["original_max_position_embeddings"] == 8
    ours, _ = load(tmp_path)
    assert ours.config.rope_scaling["original_max_position_embeddings"] == 8
    assert_same_model(ours, ref)


def test_a_null_factor_is_the_ratio_of_the_two_lengths_and_a_null_truncate_does_not_truncate(tmp_path):
    """transformers' yarn takes factor None as max_position_embeddings / original_max_position_embeddings
    (DeepSeek-V3's form), and reads `truncate` with `if truncate`, so null means no truncation."""
    rope = {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 12, "rope_theta": 10.0,
            "beta_fast": 2.0, "beta_slow": 0.25, "truncate": None}
    hf_model("llama", 36, rope).save_pretrained(tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours, _ = load(tmp_path)
    assert (ours.config.rope_scaling["factor"], ours.config.rope_scaling["truncate"]) == (3.0, False)
    torch.testing.assert_close(ours.rope.inv_freq, ref.model.rotary_emb.inv_freq, atol=0, rtol=0)
    assert_same_model(ours, ref)


def test_a_context_shorter_than_factor_times_the_original_survives_the_round_trip(tmp_path):
    from neurallayers import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=VOCAB, block_size=20, n_layer=1, n_head=2, n_embd=16, position="rope",
                      norm="rmsnorm", mlp="swiglu", bias=False,
                      rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8})
    save_hf(build_model(cfg), None, tmp_path)
    assert load(tmp_path)[0].config.block_size == 20
    assert transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters["rope_type"] == "yarn"


@pytest.mark.parametrize("change, match", [
    ({"beta_fast": 1.0, "beta_slow": 2.0}, r"rope_scaling\.beta_fast=1\.0: must be >= beta_slow=2\.0"),
    ({"attention_factor": 0.0}, r"rope_scaling\.attention_factor=0\.0: must be a finite number > 0"),
    ({"mscale": -1.0}, r"rope_scaling\.mscale=-1\.0: must be a finite number >= 0"),
    ({"truncate": "yes"}, r"rope_scaling\.truncate='yes': must be true or false"),
    ({"factor": 0.5}, r"rope_scaling\.factor=0\.5: must be a finite number >= 1"),
    ({"original_max_position_embeddings": 8.5}, r"original_max_position_embeddings=8\.5: must be a positive int"),
    ({"partial_rotary_factor": 0.5}, r"unknown keys \['partial_rotary_factor'\] for type 'yarn'"),
    ({"low_freq_factor": 1.0}, r"unknown keys \['low_freq_factor'\] for type 'yarn'"),
])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_bad_yarn_key_is_refused_naming_it(family, change, match):
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 1e4} | change
    hf = {"model_type": family, "architectures": [f"{FAMILIES[family]}ForCausalLM"], **BASE,
          "max_position_embeddings": 32, "rope_parameters": rope}
    with pytest.raises(ValueError, match=match) as e:
        (llama if family == "llama" else qwen2).config_from_hf(hf)
    assert "\n" not in str(e.value)
