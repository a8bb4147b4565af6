"""From a validated request to what the engine takes: prompts as token ids (tokenized off the event loop) and one
GenerationConfig per choice, with the checks that depend on the model (context length, vocabulary).

Choice k of a prompt samples with seed + k (mod 2**63), so a request with a seed is reproducible, its choices
differ, and choice 0 equals `neurallayers.generate(..., seed=seed)`.
"""

from __future__ import annotations

import functools
import re

from neurallayers.generation import GenerationConfig
from neurallayers.serve.errors import bad_request
from neurallayers.serve.schemas import MAX_SEED, Sampling
from neurallayers.serve.state import ServedModel

# GenerationConfig field -> the request field a client knows
_FIELD_NAMES = {"max_new_tokens": "max_tokens", "logprobs": "logprobs"}


async def prompt_ids(served: ServedModel, prompt, *, param: str = "prompt", special: bool = True) -> list[list[int]]:
    """A completions prompt (string, strings, token ids, token-id lists) -> one id list per prompt. Text goes through
    the tokenizer's post-processor unless `special` is False (a rendered chat template holds its own bos), as vLLM
    does.

    Text is tokenized in a worker thread, so a huge prompt does not stall the event loop (and /health).

    Raises:
        APIError: 400 for an empty prompt, ids outside the vocabulary, or more prompts than the server holds.
    """
    from starlette.concurrency import run_in_threadpool

    vocab = served.model.config.vocab_size
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request(f"{param} is empty: give at least one prompt", param)
    if len(prompt) > served.limits.capacity:
        raise bad_request(f"{param} holds {len(prompt)} prompts; this server takes at most "
                          f"{served.limits.capacity} sequences at a time", param)
    if isinstance(prompt[0], str):
        for i, text in enumerate(prompt):
            if not text:
                where = param if len(prompt) == 1 else f"{param}[{i}]"
                raise bad_request(f"{where} is an empty string: a prompt needs at least one token", param)
        ids = await run_in_threadpool(functools.partial(served.tokenizer.encode_batch, add_special_tokens=special),
                                      prompt)
    elif isinstance(prompt[0], int):
        ids = [prompt]
    else:
        ids = prompt
    for i, row in enumerate(ids):
        where = param if len(ids) == 1 else f"{param}[{i}]"
        if not row:
            raise bad_request(f"{where} is empty: a prompt needs at least one token", param)
        bad = [t for t in row if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"{where} holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}", param,
                              code="invalid_token_id")
    return ids


def check_length(served: ServedModel, ids: list[list[int]], max_tokens: int, *, param: str = "prompt",
                 max_param: str = "max_tokens") -> None:
    """400 naming the numbers when a prompt, or a prompt plus max_tokens, does not fit the context length."""
    block = served.block_size
    for i, row in enumerate(ids):
        where = param if len(ids) == 1 else f"{param}[{i}]"
        if len(row) >= block:
            raise bad_request(f"{where} has {len(row)} tokens but the model's context length is {block} "
                              f"(and at least one token must be generated): shorten the prompt to at most "
                              f"{block - 1} tokens", param, code="context_length_exceeded")
        if len(row) + max_tokens > block:
            raise bad_request(f"{where} has {len(row)} tokens and {max_param} is {max_tokens}: together "
                              f"{len(row) + max_tokens}, over the model's context length {block}; set "
                              f"{max_param} to at most {block - len(row)}", max_param,
                              code="context_length_exceeded")


def stop_list(stop: str | list[str] | None) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def logit_bias(served: ServedModel, bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's {"token id": bias} with string keys -> {int id: bias}, ids checked against the vocabulary."""
    vocab = served.model.config.vocab_size
    out = {}
    for key, value in (bias or {}).items():
        if not re.fullmatch(r"\d{1,12}", key) or int(key) >= vocab:
            raise bad_request(f"logit_bias key {key!r} is not a token id in [0, {vocab})", "logit_bias",
                              code="invalid_token_id")
        out[int(key)] = float(value)
    return out


def generation_configs(served: ServedModel, req: Sampling, *, max_tokens: int, logprobs: int | None,
                       count: int) -> list[GenerationConfig]:
    """The config of each of `count` choices (choice k: seed + k).

    Raises:
        APIError: 400 naming the request field when GenerationConfig refuses a value.
    """
    if req.stream_options is not None and not req.stream:  # as OpenAI answers it
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    vocab = served.model.config.vocab_size
    if logprobs is not None and logprobs > vocab:
        raise bad_request(f"logprobs={logprobs} asks for more alternatives than the vocabulary has ({vocab})",
                          "logprobs")
    sampling = {"temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p, "min_p": req.min_p,
                "repetition_penalty": req.repetition_penalty}
    # the model's recommended sampling (generation_config.json) for the fields the request left out, as vLLM does
    sampling.update({k: v for k, v in served.sampling_defaults.items() if k not in req.model_fields_set})
    try:
        base = GenerationConfig(max_new_tokens=max_tokens, **sampling,
                                presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                                logit_bias=logit_bias(served, req.logit_bias), stop=stop_list(req.stop),
                                seed=req.seed, logprobs=logprobs)
    except ValueError as e:
        name = re.match(r"GenerationConfig\.(\w+)=", str(e))
        param = _FIELD_NAMES.get(name.group(1), name.group(1)) if name else None
        raise bad_request(str(e).removeprefix("GenerationConfig."), param) from None
    if req.seed is None:
        return [base] * count
    return [base.replace(seed=(req.seed + k) % (MAX_SEED + 1)) for k in range(count)]
