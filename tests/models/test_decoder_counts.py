"""Parameter count and MFU: num_params is the sum of numel over distinct tensors (a tied output layer counted once),
and estimate_mfu is nanoGPT's estimate_mfu (6N + 12 L H Q T FLOPs a token, N without position embeddings) up to the
norm and bias parameters that nanoGPT counts as matmul FLOPs."""

from __future__ import annotations

import pytest
import torch
from nl_model_helpers import CONFIGS, model

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("tied", [True, False])
def test_num_params_counts_each_tensor_once(name, tied):
    net = model(name, tie_embeddings=tied)
    distinct = {id(p): p.numel() for _, p in net.named_parameters(remove_duplicate=False)}
    assert net.num_params() == sum(distinct.values()) == net.config.param_count()
    assert (net.lm_head.weight is net.wte.weight) == tied
    tables = net.wte.weight.numel() + (net.wpe.weight.numel() if net.wpe is not None else 0)
    assert net.num_params(exclude_embeddings=True) == net.num_params() - tables


def nanogpt_mfu(net: DecoderLM, fwdbwd_per_iter: int, dt: float, peak: float) -> float:
    """nanoGPT's GPT.estimate_mfu, written out: N is get_num_params() (position embeddings subtracted)."""
    cfg = net.config
    n = net.num_params() - (net.wpe.weight.numel() if net.wpe is not None else 0)
    layers, heads, q, t = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
    flops_per_token = 6 * n + 12 * layers * heads * q * t
    return flops_per_token * t * fwdbwd_per_iter / dt / peak


def test_estimate_mfu_is_nanogpts_for_gpt2():
    with torch.device("meta"):
        net = DecoderLM(ModelConfig.from_name("gpt2"))
    batch, dt, peak = 12, 0.5, 312e12  # nanoGPT's A100 bf16 peak
    tokens_per_second = batch * net.config.block_size / dt
    ours = net.estimate_mfu(tokens_per_second, peak)
    assert ours == pytest.approx(nanogpt_mfu(net, batch, dt, peak), rel=1e-3)  # its norms and biases: 0.09%
    matmul = sum(p.numel() for n, p in net.named_parameters() if p.ndim == 2 and not n.startswith("wpe"))
    cfg = net.config
    exact = (6 * matmul + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size) * tokens_per_second / peak
    assert ours == pytest.approx(exact, rel=1e-12)
    assert net.estimate_mfu(tokens_per_second, peak, seq_len=256) < ours  # attention over fewer keys


@pytest.mark.parametrize(("tokens_per_second", "peak"), [(1000.0, 0.0), (1000.0, -1e12), (-5.0, 1e12)])
def test_estimate_mfu_refuses_a_peak_or_rate_that_is_not_one(tokens_per_second, peak):
    """A zero peak was a ZeroDivisionError; a negative figure gave a negative MFU."""
    with pytest.raises(ValueError, match="estimate_mfu needs peak_flops > 0 and tokens_per_second >= 0"):
        model("gpt2").estimate_mfu(tokens_per_second, peak)


def test_flops_per_token_counts_a_sliding_window_s_keys_only() -> None:
    """A Mistral-style window bounds the keys each query scores against: MFU was overstated by counting them all."""
    shape = dict(block_size=4096, n_layer=2, n_head=4, n_embd=64, vocab_size=100, position="rope")
    full, windowed = ModelConfig(**shape), ModelConfig(**shape, sliding_window=128)
    assert full.flops_per_token() - windowed.flops_per_token() == 2 * 2 * 2 * 64 * (4096 - 128)
    assert windowed.flops_per_token(64) == full.flops_per_token(64)  # a context inside the window: all keys seen
