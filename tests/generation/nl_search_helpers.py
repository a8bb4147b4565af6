"""Shared tiny models for the search tests (imported by the test modules beside it)."""

from __future__ import annotations

import math
import os
from collections import Counter

import torch

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hf_and_ours(*, seed: int = 0, vocab: int = 96, n_layer: int = 2, n_embd: int = 32, n_head: int = 4,
                init_range: float = 0.3, positions: int = 64) -> tuple[torch.nn.Module, DecoderLM]:
    """A random transformers GPT2LMHeadModel and our DecoderLM holding the same weights.

    A large init range makes the next-token distributions peaked, so float noise between the two
    implementations never flips a near tie.
    """
    import transformers

    from neurallayers.interop import gpt2

    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=n_embd, n_layer=n_layer,
                                     n_head=n_head, initializer_range=init_range, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = gpt2.config_from_hf(hf_cfg.to_dict())
    ours = DecoderLM(cfg).eval()
    ours.load_state_dict(gpt2.to_ours(hf.state_dict(), cfg), strict=False)
    return hf, ours


def tiny(*, seed: int, vocab: int = 64, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, init_std: float = 0.3,
         block_size: int = 64) -> DecoderLM:
    """A random DecoderLM; init_std sets how peaked its next-token distributions are."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      init_std=init_std)
    return DecoderLM(cfg).eval()


@torch.inference_mode()
def plain_greedy(model: DecoderLM, prompt: list[int], n: int, *, eos: list[int] = (), procs: list = ()) -> list[int]:
    """Greedy continuation by full forwards without a cache (the reference for the cached searches); `procs`
    (logits processors) change the logits before the argmax."""
    ids = list(prompt)
    out: list[int] = []
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[:, -1]
        for proc in procs:
            logits = proc(torch.tensor([ids]), logits)
        tok = int(logits[0].argmax())
        if tok in eos:
            break
        ids.append(tok)
        out.append(tok)
    return out


# ----- goodness of fit: sampled counts against exact probabilities -----
def chi2_threshold(df: int, z: float = 3.29) -> float:
    """Upper quantile of chi-square(df) at normal score z (Wilson-Hilferty); z=3.29 is p = 5e-4."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: Counter, probs: dict, n: int) -> tuple[float, int]:
    """Pearson statistic with cells of expected count < 5 pooled into one; returns (statistic, df)."""
    stat, df, pooled_obs, pooled_exp = 0.0, -1, 0, 0.0
    for cell, p in probs.items():
        if n * p < 5:
            pooled_obs, pooled_exp = pooled_obs + counts.get(cell, 0), pooled_exp + n * p
        else:
            stat, df = stat + (counts.get(cell, 0) - n * p) ** 2 / (n * p), df + 1
    if pooled_exp > 0:
        stat, df = stat + (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9), df + 1
    assert sum(counts.values()) == n and not set(counts) - set(probs), "sampled a token of probability 0"
    return stat, df
