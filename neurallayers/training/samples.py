"""samples.txt: what a finished run's model writes for train.sample_prompts (a decoder's continuations)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from neurallayers.files import write_text_atomic

log = logging.getLogger("neurallayers.training")


def write_samples(model: torch.nn.Module, tokenizer: object, cfg: object, path: Path, device: torch.device, *,
                   write: bool = True, fixed_length: bool = False) -> None:
    """Samples from `model` for cfg.sample_prompts into `path` (when `write`): each prompt as generate() samples it
    alone, its cfg.sample_tokens or fewer where its context fills; a prompt with no room (longer than the context, or
    no tokens at all) is named and left out, the others still sampled. fixed_length: every prompt gets exactly its
    token budget (generation ignores eos; the text is cut at it afterwards), so the number of forwards does not
    depend on what is sampled."""
    if not cfg.sample_prompts or cfg.sample_tokens == 0:
        return
    try:
        from neurallayers.generation.config import GenerationConfig
        from neurallayers.generation.generate import generate
    except ImportError as e:
        log.warning("generation is not available (%s): no samples written", e)
        return
    prompts = _prompts_that_fit(cfg.sample_prompts, tokenizer, model.config.block_size)
    if not prompts:
        return
    gen = GenerationConfig(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50, seed=cfg.seed,
                           ignore_eos=fixed_length)
    model.eval()
    try:
        outs = generate(model, tokenizer, prompts, gen)
    except Exception as e:  # a finished run must not be lost to a sampling bug; say so loudly instead
        log.warning("sampling failed (%s: %s): no samples written", type(e).__name__, e)
        return
    if not write:
        return
    texts = [o.text for o in outs]
    if fixed_length and tokenizer.eos_id is not None:  # cut at eos, decoded after the prompt as generate() decodes
        from neurallayers.data.tokenizers import continuation_text  # (a SentencePiece first word keeps its space)

        texts = [continuation_text(tokenizer, tokenizer.encode(p, add_special_tokens=True),
                                   o.token_ids[:o.token_ids.index(tokenizer.eos_id)], skip_padded_ids=True)
                 if tokenizer.eos_id in o.token_ids else o.text for p, o in zip(prompts, outs, strict=True)]
    parts = [f"=== prompt: {p!r}\n{p}{t}\n" for p, t in zip(prompts, texts, strict=True)]
    save_samples(path, "\n".join(parts))


def _prompts_that_fit(prompts: list[str], tokenizer: object, block_size: int) -> list[str]:
    """The prompts generate() can continue, encoded as it encodes them (a Llama tokenizer's bos first): at most
    block_size tokens (the last needs no position) and at least one. The others are named in a warning."""
    fit = []
    for i, prompt in enumerate(prompts):
        n = len(tokenizer.encode(prompt, add_special_tokens=True))
        if 0 < n <= block_size:
            fit.append(prompt)
        elif n:
            log.warning("sample prompt %d (%r) has %d tokens, more than the context (block_size=%d): not sampled", i,
                        prompt, n, block_size)
        else:
            log.warning("sample prompt %d (%r) has no tokens in the run's tokenizer: not sampled", i, prompt)
    return fit


def save_samples(path: Path, text: str) -> None:
    """samples.txt, atomically; like the loss plot a convenience, so a full disk warns instead of failing a finished
    run (whose checkpoint and weights are already saved) and leaving its plot undrawn."""
    try:
        write_text_atomic(path, text)
    except OSError as e:
        log.warning("could not write the samples %s (%s)", path, e)
