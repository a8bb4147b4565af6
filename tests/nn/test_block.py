"""Block: stochastic depth drops a whole residual branch per sample and scales the survivors by 1 / (1 - p) in training
(identity in eval), LayerScale multiplies a branch per channel (CaiT), and the decoder's rates grow linearly over depth
from 0 to drop_path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM
from neurallayers.nn.block import Block, drop_path


class Ones(nn.Module):
    """A branch that outputs `value` everywhere (attention returns no weights beside it)."""

    def __init__(self, value: float, *, attention: bool = False) -> None:
        super().__init__()
        self.value, self.attention = value, attention

    def forward(self, x: torch.Tensor, **_) -> torch.Tensor | tuple[torch.Tensor, None]:
        y = torch.full_like(x, self.value)
        return (y, None) if self.attention else y


def block(**kwargs) -> Block:
    return Block(
        attn=Ones(1.0, attention=True), mlp=Ones(2.0), norm1=nn.Identity(), norm2=nn.Identity(), dim=4, **kwargs
    )


def test_drop_path_drops_each_branch_per_sample_and_rescales_the_survivors():
    p = 0.25
    net = block(drop_path=p).train()
    torch.manual_seed(0)
    y, _ = net(torch.zeros(4000, 3, 4))
    assert (y == y[:, :1, :1]).all()  # one decision per sample and branch, the same for all its tokens and channels
    kept = 1 / (1 - p)
    outcomes = {0.0: p * p, kept: (1 - p) * p, 2 * kept: p * (1 - p), 3 * kept: (1 - p) ** 2}  # value: probability
    values, counts = y[:, 0, 0].unique(return_counts=True)
    assert values.tolist() == pytest.approx(sorted(outcomes))
    for v, n in zip(values.tolist(), counts.tolist(), strict=True):
        want = outcomes[min(outcomes, key=lambda o: abs(o - v))]
        assert abs(n / 4000 - want) < 0.03, (v, n)
    assert y[:, 0, 0].mean().item() == pytest.approx(3.0, abs=0.05)  # unbiased: the expectation is the eval output


def test_drop_path_and_dropout_are_identity_in_eval():
    net = block(drop_path=0.5, dropout=0.5).eval()
    y, _ = net(torch.zeros(64, 3, 4))
    assert (y == 3.0).all()


@pytest.mark.parametrize("prenorm", [True, False])
def test_layer_scale_multiplies_each_branch_per_channel(prenorm):
    net = block(layer_scale=0.1, prenorm=prenorm).eval()
    gamma1, gamma2 = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1.0, -1.0, 0.5, 2.0])
    with torch.no_grad():
        net.ls1.gamma.copy_(gamma1)
        net.ls2.gamma.copy_(gamma2)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    y, _ = net(x)
    torch.testing.assert_close(y, x + gamma1 + 2 * gamma2)  # norms are identities here, so post-norm adds alike


def test_decoder_drop_path_rates_grow_linearly_from_zero():
    cfg = ModelConfig(vocab_size=11, block_size=8, n_layer=5, n_head=2, n_embd=8, drop_path=0.2, layer_scale=1e-4)
    net = DecoderLM(cfg)
    assert [b.drop_path for b in net.blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert all((b.ls1.gamma == 1e-4).all() and (b.ls2.gamma == 1e-4).all() for b in net.blocks)


def test_an_integer_layer_scale_builds_float_scales():
    """`layer_scale: 1` in a YAML config is an int: the model failed to build ("Only Tensors of floating point ...
    can require gradients"); it is the model of 1.0, whose scales train."""
    fields = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    torch.manual_seed(0)
    net = DecoderLM(ModelConfig(**fields, layer_scale=1))
    torch.manual_seed(0)
    ref = DecoderLM(ModelConfig(**fields, layer_scale=1.0))
    assert net.blocks[0].ls1.gamma.dtype == torch.float32 and net.blocks[0].ls1.gamma.requires_grad
    ids = torch.randint(0, 11, (1, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(net(ids).logits, ref(ids).logits, atol=0, rtol=0)


def test_drop_path_is_deterministic_under_a_seed():
    net = block(drop_path=0.5, dropout=0.2).train()
    x = torch.randn(64, 3, 4, generator=torch.Generator().manual_seed(1))
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(net(x)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def torchvision_stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """torchvision.ops.stochastic_depth(x, p, mode="row", training) written out (torchvision is no dependency here)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    survival = 1.0 - p
    noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype).bernoulli_(survival)
    if survival > 0.0:
        noise.div_(survival)
    return x * noise


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_drop_path_is_torchvision_stochastic_depth(p, training):
    """At p=1 every branch is dropped: zeros, as torchvision gives (it was 0 / 0, NaN through the whole model)."""
    x = torch.randn(256, 3, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    want = torchvision_stochastic_depth(x, p, training)
    torch.manual_seed(1)
    torch.testing.assert_close(drop_path(x, p, training), want)


def test_a_block_with_every_branch_dropped_is_the_identity():
    net = block(drop_path=1.0).train()
    x = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0))
    y, _ = net(x)
    torch.testing.assert_close(y, x, atol=0, rtol=0)


@pytest.mark.parametrize("field, value", [("drop_path", 1.5), ("drop_path", -0.1), ("drop_path", float("nan")),
                                          ("dropout", 1.2), ("dropout", -0.5)])
def test_a_block_refuses_a_rate_outside_zero_to_one_when_built(field, value):
    """They failed at the first training step (torch's "dropout probability has to be between 0 and 1" naming neither
    field, or bernoulli's own) or, NaN, gave NaN outputs."""
    with pytest.raises(ValueError, match=rf"{field}={value}.*\[0, 1\]"):
        block(**{field: value})


def test_drop_path_refuses_a_rate_outside_zero_to_one():
    with pytest.raises(ValueError, match=r"drop_path p=1.5.*\[0, 1\]"):
        drop_path(torch.ones(2, 3), 1.5, True)


def test_a_layer_scale_of_zero_builds_zero_scales_not_none():
    """layer_scale=0.0 (a zero-initialised scale, ReZero's start) built no LayerScale at all: `if layer_scale` read 0
    as off, which only None means."""
    net = block(layer_scale=0.0)
    assert torch.equal(net.ls1.gamma, torch.zeros(4)) and torch.equal(net.ls2.gamma, torch.zeros(4))
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    y, _ = net.eval()(x)
    torch.testing.assert_close(y, x, atol=0, rtol=0)
