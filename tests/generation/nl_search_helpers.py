"""Shared tiny models for the search tests (imported by the test modules beside it)."""

from __future__ import annotations

import os

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
