"""Decoder models against transformers' on the same weights: logits, loss, KV-cache decoding and greedy generation
(the interop family tests' oracle)."""

from __future__ import annotations

import copy
import inspect

import torch

from neurallayers.generation import GenerationConfig, generate_ids

VOCAB = 96  # the test models' vocabulary and sequence length
SEQ = 12


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with random norms and biases (initialised to ones and zeros), so a swapped or dropped one cannot pass."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_cached_logits(ref: torch.nn.Module, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    name = "cache" if "cache" in inspect.signature(ref.forward).parameters else "past_key_values"  # 5.x renamed it
    out = ref(ids[:, :prefill], use_cache=True)
    logits = [out.logits]
    for p in range(prefill, ids.shape[1]):
        out = ref(ids[:, p:p + 1], use_cache=True, **{name: getattr(out, name)})
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def our_cached_logits(ours: torch.nn.Module, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    cache = ours.new_cache(ids.shape[0], ids.shape[1])
    logits = [ours(ids[:, :prefill], cache=cache).logits]
    logits += [ours(ids[:, p:p + 1], cache=cache, input_pos=p).logits for p in range(prefill, ids.shape[1])]
    return torch.cat(logits, dim=1)


def assert_same_model(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Logits (plain and left-padded), loss, cached decoding and greedy generation of `ours` equal transformers' `ref`
    (fresh copies of it: dynamic NTK scaling keeps state)."""
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        expected = copy.deepcopy(ref)(ids, labels=ids)
        got = ours(ids, targets=targets)
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(our_cached_logits(ours, ids, 5), hf_cached_logits(copy.deepcopy(ref), ids, 5),
                                   atol=1e-5, rtol=0)
        if (ours.config.rope_scaling or {}).get("type") != "dynamic":  # which scales a padded batch by its own rule
            mask = torch.ones_like(ids)
            mask[1, :4] = 0
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            a = ours(ids, attention_mask=mask, position_ids=pos).logits
            b = copy.deepcopy(ref)(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=0)
        prompt = ids[:1, :4]
        n = 16
        want = copy.deepcopy(ref).generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)[0, 4:].tolist()
    config = GenerationConfig(temperature=0.0, max_new_tokens=n, ignore_eos=True)
    assert generate_ids(ours, prompt.tolist(), config, eos_ids=[])[0].token_ids == want
