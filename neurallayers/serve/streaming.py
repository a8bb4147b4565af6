"""Running a request's choices on the engine: submit them all (or none), collect or merge their events, format
log-probabilities the OpenAI way, and write Server-Sent Events.

A choice is one engine Request. Leaving a stream early (the client went away, an error) cancels every choice still
running, which frees its engine slot.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from neurallayers.data.tokenizers import anchor_id
from neurallayers.generation import GenerationConfig, StreamEvent, TokenLogprob
from neurallayers.serve._engine_request import TextOptions
from neurallayers.serve.errors import APIError, bad_request, error_body, overloaded, unavailable
from neurallayers.serve.metrics import Metrics, TokenClock
from neurallayers.serve.state import ServedModel

log = logging.getLogger("neurallayers.serve")

DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity: a token the model deems impossible gets this instead


def finite(lp: float) -> float:
    return lp if math.isfinite(lp) else LOGPROB_FLOOR


def submit_all(served: ServedModel, prompts: list[list[int]], configs: list[GenerationConfig], *,
               metrics: Metrics, param: str = "prompt", text: TextOptions | None = None) -> list:
    """Submits len(configs) choices of every prompt (prompt-major); on any refusal cancels those already in. `text`:
    how their text is written (vLLM's options).

    Raises:
        APIError: 429 (engine full, with Retry-After), 503 (engine closed), 400 (the engine refused a prompt).
    """
    from neurallayers.serve.engine import EngineClosed, EngineFull

    if len(prompts) * len(configs) > served.limits.capacity:
        raise bad_request(f"{len(prompts)} prompt(s) x n={len(configs)} is {len(prompts) * len(configs)} sequences; "
                          f"this server takes at most {served.limits.capacity} at a time", "n")
    requests = []
    try:
        for ids in prompts:
            for config in configs:
                requests.append(served.engine.submit(ids, config, text=text))
    except EngineFull as e:
        _cancel(requests)
        raise overloaded(getattr(e, "retry_after", 1.0)) from None
    except EngineClosed as e:
        _cancel(requests)
        if served.engine.failure is not None:  # no Retry-After: a retry here cannot succeed until a restart or reload
            raise APIError(503, str(e), type="service_unavailable", code="engine_failed") from None
        raise unavailable("the model is shutting down; retry") from None
    except ValueError as e:
        _cancel(requests)
        raise bad_request(str(e), param) from None
    metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts) * len(configs))
    return requests


def _cancel(requests: list) -> None:
    for r in requests:
        r.cancel()


@dataclass
class Collected:
    """A finished choice: its text, the chosen tokens' log-probabilities, and why it ended."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


async def _collect_one(request, clock: TokenClock, metrics: Metrics) -> Collected:
    out, pieces, seen = Collected(), [], 0
    async for ev in request.aiter():
        pieces.append(ev.text)
        if ev.token_id is not None:
            clock.token()
            metrics.generated_tokens.inc()
            seen += 1
        if ev.logprob is not None:
            out.logprobs.append(ev.logprob)
        if ev.finish_reason is not None:
            out.finish_reason = ev.finish_reason
            _count_unsent(request, seen, metrics)
    out.text = "".join(pieces)
    return out


def _count_unsent(request, seen: int, metrics: Metrics) -> None:
    """Generated tokens that sent no event of their own (a stop token, a stop string's): counted as usage counts
    them (Request.completion_tokens)."""
    if request.completion_tokens > seen:
        metrics.generated_tokens.inc(request.completion_tokens - seen)


async def collect(requests: list, *, metrics: Metrics, started: float,
                  gone: Callable[[], Awaitable[bool]] | None = None) -> list[Collected]:
    """Waits for every choice; if one fails, the rest are cancelled and the error is raised (503 when the engine
    was shut down under it).

    gone: polled while waiting (Request.is_disconnected); when the client has left, every choice is cancelled, so
        an abandoned non-streaming request frees its slots too.
    """
    from neurallayers.serve.engine import EngineClosed

    tasks = [asyncio.ensure_future(_collect_one(r, TokenClock(metrics, started), metrics)) for r in requests]
    watcher = asyncio.ensure_future(_watch(gone, requests)) if gone is not None else None
    try:
        return await asyncio.gather(*tasks)
    except BaseException as e:
        for t in tasks:
            t.cancel()
        _cancel(requests)
        if isinstance(e, EngineClosed):
            raise unavailable("the server stopped before the request finished; retry") from None
        raise
    finally:
        if watcher is not None:
            watcher.cancel()


async def _watch(gone: Callable[[], Awaitable[bool]], requests: list) -> None:
    while not await gone():
        await asyncio.sleep(DISCONNECT_POLL_S)
    _cancel(requests)


async def merged(requests: list, *, metrics: Metrics, started: float) -> AsyncIterator[tuple[int, StreamEvent]]:
    """(choice index, event) from all choices as they come; errors of any choice are raised here."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, request) -> None:
        clock, seen = TokenClock(metrics, started), 0
        try:
            async for ev in request.aiter():
                if ev.token_id is not None:
                    clock.token()
                    metrics.generated_tokens.inc()
                    seen += 1
                if ev.finish_reason is not None:
                    _count_unsent(request, seen, metrics)
                queue.put_nowait((i, ev))
            queue.put_nowait((i, done))
        except Exception as e:  # handed to the reader, which raises it
            queue.put_nowait((i, e))

    tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(requests)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        _cancel(requests)


# Characters that end a line for str.splitlines, which SSE readers built on it split a data line at (httpx's
# iter_lines, requests' iter_lines(decode_unicode=True)); json.dumps escapes the ASCII ones (control characters) only
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(obj: dict) -> str:
    """One Server-Sent Event carrying a JSON object (UTF-8, no ASCII escaping but for the characters a reader could
    take for a line end: as JSON escapes they read back the same)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS)
    return f"data: {text}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(exc: BaseException) -> str:
    """An error after the response has started (headers are sent: the status can no longer change)."""
    from neurallayers.serve.engine import EngineClosed

    if isinstance(exc, EngineClosed):  # as collect() answers it: the client may retry elsewhere
        exc = unavailable("the server stopped before the request finished; retry")
    if isinstance(exc, APIError):
        return sse(exc.body())
    # a model failure or a bug, answered as errors.install's handler answers it unstreamed: the traceback in the
    # server's log (a stream's failure left none there), its text (paths, internals) not in the answer
    log.error("generation failed in a stream", exc_info=exc)
    return sse(error_body(f"internal error ({type(exc).__name__}); see the server log", type="server_error",
                          code="internal_error"))


def now() -> int:
    return int(time.time())


# ----- log-probabilities in the two OpenAI formats -----
def token_text(tokenizer, token_id: int) -> str:
    """A token's text as it reads inside a text: decoded after an anchor token ("a"), since a SentencePiece decoder
    strips the space of a text's first token: Llama's "▁world" alone read "world", so the logprobs' tokens (and
    chat `bytes`) of " world" lost their spaces and no longer joined into the reply.

    An id past the tokenizer's vocabulary (a row of a model's vocabulary padded past it, as Qwen2's) has no text: "",
    as vLLM's transformers tokenizer decodes it (an alternative among the top logprobs made the request a 500)."""
    if not 0 <= token_id < tokenizer.vocab_size:
        return ""
    anchor = anchor_id(tokenizer)
    alone = tokenizer.decode([token_id], skip_special_tokens=False)
    if anchor is None:
        return alone
    head, whole = (tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                   for ids in ([anchor], [anchor, token_id]))
    return whole[len(head):] if whole.startswith(head) else alone


def completion_logprobs(tokenizer, lps: list[TokenLogprob], *, offset: int = 0,
                        prompt: dict | None = None) -> dict:
    """The completions format: parallel lists tokens / token_logprobs / top_logprobs / text_offset.

    prompt: the echoed prompt's lists (from prompt_logprobs), which come first.
    """
    out = prompt or {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    pos = offset
    for lp in lps:
        text = token_text(tokenizer, lp.token_id)
        out["tokens"].append(text)
        out["token_logprobs"].append(finite(lp.logprob))
        out["top_logprobs"].append(top_dict(tokenizer, lp.top, (lp.token_id, lp.logprob)))
        out["text_offset"].append(pos)
        pos += len(text)
    return out


def top_dict(tokenizer, top: list[tuple[int, float]], chosen: tuple[int, float]) -> dict[str, float]:
    """A completions `top_logprobs` entry: text -> log-probability of the `top` alternatives (most likely first), then
    the chosen token, as OpenAI lists it ("up to logprobs + 1 elements"). Tokens with the same text (the byte tokens
    of a multi-byte character all read "\ufffd") share one key, which keeps the most likely one's value: a later one
    overwriting it made the chosen greedy token look less likely than an alternative."""
    out: dict[str, float] = {}
    for t, v in [*top, chosen]:
        out.setdefault(token_text(tokenizer, t), finite(v))
    return out


def chat_logprobs(tokenizer, lps: list[TokenLogprob]) -> dict:
    """The chat format: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    kinds = _byte_decoders(tokenizer)

    def entry(token_id: int, lp: float) -> dict:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": finite(lp), "bytes": token_bytes(tokenizer, token_id, text, kinds)}

    return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                        for lp in lps]}


def token_bytes(tokenizer, token_id: int, text: str, kinds: set[str]) -> list[int]:
    """OpenAI's `bytes` of a token: its own bytes, so that the bytes of the tokens a character is split over join into
    that character; a token's text alone shows such a part as U+FFFD. kinds: _byte_decoders(tokenizer)."""
    if "\ufffd" in text:
        piece = tokenizer.id_to_token(token_id) or ""
        if "ByteLevel" in kinds and all(c in _BYTE_OF for c in piece):
            return [_BYTE_OF[c] for c in piece]
        if "ByteFallback" in kinds and (hexa := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)):
            return [int(hexa[1], 16)]
    return list(text.encode("utf-8"))


def _byte_decoders(tokenizer) -> set[str]:
    """The tokenizer's decoders that read tokens as bytes: ByteLevel (GPT-2's byte alphabet), ByteFallback (<0xNN>)."""
    decoder = getattr(getattr(tokenizer, "hf", None), "decoder", None)
    if decoder is None:
        return set()
    spec = json.loads(decoder.__getstate__())
    steps = (spec.get("decoders") or []) if spec.get("type") == "Sequence" else [spec]
    return {step.get("type") for step in steps} & {"ByteLevel", "ByteFallback"}


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the others for 256 + i."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {chr(b): b for b in kept} | {chr(256 + i): b for i, b in enumerate(others)}


_BYTE_OF = _gpt2_byte_alphabet()


PROMPT_ROWS = 256  # rows of prompt logits turned into log-probabilities at a time


def prompt_logprobs(served: ServedModel, ids: list[int], top: int, *, text: str | None = None,
                    special: bool = True) -> dict:
    """Echo with logprobs: each prompt token's log-probability given the tokens before it (None for the first),
    from one forward pass (read-only on the weights, so it may run beside the engine).

    text: the prompt as sent (echoed as is), which `ids` encode (`special`: with the tokenizer's special tokens): each
    token's text_offset is then where it starts in that text; None (a token-id prompt, echoed decoded): the tokens'
    texts follow each other."""
    import torch

    model = served.model
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=device)).logits[0, :-1]  # row t predicts token t + 1
        targets = torch.tensor(ids[1:], device=device)[:, None]
        chosen, alt_lp, alt_ids = [], [], []
        # log_softmax a slice of rows at a time: the whole (T, V) at once was another 400 MB for a 2,048-token
        # prompt over GPT-2's vocabulary, beside the logits
        for a in range(0, len(logits), PROMPT_ROWS):
            logp = torch.log_softmax(logits[a:a + PROMPT_ROWS].float(), dim=-1)
            chosen += logp.gather(1, targets[a:a + PROMPT_ROWS])[:, 0].tolist()
            values, indices = torch.topk(logp, top, dim=-1)  # top 0: empty (rows, 0)
            alt_lp.append(values)
            alt_ids.append(indices)
        alt_lp = torch.cat(alt_lp) if alt_lp else torch.empty(0, top)
        alt_ids = torch.cat(alt_ids) if alt_ids else torch.empty(0, top, dtype=torch.long)
    tok = served.tokenizer
    # the echoed text starts with the first token, whose space a SentencePiece decoder strips there too
    pieces = [token_text(tok, t) if k else tok.decode([t], skip_special_tokens=False) for k, t in enumerate(ids)]
    starts = None if text is None else text_offsets(tok, text, ids, special=special)
    if starts is None:  # the tokens' texts, one after another
        starts = list(itertools.accumulate(map(len, pieces[:-1]), initial=0))
    out = {"tokens": pieces, "token_logprobs": [None], "top_logprobs": [None], "text_offset": starts}
    for i, lp in enumerate(chosen):
        out["token_logprobs"].append(finite(lp))
        alts = list(zip(alt_ids[i].tolist(), alt_lp[i].tolist(), strict=True))
        out["top_logprobs"].append(top_dict(tok, alts, (ids[i + 1], lp)))
    return out


def text_offsets(tokenizer, text: str, ids: list[int], *, special: bool) -> list[int] | None:
    """Where each token of `ids`, the encoding of `text`, starts in `text`, by the tokenizer's own alignment: the
    tokens' texts need not join into the text (a bos the post-processor adds is not in it, an unknown character reads
    "<unk>"), so their lengths summed put later tokens past where they are. A token starts where the text before it
    ends at the latest (trim_offsets leaves a byte-level token's leading space out of its span); one that covers no
    text (a bos, an eos appended) sits there. None where the tokenizer's encoding is not `ids`."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        return None
    encoding = hf.encode(text, add_special_tokens=special)
    if encoding.ids != list(ids):
        return None
    starts, end = [], 0
    for start, stop in encoding.offsets:
        starts.append(min(start, end) if stop > start else end)
        end = max(end, stop)
    return starts
