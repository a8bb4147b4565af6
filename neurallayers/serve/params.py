"""From a validated request to what the engine takes: prompts as token ids (tokenized off the event loop) and one
GenerationConfig per choice, with the checks that depend on the model (context length, vocabulary).

Choice k of a prompt samples with seed + k (a seed near 2**63 wraps to 0), so a request with a seed is reproducible,
its choices differ, and choice 0 equals `neurallayers.generate(..., seed=seed)`; seed -1 means none, as in vLLM.
"""

from __future__ import annotations

import functools
import json
import re

from neurallayers.generation import GenerationConfig
from neurallayers.interop.hf import SAMPLING_DEFAULTS
from neurallayers.serve._engine_request import TextOptions
from neurallayers.serve.errors import bad_request
from neurallayers.serve.schemas import MAX_SEED, VLLM_DEFAULT_ONLY, Sampling
from neurallayers.serve.state import ServedModel

# GenerationConfig field -> the request field a client knows
_FIELD_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "logprobs": "logprobs"}
# Normalizers that shrink no text by more than 4x: NFC / NFKC compose at most 4 code points into one (the longest
# canonical decomposition), the others map one character to one or more. Replace only when it does not shorten.
_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend"}
_COMPOSING, _MERGE = {"NFC", "NFKC"}, 4
# pre-tokenizers that keep every character (Split and Punctuation unless their behavior is "Removed")
_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Split", "Punctuation"}
_ONE_CHARACTER = {"[\\s\\S]"}  # Split patterns whose pieces are single characters (Tokenizer.train_char's; "."
# is not one: it stops at newlines, so a run of them is one piece, one <unk>)


async def prompt_ids(served: ServedModel, prompt, *, param: str = "prompt", special: bool = True,
                     truncate: int | None = None, side: str | None = None, reserve: int = 0,
                     reserve_param: str = "max_tokens") -> list[list[int]]:
    """A completions prompt (string, strings, token ids, token-id lists) -> one id list per prompt. Text goes through
    the tokenizer's post-processor unless `special` is False (a rendered chat template holds its own bos), as vLLM
    does.

    truncate (vLLM's truncate_prompt_tokens): keep only that many tokens of each prompt; -1: as many as the context
    holds beside the `reserve` tokens the client asked to generate (`reserve_param`; 0: none asked), and a larger
    number is refused, as vLLM's renderer takes them. side (vLLM's truncation_side): None cuts as vLLM's tokenizer
    (truncation_side "left") does, the text's own tokens from the start with a bos kept first; "left" / "right" keep
    the last / first k ids of the encoded prompt, special tokens counted as tokens, as vLLM slices them.

    Text is tokenized in a worker thread, so a huge prompt does not stall the event loop (and /health); a text that
    certainly has more tokens than the context holds is refused before it is tokenized (unless it is truncated).

    Raises:
        APIError: 400 for an empty prompt, one over the context length, ids outside the vocabulary, a truncation
            over what the context holds, or more prompts than the server holds.
    """
    from starlette.concurrency import run_in_threadpool

    # ids the tokenizer can read too: a model's vocabulary may be padded past the tokenizer's (Qwen2's 151936 rows for
    # 151665 tokens), and a prompt id there has no text, which failed the request in the engine; vLLM refuses it too
    vocab, block = min(served.model.config.vocab_size, served.tokenizer.vocab_size), served.block_size
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]  # one prompt: a flat id list too, not one prompt per id
    if not prompt:
        raise bad_request(f"{param} is empty: give at least one prompt", param)
    truncate = truncation(block, truncate, reserve, reserve_param)
    if len(prompt) > served.limits.capacity:
        raise bad_request(f"{param} holds {len(prompt)} prompts; this server takes at most "
                          f"{served.limits.capacity} sequences at a time", param)
    if isinstance(prompt[0], str):
        for i, text in enumerate(prompt):
            if not text:
                where = param if len(prompt) == 1 else f"{param}[{i}]"
                raise bad_request(f"{where} is an empty string: a prompt needs at least one token", param)
        if truncate is None and any(len(text) >= block for text in prompt):  # only such a text can hold block tokens
            per_token = await run_in_threadpool(lambda: served.chars_per_token)  # the first call reads the vocabulary
            for i, text in enumerate(prompt):
                least = -(-len(text) // per_token) if per_token else 0
                if least >= block:
                    where = param if len(prompt) == 1 else f"{param}[{i}]"
                    raise _over_context(where, f"{len(text)} characters, so at least {least} tokens,", block, param)
        # without a side the tokenizer cuts, keeping its bos, as vLLM's does; with one the whole prompt is sliced
        encode = functools.partial(_encode_left_truncated, served.tokenizer, keep=truncate, special=special) \
            if truncate is not None and side is None \
            else functools.partial(served.tokenizer.encode_batch, add_special_tokens=special)
        ids = await run_in_threadpool(encode, prompt)
    else:
        ids = prompt
    if truncate is not None:  # vLLM's slice: the first k for "right", else the last k (a text cut already fits)
        ids = [row[:truncate] if side == "right" else row[-truncate:] for row in ids]
    for i, row in enumerate(ids):
        where = param if len(ids) == 1 else f"{param}[{i}]"
        if not row:
            raise bad_request(f"{where} is empty: a prompt needs at least one token", param)
        if len(row) >= block:  # before scanning what may be millions of ids
            raise _over_context(where, f"{len(row)} tokens", block, param)
        if min(row) < 0 or max(row) >= vocab:
            bad = [t for t in row if not 0 <= t < vocab]
            raise bad_request(f"{where} holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}", param,
                              code="invalid_token_id")
    return ids


def truncation(block: int, truncate: int | None, reserve: int, reserve_param: str) -> int | None:
    """The tokens vLLM's truncate_prompt_tokens keeps: -1 is what the context holds beside the `reserve` tokens asked
    for; a number over that is refused, as vLLM's renderer refuses it (a prompt cut to it could not take them)."""
    if truncate is None:
        return None
    room = block - reserve
    if room < 1:
        raise bad_request(f"{reserve_param}={reserve} leaves no room for a prompt in the model's context length "
                          f"{block}", reserve_param, code="context_length_exceeded")
    if truncate == -1:
        return room
    if truncate > room:
        beside = f" beside {reserve_param}={reserve}" if reserve else ""
        raise bad_request(f"truncate_prompt_tokens={truncate} is more than the model's context length {block} holds"
                          f"{beside}: keep at most {room} tokens (or send -1 for that many)",
                          "truncate_prompt_tokens")
    return truncate


def _encode_left_truncated(tokenizer, texts: list[str], *, keep: int, special: bool) -> list[list[int]]:
    """The ids of `texts` cut to their last `keep` tokens as a transformers tokenizer with truncation_side="left" cuts
    them (vLLM's truncate_prompt_tokens): the special tokens the post-processor adds (a bos) stay and count toward
    `keep`; the text's own tokens are cut."""
    hf = tokenizer.hf
    added = hf.num_special_tokens_to_add(False) if special else 0
    out = []
    for encoding in hf.encode_batch(texts, add_special_tokens=False):
        encoding.truncate(max(keep - added, 0), direction="left")
        out.append(hf.post_process(encoding, add_special_tokens=special).ids)
    return out


def chars_per_token(tokenizer) -> int | None:
    """The most characters of a text one token stands for, so that a text of N characters has at least N / that many
    tokens; None where no such bound holds: an unknown word read as one [UNK] (WordPiece, Unigram, fused unknowns),
    characters a normalizer or pre-tokenizer drops (whitespace, accents), an added token that swallows the whitespace
    around it, truncation.

    A token covers at most as many characters as its vocabulary string has (byte-level BPE: bytes, one or more per
    character; SentencePiece: "▁" for a space; byte fallback "<0x41>": one byte), times what the normalizer merges.
    """
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        return None
    spec = json.loads(hf.to_str())
    model = spec.get("model") or {}
    norms, pres = _flat(spec.get("normalizer"), "normalizers"), _flat(spec.get("pre_tokenizer"), "pretokenizers")
    if spec.get("truncation") or any(t.get("lstrip") or t.get("rstrip") for t in spec.get("added_tokens") or []):
        return None
    if not all(_keeps_text(n) for n in norms):
        return None
    if not all(p.get("type") in _PRE_TOKENIZERS and p.get("behavior") != "Removed" for p in pres):
        return None
    vocab = hf.get_vocab(with_added_tokens=True)
    if model.get("type") == "BPE":
        # an unknown character must become a token, not vanish: by byte fallback, as one <unk> each, or because the
        # byte-level alphabet holds every byte
        from tokenizers.pre_tokenizers import ByteLevel

        byte_level = any(p["type"] == "ByteLevel" for p in pres)
        # byte fallback only with all 256 <0xNN> tokens (else an unknown character is <unk>, and fuse_unk makes a
        # run of them one token: transformers' LlamaConverter writes byte_fallback for vocabularies without them)
        byte_tokens = all(f"<0x{b:02X}>" in vocab for b in range(256))
        one_unk_each = model.get("unk_token") and not model.get("fuse_unk")
        covered = ((model.get("byte_fallback") and byte_tokens) or one_unk_each
                   or (byte_level and all(c in vocab for c in ByteLevel.alphabet())))
    elif model.get("type") == "WordLevel":
        # each piece is one token (an unknown one <unk>), so a piece must be a single character
        covered = (len(pres) == 1 and pres[0]["type"] == "Split" and pres[0].get("behavior") == "Isolated"
                   and not pres[0].get("invert") and (pres[0].get("pattern") or {}).get("Regex") in _ONE_CHARACTER)
    else:
        covered = False
    if not covered:
        return None
    return max(map(len, vocab)) * _MERGE ** sum(n["type"] in _COMPOSING for n in norms)


def _flat(spec: dict | None, key: str) -> list[dict]:
    """A tokenizer.json normalizer or pre-tokenizer as the list of its steps (a Sequence's, flattened)."""
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [step for part in spec.get(key, []) for step in _flat(part, key)]
    return [spec]


def _keeps_text(norm: dict) -> bool:
    if norm.get("type") == "Replace":
        pattern = (norm.get("pattern") or {}).get("String")
        return pattern is not None and len(norm.get("content", "")) >= len(pattern)
    return norm.get("type") in _NORMALIZERS


def _over_context(where: str, size: str, block: int, param: str):
    return bad_request(f"{where} has {size} but the model's context length is {block} (and at least one token "
                       f"must be generated): shorten the prompt to at most {block - 1} tokens", param,
                       code="context_length_exceeded")


def check_length(served: ServedModel, ids: list[list[int]], max_tokens: int, *, param: str = "prompt",
                 max_param: str = "max_tokens") -> None:
    """400 naming the numbers when a prompt, or a prompt plus max_tokens, does not fit the context length."""
    block = served.block_size
    for i, row in enumerate(ids):
        where = param if len(ids) == 1 else f"{param}[{i}]"
        if len(row) >= block:
            raise _over_context(where, f"{len(row)} tokens", block, param)
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


def refuse_unsupported(req: Sampling) -> None:
    """400 naming the field when a request asks for a behaviour this server lacks (vLLM's extra parameters at another
    value than their default, best_of over n, structured output): such a field is never silently ignored."""
    fields = type(req).model_fields
    for name, default in VLLM_DEFAULT_ONLY.items():
        if name in fields and getattr(req, name) != default:
            raise bad_request(f"{name}={json.dumps(getattr(req, name))} is not supported by this server (only its "
                              f"default, {json.dumps(default)})", name)
    if not req.spaces_between_special_tokens and not req.skip_special_tokens:
        # vLLM then writes adjacent special tokens without the decoder's spaces; with them skipped it changes nothing
        raise bad_request("spaces_between_special_tokens=false with skip_special_tokens=false is not supported by this "
                          "server (special tokens are written as the tokenizer decodes them)",
                          "spaces_between_special_tokens")
    if "prompt" in fields and req.echo and req.truncate_prompt_tokens is not None:
        # the echoed text would not be what the model read, and its logprobs' text offsets would not fit it
        raise bad_request("echo with truncate_prompt_tokens is not supported by this server: the prompt echoed would "
                          "not be the tokens the model read", "truncate_prompt_tokens")
    if req.best_of is not None and req.best_of < req.n:  # OpenAI's and vLLM's rule; the message said "more"
        raise bad_request(f"best_of={req.best_of} must be >= n={req.n}", "best_of")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(f"best_of={req.best_of}: choosing the best of more candidates than n is not supported by "
                          "this server (send null, or best_of equal to n)", "best_of")
    if req.response_format is not None and req.response_format != {"type": "text"}:
        raise bad_request(f"response_format {json.dumps(req.response_format)[:80]} is not supported by this server: "
                          'it does not constrain output (only {"type": "text"})', "response_format")


def text_options(req: Sampling) -> TextOptions:
    """How each choice's text is written: vLLM's skip_special_tokens and include_stop_str_in_output; stop_reason
    names the request's own stop strings (not a chat template's)."""
    return TextOptions(skip_special_tokens=req.skip_special_tokens,
                       include_stop_str_in_output=req.include_stop_str_in_output,
                       reported_stops=tuple(stop_list(req.stop)))


def generation_configs(served: ServedModel, req: Sampling, *, max_tokens: int, logprobs: int | None,
                       count: int, extra_stops: list[str] | None = None) -> list[GenerationConfig]:
    """The config of each of `count` choices (choice k: seed + k); extra_stops: stop strings of the server's own (a
    chat template's end of reply) after the request's, not checked against its limit.

    Call it in a worker thread: a body's 3,000,000 stop_token_ids are checked here (repeats dropped first: they stop
    generation once), and each config built and copied, which took the event loop (and /health) seconds.

    Raises:
        APIError: 400 naming the request field when GenerationConfig refuses a value.
    """
    # as vLLM answers it: options without stream are refused, an empty {} (some clients send it on every call) is none
    if req.stream_options is not None and req.stream_options.model_fields_set and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    vocab = served.model.config.vocab_size
    if req.min_tokens > max_tokens:
        raise bad_request(f"min_tokens={req.min_tokens} is more than the {max_tokens} tokens this request may "
                          "generate (max_tokens)", "min_tokens")
    if logprobs is not None and logprobs > vocab:
        name = "top_logprobs" if "top_logprobs" in type(req).model_fields else "logprobs"  # chat counts them there
        raise bad_request(f"{name}={logprobs} asks for more alternatives than the vocabulary has ({vocab})", name)
    seed = None if req.seed == -1 else req.seed  # vLLM's "no seed"
    # the model's recommended sampling (generation_config.json) for the fields the request left out, as vLLM does
    sampling = {k: served.sampling_defaults[k] if k in served.sampling_defaults and k not in req.model_fields_set
                else getattr(req, k) for k in SAMPLING_DEFAULTS}
    if sampling["top_k"] == -1:
        sampling["top_k"] = 0  # vLLM's other spelling of "every token"
    try:
        base = GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=req.min_tokens, **sampling,
                                presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                                logit_bias=logit_bias(served, req.logit_bias), stop=stop_list(req.stop),
                                stop_token_ids=list(dict.fromkeys(req.stop_token_ids or [])),  # repeats: once
                                ignore_eos=req.ignore_eos, seed=seed, logprobs=logprobs,
                                stop_strings_after_min_new_tokens=True)  # vLLM's min_tokens
        base.check_vocab(vocab)  # as the engine checks it: here for the 400 naming the field
    except ValueError as e:
        name = re.match(r"GenerationConfig\.(\w+)[= ]", str(e))
        param = _FIELD_NAMES.get(name.group(1), name.group(1)) if name else None
        raise bad_request(str(e).removeprefix("GenerationConfig."), param) from None
    if extra_stops:
        base = base.replace(stop=[*base.stop, *extra_stops])
    if seed is None:
        return [base] * count
    return [base.replace(seed=seed + k if seed + k <= MAX_SEED else (seed + k) % (MAX_SEED + 1))
            for k in range(count)]
