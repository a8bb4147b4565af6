"""Qwen2's sliding window on some layers only (use_sliding_window with max_window_layers, or transformers 5's
layer_types): read into ModelConfig.sliding_window_layers, equal to transformers' Qwen2ForCausalLM on the same
weights (logits, loss, KV-cache decoding, greedy generation), written back and read again the same; the fast decode
step, eager and compiled (with YaRN too), equals the plain forward; what Qwen2 or Mistral cannot write is refused by
name."""

from __future__ import annotations

import json
import os

import pytest
import torch
from nl_fast_step_oracle import assert_fast_step_is_the_plain_forward
from nl_hf_oracle import VOCAB, assert_same_model, perturbed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.api import load  # noqa: E402
from neurallayers.interop import qwen2  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402

BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=40, use_sliding_window=True, sliding_window=3)
CASES = {  # name -> (Qwen2Config kwargs over BASE, our sliding_window_layers)
    "from-layer-1": ({"max_window_layers": 1}, [1, 2]),
    "last-layer": ({"max_window_layers": 2}, [2]),
    "two-layers": ({"num_hidden_layers": 2, "max_window_layers": 1, "tie_word_embeddings": True}, [1]),
    # transformers 5 builds any pattern layer_types names; max_window_layers is then unread
    "layer-types": ({"layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                     "max_window_layers": 0}, [0, 2]),
}


def hf_model(case: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**(BASE | CASES[case][0] | extra))
    return perturbed(transformers.Qwen2ForCausalLM(cfg).eval())


@pytest.mark.parametrize("case", list(CASES))
def test_a_folder_with_sliding_and_full_layers_matches_transformers(tmp_path, case):
    ref = hf_model(case)
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load(tmp_path / "hf")
    assert (ours.config.sliding_window, ours.config.sliding_window_layers) == (3, CASES[case][1])
    assert ours.layer_windows == tuple(3 if t == "sliding_attention" else None for t in ref.config.layer_types)
    assert_same_model(ours, ref)
    assert_fast_step_is_the_plain_forward(ours)
    if case == "layer-types":  # not the last layers: max_window_layers cannot say it (transformers 4.x reads only it)
        with pytest.raises(ValueError, match=r"qwen2: sliding_window_layers=\[0, 2\] \(Qwen2's max_window_layers"):
            save_hf(ours, None, tmp_path / "ours")
        return
    save_hf(ours, None, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["max_window_layers"] == CASES[case][1][0] and written["use_sliding_window"] is True
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert back.config.layer_types == ref.config.layer_types
    assert_same_model(ours, back)
    assert load(tmp_path / "ours")[0].config == ours.config


def test_the_same_model_with_its_windows_everywhere_or_nowhere_gives_other_logits(tmp_path):
    """The oracle above can fail: with the window on every layer, or on none, these weights give other logits."""
    hf_model("from-layer-1").save_pretrained(tmp_path)
    ours, _ = load(tmp_path)
    ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mixed = ours(ids).logits
        for layers, window in ((None, 3), (None, None)):
            other = build_model(ours.config.replace(sliding_window_layers=layers, sliding_window=window)).eval()
            other.load_state_dict(ours.state_dict())
            assert not torch.allclose(other(ids).logits, mixed, atol=1e-3)


def test_older_config_files_without_layer_types_read_max_window_layers(tmp_path):
    """Qwen2 files written before transformers 5 carry no layer_types: the layers from max_window_layers on slide."""
    hf_model("from-layer-1").save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    del hf["layer_types"]
    assert qwen2.config_from_hf(hf).sliding_window_layers == [1, 2]
    assert qwen2.config_from_hf(hf | {"max_window_layers": 0}).sliding_window_layers is None  # every layer
    assert qwen2.config_from_hf(hf | {"max_window_layers": 3}).sliding_window is None  # no layer


def test_the_compiled_fast_step_with_yarn_and_sliding_layers_equals_the_plain_forward(tmp_path):
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 10, "rope_theta": 10.0,
            "beta_fast": 1, "beta_slow": 0.5}
    ref = hf_model("from-layer-1", rope_parameters=rope, head_dim=16, num_attention_heads=2, num_key_value_heads=1)
    ref.save_pretrained(tmp_path)
    ours, _ = load(tmp_path)
    assert ours.config.rope_scaling["type"] == "yarn" and ours.config.sliding_window_layers == [1, 2]
    assert_same_model(ours, ref)
    assert_fast_step_is_the_plain_forward(ours, compile=True)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_an_export_that_cannot_say_which_layers_slide_is_refused_naming_the_field(tmp_path, family):
    extra = {"bias": False, "qkv_bias": True} if family == "qwen2" else {"bias": False}
    cfg = ModelConfig(vocab_size=VOCAB, block_size=40, n_layer=3, n_head=4, n_embd=32, norm="rmsnorm", mlp="swiglu",
                      position="rope", sliding_window=4, sliding_window_layers=[0, 1], **extra)
    with pytest.raises(ValueError, match=rf"{family}: sliding_window_layers=\[0, 1\]") as e:
        save_hf(build_model(cfg), None, tmp_path)
    assert "\n" not in str(e.value)
