"""A weight transformers keeps apart and NeuralLayers fuses (Llama's q, k, v and gate, up; BERT's query, key,
value) stored as integers is refused by its own name, as an unfused one is, instead of loading rounded."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.api import load  # noqa: E402
from neurallayers.weights import CheckpointError  # noqa: E402

SHAPE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=16)
FAMILIES = {"Llama": ("LlamaForCausalLM", SHAPE | {"num_key_value_heads": 2}),
            "Qwen2": ("Qwen2ForCausalLM", SHAPE | {"num_key_value_heads": 2}),
            "Bert": ("BertForMaskedLM", SHAPE)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family, (cls, kwargs) in FAMILIES.items():
        out[family] = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        getattr(transformers, cls)(getattr(transformers, f"{family}Config")(**kwargs)).save_pretrained(out[family])
    return out


@pytest.mark.parametrize("family, key", [
    ("Llama", "model.layers.0.self_attn.k_proj.weight"),
    ("Llama", "model.layers.0.mlp.up_proj.weight"),
    ("Qwen2", "model.layers.0.self_attn.v_proj.bias"),
    ("Bert", "bert.encoder.layer.0.attention.self.query.weight"),
])
def test_an_integer_part_of_a_fused_weight_is_named(folders, tmp_path, family, key):
    sd = load_file(folders[family] / "model.safetensors")
    sd[key] = (sd[key] * 100).to(torch.int32)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_bytes((folders[family] / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=rf"1 not floating point: {key} \(int32\)") as e:
        load(tmp_path)
    assert "\n" not in str(e.value)
