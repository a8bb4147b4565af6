"""samples.txt of a masked-LM run: the model's guesses for the masks in the sample prompts, and a few validation
windows with tokens masked, with what the model fills in.

A decoder run samples text from its prompts; an encoder cannot generate, so its samples show the masked-LM task
itself: prompts that hold the mask token (e.g. "To be, or not to <mask>"), and windows with the same masks at every
call (the Masker's EVAL stream), every selected token replaced by the mask token.
"""

from __future__ import annotations

import logging

import torch

from neurallayers.data.token_ids import text_ids

log = logging.getLogger("neurallayers.training")

WINDOWS, WIDTH = 3, 64  # how many windows, of at most how many tokens


@torch.no_grad()
def fill_samples(model: torch.nn.Module, tokenizer: object, masker: object, tokens, device: torch.device) -> str:
    """For each window the masked text, the model's filling and the original. The model is in eval mode."""
    from neurallayers.data.datasets import eval_batches
    from neurallayers.data.masking import EVAL

    width = min(WIDTH, model.config.block_size, len(tokens) - 1)
    x, _ = next(eval_batches(tokens, block_size=width, batch_size=WINDOWS, max_batches=1))
    _, labels = masker(x, 0, stream=EVAL)
    selected = labels != -100
    masked = torch.where(selected, masker.mask_id, x)
    predicted = model(masked.to(device)).logits.argmax(-1).cpu()
    filled = torch.where(selected, predicted, x)
    parts = []
    for row in range(len(x)):
        right, total = int((filled[row] == x[row])[selected[row]].sum()), int(selected[row].sum())
        show = [tokenizer.decode(ids.tolist(), skip_special_tokens=False) for ids in (masked[row], filled[row], x[row])]
        parts.append(f"=== window {row + 1}: {right} of {total} masked tokens filled in right\n"
                     f"--- masked\n{show[0]}\n--- filled in\n{show[1]}\n--- original\n{show[2]}\n")
    return "\n".join(parts)


@torch.no_grad()
def prompt_fills(model: torch.nn.Module, tokenizer: object, prompts: list[str], device: torch.device,
                 top_k: int = 5) -> str:
    """For each prompt that holds the mask token: the model's `top_k` tokens at each of its masks. The model is in
    eval mode. A prompt is encoded as the fill-mask pipeline encodes it: framed by the tokenizer's special tokens (a
    BERT tokenizer's [CLS] and [SEP]), which the model saw around every text it was pretrained on. A prompt longer
    than the context is named and left out (cut, it lost masks, or the text after them)."""
    parts, block = [], model.config.block_size
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        where = [pos for pos, t in enumerate(ids) if t == tokenizer.mask_id]
        if not where:
            continue
        if len(ids) > block:
            log.warning("sample prompt %d (%r) has %d tokens, more than the context (block_size=%d): not filled", i,
                        prompt, len(ids), block)
            continue
        probs = model(torch.tensor([ids], device=device)).logits[0, where].float().softmax(-1).cpu()
        lines = [f"=== prompt: {prompt!r}"]
        for n, row in enumerate(probs, 1):
            scores, top = row.topk(min(top_k, len(row)))
            lines.append(f"mask {n}: " + "  ".join(f"{_token_text(tokenizer, t)!r} {p:.3f}"
                                                   for t, p in zip(top.tolist(), scores.tolist(), strict=True)))
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _token_text(tokenizer: object, token: int) -> str:
    """A guessed token as the fill-mask pipeline's token_str spells it: a special token by its name (a guessed [SEP]
    is "[SEP]", not ""), a padded row of the vocabulary as ""."""
    return tokenizer.decode(text_ids([token], tokenizer.vocab_size), skip_special_tokens=False)


def masked_lm_samples(model: torch.nn.Module, tokenizer: object, masker: object, tokens, device: torch.device, *,
                      prompts: list[str] = ()) -> str:
    """The text of samples.txt: the `prompt_fills` of `prompts` (those that hold the mask token), then the
    `fill_samples` of `tokens`; "" when there is nothing to show. Under FSDP every rank calls it (the forwards pair
    up) and one writes. A finished run must not be lost to a sampling bug, so failures only warn."""
    if len(tokens) < 2:
        return ""
    was_training = model.training
    model.eval()
    try:
        return "\n".join(t for t in (prompt_fills(model, tokenizer, list(prompts), device),
                                     fill_samples(model, tokenizer, masker, tokens, device)) if t)
    except Exception as e:
        log.warning("fill-mask samples failed (%s: %s): no samples written", type(e).__name__, e)
        return ""
    finally:
        model.train(was_training)
