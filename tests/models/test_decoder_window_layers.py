"""ModelConfig.sliding_window_layers (a window on some layers only, Qwen2's max_window_layers): each block attends as
a plain PyTorch causal-and-window mask says, padded or not; FLOPs count each layer's keys; the field round-trips through
YAML and a run config saved before it still reads as the whole model."""

from __future__ import annotations

import pytest
import torch
import yaml
from nl_model_helpers import config, model, random_ids

from neurallayers.config import ModelConfig


def reference_logits(net, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The blocks run one by one, each with its own mask built here: causal, within the window on sliding layers, no
    padded key (pad (B, T): 1 real, 0 padding), and every query sees itself."""
    cfg = net.config
    t = ids.shape[1]
    q, k = torch.arange(t)[:, None], torch.arange(t)[None, :]
    positions = (pad.cumsum(-1) - 1).clamp(min=0)
    rope = net.rope(positions, torch.float32)
    x = net.wte(ids)
    for i, block in enumerate(net.blocks):
        allowed = (k <= q) & pad[:, None, :].bool()  # (B, T, T)
        if cfg.sliding_window_layers is None or i in cfg.sliding_window_layers:
            allowed &= q - k < cfg.sliding_window
        allowed |= q == k
        x, _ = block(x, rope=rope, mask=allowed[:, None])
    return net.lm_head(net.norm_f(x))


@torch.no_grad()
def test_each_layer_attends_within_its_own_window():
    net = model("window-layers")
    assert net.layer_windows == (5, None, 5)
    ids = random_ids(2, 16, seed=3)
    pad = torch.ones_like(ids)
    pad[1, :6] = 0  # row 1 left-padded
    want = reference_logits(net, ids, pad)
    got = net(ids, attention_mask=pad, position_ids=(pad.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(got[pad.bool()], want[pad.bool()], atol=2e-5, rtol=0)
    torch.testing.assert_close(net(ids).logits, reference_logits(net, ids, torch.ones_like(ids)), atol=2e-5, rtol=0)
    # the reference can tell: with every layer sliding (or none), these weights give other logits
    for layers, window in ((None, 5), (None, None)):
        other = model("window-layers", sliding_window_layers=layers, sliding_window=window)
        other.load_state_dict(net.state_dict())
        assert not torch.allclose(other(ids).logits, net(ids).logits, atol=1e-3)


def test_flops_count_each_layers_keys_by_hand():
    cfg = config("window-layers")  # 3 layers of 32 channels, window 5 on layers 0 and 2
    d, t, v, inter = 32, 20, cfg.vocab_size, cfg.intermediate_size
    per_layer = 2 * d * 3 * d + 2 * d * d + 2 * 3 * d * inter
    keys = 5 + t + 5
    assert cfg.flops_per_token(t) == 3 * per_layer + 4 * d * keys + 2 * d * v
    assert config("window-layers", sliding_window_layers=None).flops_per_token(t) == \
        3 * per_layer + 4 * d * 3 * 5 + 2 * d * v
    assert ModelConfig(n_layer=10**12, n_head=1, n_embd=2, vocab_size=2, block_size=1, sliding_window=4,
                       sliding_window_layers=[0]).flops_per_token() > 0  # a closed form, not a loop over layers


def test_sliding_window_layers_round_trip_through_yaml_and_older_run_configs_lack_it(tmp_path):
    from neurallayers.cli.info import resolve_config

    cfg = config("window-layers")
    cfg.save(tmp_path / "model.yaml")
    assert yaml.safe_load((tmp_path / "model.yaml").read_text())["model"]["sliding_window_layers"] == [0, 2]
    assert ModelConfig.from_file(tmp_path / "model.yaml") == cfg
    old = config("sliding-window").replace(vocab_size=300).to_dict()
    del old["sliding_window_layers"]  # saved before the field existed: still that run's whole model
    run = {"model": old, "data": {"source": "shakespeare", "tokenizer": "bpe", "vocab_size": 1024}, "train": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(run))
    read = resolve_config(str(tmp_path / "config.yaml"))
    assert read.vocab_size == 300 and read.sliding_window_layers is None and read.sliding_window == 5


def test_replace_with_fewer_layers_names_the_layer_list():
    with pytest.raises(ValueError, match=r"sliding_window_layers=\[0, 2\]: must list layer indices in \[0, n_layer=2"):
        config("window-layers").replace(n_layer=2)
