"""The post-norm decoder: with `final_norm=False` it is GPT-1 (transformers' OpenAIGPTLMHeadModel: learned positions,
post-LN blocks, no norm after them); configs that do not say (runs saved before the field existed) keep the final
norm they were trained with."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from neurallayers.config import ModelConfig
from neurallayers.models import build_model
from neurallayers.models.decoder import DecoderLM

GPT1 = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32, norm_placement="post", gelu_approx="none")


def _gpt1_weights(hf) -> dict[str, torch.Tensor]:
    """OpenAIGPT's weights under our names, mapped by hand (its linear layers are Conv1D: (in, out))."""
    sd = {"wte.weight": hf.transformer.tokens_embed.weight, "wpe.weight": hf.transformer.positions_embed.weight}
    for i, blk in enumerate(hf.transformer.h):
        ours = f"blocks.{i}."
        for name, conv in (("attn.qkv", blk.attn.c_attn), ("attn.proj", blk.attn.c_proj),
                           ("mlp.fc", blk.mlp.c_fc), ("mlp.proj", blk.mlp.c_proj)):
            sd[ours + name + ".weight"] = conv.weight.T
            sd[ours + name + ".bias"] = conv.bias
        for j in (1, 2):
            sd[ours + f"norm{j}.weight"] = getattr(blk, f"ln_{j}").weight
            sd[ours + f"norm{j}.bias"] = getattr(blk, f"ln_{j}").bias
    return {k: v.detach().clone() for k, v in sd.items()}


def test_post_norm_decoder_without_final_norm_equals_gpt1():
    """GPT-1's blocks end in a LayerNorm and nothing follows them; the decoder applied norm_f once more."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.OpenAIGPTConfig(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4, afn="gelu",
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    hf = transformers.OpenAIGPTLMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms, so that one norm more or less shows
        for name, p in hf.named_parameters():
            if ".ln_" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    ours = DecoderLM(ModelConfig(**GPT1, final_norm=False)).eval()
    assert ours.norm_f is None
    ours.load_state_dict(_gpt1_weights(hf), strict=False)  # lm_head is the tied embedding
    assert set(ours.state_dict()) == set(_gpt1_weights(hf)) | {"lm_head.weight"}
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=0, atol=1e-5)
        cache = ours.new_cache(2, 20)  # and decoding over the cache
        ours(ids[:, :12], cache=cache, input_pos=0)
        step = ours(ids[:, 12:13], cache=cache, input_pos=12).logits
        torch.testing.assert_close(step[:, 0], hf(ids[:, :13]).logits[:, -1], rtol=0, atol=1e-5)


def test_a_config_saved_before_final_norm_keeps_its_final_norm(tmp_path):
    """A run's config.yaml from before the field has no final_norm key: its post-norm decoder was trained with
    norm_f, and model.safetensors holds norm_f's weights. It builds as it did and gives the same logits."""
    old = ModelConfig(**GPT1).to_dict()
    old.pop("final_norm")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": old}))
    cfg = ModelConfig.from_checkpoint(tmp_path)
    assert cfg.has_final_norm and cfg.final_norm is None and cfg.to_dict()["final_norm"] is None
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert {"norm_f.weight", "norm_f.bias"} <= set(model.state_dict())
    with torch.no_grad():
        model.norm_f.weight.normal_(1.0, 0.3)
        ids = torch.randint(0, 61, (1, 9))
        x = model.wte(ids) + model.wpe(torch.arange(9)[None])
        for block in model.blocks:
            x, _ = block(x, is_causal=True)
        torch.testing.assert_close(model(ids).logits, model.lm_head(model.norm_f(x)), rtol=0, atol=1e-6)

def test_final_norm_is_derived_again_and_an_explicit_one_survives_yaml(tmp_path):
    bert = ModelConfig.from_name("bert-mini")
    assert not bert.has_final_norm  # post-norm encoders never had one (BertModel)
    assert bert.replace(norm_placement="pre").has_final_norm  # decided again, as before the field
    # dataclasses.replace too (it passes every field: a filled-in value was kept, and refused for an encoder)
    assert not dataclasses.replace(ModelConfig(**GPT1), causal=False).has_final_norm
    gpt1 = ModelConfig(**GPT1, final_norm=False)
    gpt1.save(tmp_path / "gpt1.yaml")
    back = ModelConfig.from_file(tmp_path / "gpt1.yaml")
    assert back == gpt1 and back.replace(n_layer=1).final_norm is False
    assert build_model(back.replace(n_layer=1)).norm_f is None
    with pytest.raises(ValueError, match=r"ModelConfig.final_norm=False: False needs norm_placement='post'"):
        gpt1.replace(norm_placement="pre")  # an explicit choice is kept, and a pre-norm stack needs its norm
