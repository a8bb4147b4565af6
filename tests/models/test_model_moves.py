"""The big-model paths, each against the model built normally: built on the meta device, then to_empty +
load_state_dict or load_state_dict(assign=True), gives its logits (the position tables outside the state dict
computed, tied weights still tied); reset_parameters after to_empty initialises a model as a fresh build does."""

from __future__ import annotations

import pytest
import torch
from nl_model_helpers import config, model, random_ids

from neurallayers.config import ModelConfig
from neurallayers.models import build_model
from neurallayers.models.encoder import base_encoder

TABLE_CONFIGS = ["gpt2", "rope-llama3", "mqa-rope-linear", "alibi", "sinusoidal-geglu", "layer-scale-no-pos"]
ENCODER = dict(preset="bert-tiny", vocab_size=67, block_size=32, n_layer=2, dropout=0.0, attn_dropout=0.0)


def logits(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(ids).logits


def on_meta(cfg: ModelConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("name", TABLE_CONFIGS)
def test_meta_to_empty_then_load_gives_the_built_logits(name):
    ref, ids = model(name), random_ids(2, 20)
    net = on_meta(ref.config).to_empty(device="cpu")  # no reset step: to_empty computes the tables
    net.load_state_dict(ref.state_dict())
    torch.testing.assert_close(logits(net, ids), logits(ref, ids), rtol=0, atol=0)


@pytest.mark.parametrize("name", TABLE_CONFIGS)
def test_assign_load_into_a_meta_model_gives_the_built_logits(name):
    ref, ids = model(name), random_ids(2, 20)
    net = on_meta(ref.config)
    net.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, assign=True)
    torch.testing.assert_close(logits(net, ids), logits(ref, ids), rtol=0, atol=0)
    assert (net.lm_head.weight is net.wte.weight) == ref.config.tie_embeddings
    assert net.num_params() == ref.num_params()


@pytest.mark.parametrize("assign", [False, True])
def test_a_head_only_state_dict_loads_into_both_tied_weights(assign):
    """Tied weights saved under the head's name alone: with assign=True the head took the loaded tensor, then the
    post-load hook tied it back to the old embedding, dropping the loaded values silently."""
    net = build_model(config("gpt2"))
    head = torch.randn_like(net.lm_head.weight)
    result = net.load_state_dict({"lm_head.weight": head}, strict=False, assign=assign)
    assert net.lm_head.weight is net.wte.weight
    torch.testing.assert_close(net.wte.weight, head, rtol=0, atol=0)
    assert "wte.weight" not in result.missing_keys


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("kept", ["wte.weight", "lm_head.weight"])
def test_tied_weights_saved_under_either_name_load_strictly(kept, assign):
    """A tied model's weights under one name: the head's alone (safetensors' save_model keeps that one) loaded, the
    embedding's alone (a conversion from Hugging Face's GPT-2 or MPT, which store only it) was refused by a strict
    load ("Missing key(s): lm_head.weight"), though the tie makes the two one tensor."""
    net = build_model(config("gpt2"))
    sd = {k: torch.randn_like(v) for k, v in net.state_dict().items() if k not in ("wte.weight", "lm_head.weight")}
    sd[kept] = torch.randn_like(net.wte.weight)
    result = net.load_state_dict(sd, assign=assign)
    assert not result.missing_keys and not result.unexpected_keys
    assert net.lm_head.weight is net.wte.weight
    torch.testing.assert_close(net.wte.weight, sd[kept], rtol=0, atol=0)
    untied = build_model(config("gpt2", tie_embeddings=False))  # untied, the head is a weight of its own: required
    with pytest.raises(RuntimeError, match="Missing key.*lm_head.weight"):
        untied.load_state_dict({k: v for k, v in untied.state_dict().items() if k != "lm_head.weight"})


@pytest.mark.parametrize("position", ["sinusoidal", "rope"])
def test_encoder_from_meta_gives_the_built_logits(position):
    cfg = ModelConfig.resolve({**ENCODER, "position": position, "head": "mlm"})
    torch.manual_seed(0)
    ref, ids = build_model(cfg), torch.randint(1, 67, (2, 12))
    empty = on_meta(cfg).to_empty(device="cpu")
    empty.load_state_dict(ref.state_dict())
    assigned = on_meta(cfg)
    assigned.load_state_dict(ref.state_dict(), assign=True)
    torch.testing.assert_close(logits(empty, ids), logits(ref, ids), rtol=0, atol=0)
    torch.testing.assert_close(logits(assigned, ids), logits(ref, ids), rtol=0, atol=0)


def assert_initialised_like(net: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Every parameter and buffer as a fresh build sets it: equal where the build is deterministic (norms, biases,
    LayerScale, tables, the padding row), the same spread where it draws."""
    got, want = net.state_dict(keep_vars=True), ref.state_dict(keep_vars=True)
    assert got.keys() == want.keys()
    for (key, a), (_, b) in zip(net.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    for key, b in want.items():
        a = got[key]
        if b.ndim >= 2:
            assert abs(a.std().item() - b.std().item()) < 0.3 * b.std().item(), key
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["gpt2", "rope-llama3", "alibi", "sinusoidal-geglu", "layer-scale-no-pos"])
def test_reset_parameters_after_to_empty_initialises_as_built(name):
    net = on_meta(config(name)).to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))  # what uninitialised memory may hold
    net.reset_parameters()
    assert_initialised_like(net, model(name))
    assert torch.isfinite(logits(net, random_ids(2, 20))).all()


def test_reset_parameters_after_to_empty_keeps_tied_weights_tied():
    """to_empty gives each module its own tensor, so the head came out of it untied, and reset_parameters left it so:
    a model trained from meta had a second head matrix that trained apart from the embedding."""
    net = on_meta(config("gpt2")).to_empty(device="cpu")
    net.reset_parameters()
    assert net.lm_head.weight is net.wte.weight
    assert net.num_params() == model("gpt2").num_params()


@pytest.mark.parametrize("head", ["none", "mlm", "sequence_classification"])
def test_encoder_reset_parameters_after_to_empty_initialises_as_built(head):
    cfg = ModelConfig.resolve({**ENCODER, "position": "sinusoidal", "head": head, "pooler": True})
    net = on_meta(cfg).to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    net.reset_parameters()
    assert_initialised_like(net, build_model(cfg))
    assert not base_encoder(net).wte.weight[cfg.pad_token_id].any()


def test_per_module_reset_after_to_empty_leaves_no_norm_uninitialised():
    """FSDP1's meta-device path: to_empty(recurse=False) and reset_parameters() on each module that has one."""
    net = on_meta(config("layer-scale-no-pos"))
    for module in net.modules():
        module.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.fill_(float("nan"))
        if hasattr(module, "reset_parameters") and module is not net:
            module.reset_parameters()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert torch.isfinite(logits(net, random_ids(2, 20))).all()
