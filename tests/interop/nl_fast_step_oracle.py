"""The fast decode step (generation.fast) against the plain forward of the same model: the interop tests' check that
a family's settings reach the one-token step."""

from __future__ import annotations

import torch
from nl_hf_oracle import VOCAB

from neurallayers.generation import GenerationConfig, generate_ids
from neurallayers.generation.fast import decode_step_for, prepare_for_decode, release


def assert_fast_step_is_the_plain_forward(model: torch.nn.Module, *, compile: bool = False) -> None:
    """The fast one-token step's logits at every position past the prompt, and its greedy tokens, equal the plain
    forward's."""
    ids = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(3))
    config = GenerationConfig(temperature=0.0, max_new_tokens=16, ignore_eos=True)
    with torch.no_grad():
        plain = model(ids).logits[0]
    want = generate_ids(model, [ids[0, :4].tolist()], config, eos_ids=[])[0].token_ids
    prepare_for_decode(model, compile=compile)
    try:
        step = decode_step_for(model)
        cache = step.new_cache(1, ids.shape[1])
        with torch.no_grad():
            model(ids[:, :4], cache=cache)
            got = torch.stack([step(ids[:, p:p + 1], cache=cache, input_pos=p)[0] for p in range(4, ids.shape[1])])
        torch.testing.assert_close(got, plain[4:], atol=1e-5, rtol=0)
        assert generate_ids(model, [ids[0, :4].tolist()], config, eos_ids=[])[0].token_ids == want
    finally:
        release(model)
