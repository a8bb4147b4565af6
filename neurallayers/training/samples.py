"""samples.txt: what a finished run's model writes for train.sample_prompts (a decoder's continuations)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from neurallayers.files import write_text_atomic

log = logging.getLogger("neurallayers.training")


def write_samples(model: torch.nn.Module, tokenizer: object, cfg: object, path: Path, device: torch.device, *,
                   write: bool = True, fixed_length: bool = False) -> None:
    """Samples from `model` for cfg.sample_prompts into `path` (when `write`). fixed_length: every prompt gets
    exactly the token budget (generation ignores eos; the text is cut at it afterwards), so the number of forwards
    does not depend on what is sampled."""
    if not cfg.sample_prompts or cfg.sample_tokens == 0:
        return
    try:
        from neurallayers.generation.config import GenerationConfig
        from neurallayers.generation.generate import generate
    except ImportError as e:
        log.warning("generation is not available (%s): no samples written", e)
        return
    longest = max(len(tokenizer.encode(p)) for p in cfg.sample_prompts)
    n_new = min(cfg.sample_tokens, model.config.block_size - longest)
    if n_new < 1:
        log.warning("sample prompts fill the context (block_size=%d): no samples written", model.config.block_size)
        return
    gen = GenerationConfig(max_new_tokens=n_new, temperature=0.8, top_k=50, seed=cfg.seed, ignore_eos=fixed_length)
    model.eval()
    try:
        outs = generate(model, tokenizer, list(cfg.sample_prompts), gen)
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
                 if tokenizer.eos_id in o.token_ids else o.text for p, o in zip(cfg.sample_prompts, outs, strict=False)]
    parts = [f"=== prompt: {p!r}\n{p}{t}\n" for p, t in zip(cfg.sample_prompts, texts, strict=False)]
    save_samples(path, "\n".join(parts))


def save_samples(path: Path, text: str) -> None:
    """samples.txt, atomically; like the loss plot a convenience, so a full disk warns instead of failing a finished
    run (whose checkpoint and weights are already saved) and leaving its plot undrawn."""
    try:
        write_text_atomic(path, text)
    except OSError as e:
        log.warning("could not write the samples %s (%s)", path, e)
