"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models, /v1/embeddings.

No `from __future__ import annotations` here: the handlers' annotations must be real classes when FastAPI reads
them, and `Request` is imported inside `register` (fastapi stays an optional dependency).
"""

import base64
import functools
import json
import time
import uuid
from typing import Annotated

from neurallayers.serve import chat as chat_template
from neurallayers.serve import params
from neurallayers.serve.bodies import add_schemas, body, documented
from neurallayers.serve.errors import APIError, bad_request
from neurallayers.serve.schemas import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)
from neurallayers.serve.state import ServedModel, forward_slot
from neurallayers.serve.streaming import (
    SSE_DONE,
    chat_logprobs,
    collect,
    completion_logprobs,
    merged,
    now,
    prompt_logprobs,
    sse,
    sse_error,
    submit_all,
)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context


def check_model(served: ServedModel, name: str | None, *, need: str | None = None) -> None:
    """404 for another model's name; 400 when the route needs a decoder (generation) or an encoder (embeddings).
    An empty name, as null, is the served model (vLLM's rule: clients that leave the name blank send "")."""
    if name and name != served.name:
        raise APIError(404, f"model {name!r} is not served here; this server serves {served.name!r}",
                       type="not_found_error", param="model", code="model_not_found")
    if need == "decoder" and served.kind != "decoder":
        raise bad_request(f"{served.name!r} is an encoder model: it embeds (POST /v1/embeddings) and does not "
                          "generate text", "model", code="wrong_model_kind")
    if need == "encoder" and served.kind != "encoder":
        raise bad_request(f"{served.name!r} is a decoder (generative) model; embeddings need an encoder model",
                          "model", code="wrong_model_kind")


def model_card(served: ServedModel) -> dict:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "neurallayers",
            "max_model_len": served.max_model_len, "kind": served.kind}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def streaming_response(chunks, lease):
    """An SSE response over `chunks` (an async iterator of strings) that returns `lease` when it ends."""
    from fastapi.responses import StreamingResponse

    async def body():
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            lease.release()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def register(app, *, holder, metrics) -> None:
    """Adds the OpenAI routes to `app`; `holder` is the ModelHolder, `metrics` the app's Metrics."""
    from fastapi import Depends, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    add_schemas(app, [CompletionRequest, ChatRequest, EmbeddingRequest])

    @app.get("/v1/models", response_model=ModelList, tags=["openai"])
    async def models() -> dict:
        return {"object": "list", "data": [model_card(holder.current)]}

    # the openai client's models.retrieve(id); `path`: a --model-name may hold slashes ("org/name")
    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, tags=["openai"],
             responses={404: {"description": "another model's id"}})
    async def model(model_id: str) -> dict:
        served = holder.current
        if not model_id:  # GET /v1/models/: no id names no card (a body's blank model is the served one)
            raise APIError(404, "give a model id: GET /v1/models/{id}", type="not_found_error", param="model",
                           code="model_not_found")
        check_model(served, model_id)
        return model_card(served)

    @app.post("/v1/completions", response_model=CompletionResponse, tags=["openai"],
              responses={400: {"description": "invalid request"}, 429: {"description": "server at capacity"}},
              openapi_extra=documented(CompletionRequest))
    async def completions(req: Annotated[CompletionRequest, Depends(body(CompletionRequest))], raw: Request):
        started = time.perf_counter()
        lease = holder.lease()
        try:
            served = lease.served
            check_model(served, req.model, need="decoder")
            params.refuse_unsupported(req)
            max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
            prompts = await params.prompt_ids(served, req.prompt, special=req.add_special_tokens,
                                              truncate=req.truncate_prompt_tokens, side=req.truncation_side,
                                              reserve=max_tokens)
            if max_tokens == 0 and not req.echo:
                raise bad_request("max_tokens=0 generates nothing: it is taken only with echo (the prompt alone, "
                                  "with its logprobs); give at least 1", "max_tokens")
            if max_tokens == 0 and req.min_tokens:
                raise bad_request(f"min_tokens={req.min_tokens} with max_tokens=0: nothing is generated",
                                  "min_tokens")
            params.check_length(served, prompts, max_tokens)
            # max_tokens 0 (echo alone) is checked as vLLM checks it, with one token to generate
            configs = await run_in_threadpool(functools.partial(
                params.generation_configs, served, req, max_tokens=max(max_tokens, 1), logprobs=req.logprobs,
                count=req.n))
            echo_lps = None
            if req.echo and req.logprobs is not None:
                sent = echo_sources(req.prompt, len(prompts))  # a text prompt's offsets index it as sent
                async with forward_slot(served):  # a forward outside the engine: bounded (429) as the engine is
                    echo_lps = [await served.call(functools.partial(prompt_logprobs, text=text,
                                                                    special=req.add_special_tokens), served, ids,
                                                  req.logprobs) for ids, text in zip(prompts, sent, strict=True)]
            meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": now(), "model": served.name}
            echoes = echo_texts(served.tokenizer, req.prompt, prompts) if req.echo else [""] * len(prompts)
            n_prompt = sum(len(ids) for ids in prompts)
            if max_tokens == 0:
                choices = [{"index": i, "text": echoes[p], "finish_reason": "length", "stop_reason": None,
                            "logprobs": None if echo_lps is None else {k: list(v) for k, v in echo_lps[p].items()},
                            **token_ids(req, prompts[p], [])}
                           for i, p in enumerate(p for p in range(len(prompts)) for _ in range(req.n))]
                body = {**meta, "object": "text_completion", "choices": choices, "usage": usage(n_prompt, 0)}
                metrics.prompt_tokens.inc(n_prompt * req.n)  # as submit_all counts a generation's: each choice's
                if not req.stream:
                    return body
                response, lease = streaming_response(_echo_chunks(body, req, prompts), lease), None
                return response
            requests = submit_all(served, prompts, configs, metrics=metrics, text=params.text_options(req))
            if req.stream:
                chunks = _completion_chunks(requests, req, meta, echoes, echo_lps, n_prompt, served, metrics, started,
                                            prompts)
                response, lease = streaming_response(chunks, lease), None
                return response
            results = await collect(requests, metrics=metrics, started=started, gone=raw.is_disconnected)
            choices = []
            for i, res in enumerate(results):
                p = i // req.n
                lps = None
                if req.logprobs is not None:
                    prompt_part = None if echo_lps is None else {k: list(v) for k, v in echo_lps[p].items()}
                    lps = completion_logprobs(served.tokenizer, res.logprobs + stop_token(requests[i]),
                                              offset=len(echoes[p]), prompt=prompt_part)
                choices.append({"index": i, "text": echoes[p] + res.text, "logprobs": lps,
                                "finish_reason": res.finish_reason, "stop_reason": requests[i].stop_reason,
                                **token_ids(req, prompts[p], requests[i].token_ids)})
            n_gen = sum(r.completion_tokens for r in requests)
            return {**meta, "object": "text_completion", "choices": choices, "usage": usage(n_prompt, n_gen)}
        finally:
            if lease is not None:
                lease.release()

    async def _echo_chunks(body: dict, req, prompts: list[list[int]]):
        """The stream of an echo without generation: each choice's prompt in one chunk that ends it, then the usage
        when asked for."""
        include_usage, continuous = _usage_options(req)
        base = {k: v for k, v in body.items() if k not in ("choices", "usage")}
        for c in body["choices"]:
            extra = {"usage": usage(len(prompts[c["index"] // req.n]), 0) if continuous else None} \
                if include_usage else {}
            yield sse({**base, "choices": [c], **extra})
        if include_usage:
            yield sse({**base, "choices": [], "usage": body["usage"]})
        yield SSE_DONE

    def _completion_chunks(requests, req, meta, echoes, echo_lps, n_prompt, served, metrics, started, prompts):
        head = []
        ids = ChunkIds(requests, req.return_token_ids)
        if req.echo:
            for i in range(len(requests)):
                p = i // req.n
                lps = None if echo_lps is None else {k: list(v) for k, v in echo_lps[p].items()}
                head.append(({"index": i, "text": echoes[p], "logprobs": lps, "finish_reason": None,
                              "stop_reason": None, **ids.first(i, prompts[p], echo=True)}, {}))
        offsets = [len(echoes[i // req.n]) for i in range(len(requests))]

        def choice(i: int, ev) -> dict:
            lps = None
            tokens = [ev.logprob] if ev.logprob is not None else []
            if ev.finish_reason is not None:
                tokens += stop_token(requests[i])
            if req.logprobs is not None and tokens:
                lps = completion_logprobs(served.tokenizer, tokens, offset=offsets[i])
                # a token's offset follows the tokens before it, as in the non-streaming answer: an event's text
                # lags its token while it could still be a stop string's start
                offsets[i] += sum(map(len, lps["tokens"]))
            # vLLM's completion chunks all carry stop_reason: null until the one that ends the choice; with
            # return_token_ids a choice's first chunk also its prompt's ids, and each its new token ids
            return {"index": i, "text": ev.text, "logprobs": lps, "finish_reason": ev.finish_reason,
                    "stop_reason": None if ev.finish_reason is None else requests[i].stop_reason,
                    **ids.first(i, prompts[i // req.n]), **ids.delta(i, ev)}

        prompt_lens = [len(p) for p in prompts for _ in range(req.n)]
        return _sse_chunks(requests, req, {**meta, "object": "text_completion"}, head, choice, n_prompt, prompt_lens,
                           metrics, started)

    @app.post("/v1/chat/completions", response_model=ChatResponse, tags=["openai"],
              responses={400: {"description": "invalid request"}, 429: {"description": "server at capacity"}},
              openapi_extra=documented(ChatRequest))
    async def chat_completions(req: Annotated[ChatRequest, Depends(body(ChatRequest))], raw: Request):
        started = time.perf_counter()
        lease = holder.lease()
        try:
            served = lease.served
            check_model(served, req.model, need="decoder")
            params.refuse_unsupported(req)
            if req.top_logprobs is not None and not req.logprobs:
                raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
            options = chat_template.template_options(req, served.tokenizer, holder.templates)
            text = await run_in_threadpool(chat_template.render, served.tokenizer, req.messages, **options)
            if not text:
                raise bad_request("the chat template rendered these messages as an empty prompt", "messages")
            name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            prompts = await params.prompt_ids(served, text, param="messages", special=req.add_special_tokens,
                                              truncate=req.truncate_prompt_tokens, side=req.truncation_side,
                                              reserve=req.max_completion_tokens or req.max_tokens or 0,
                                              reserve_param=name)
            max_tokens = req.max_completion_tokens or req.max_tokens or max(1, served.block_size - len(prompts[0]))
            params.check_length(served, prompts, max_tokens, param="messages", max_param=name)
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
            configs = await run_in_threadpool(functools.partial(
                params.generation_configs, served, req, max_tokens=max_tokens, logprobs=logprobs, count=req.n,
                extra_stops=chat_template.reply_stops(options)))
            requests = submit_all(served, prompts, configs, metrics=metrics, param="messages",
                                  text=params.text_options(req))
            meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": now(), "model": served.name}
            n_prompt = len(prompts[0])
            role = chat_template.reply_role(req.messages, add_generation_prompt=options["add_generation_prompt"])
            echo = chat_template.echo_text(req.messages, role) if req.echo else ""
            if req.stream:
                chunks = _chat_chunks(requests, req, meta, prompts[0], served, metrics, started, echo, role)
                response, lease = streaming_response(chunks, lease), None
                return response
            results = await collect(requests, metrics=metrics, started=started, gone=raw.is_disconnected)
            # vLLM's return_token_ids: each choice's ids in it, the prompt's (one for all) beside usage
            choices = [{"index": i, "message": {"role": role, "content": echo + res.text},
                        "logprobs": chat_logprobs(served.tokenizer, res.logprobs) if req.logprobs else None,
                        "finish_reason": res.finish_reason, "stop_reason": requests[i].stop_reason,
                        **({"token_ids": list(requests[i].token_ids)} if req.return_token_ids else {})}
                       for i, res in enumerate(results)]
            n_gen = sum(r.completion_tokens for r in requests)
            return {**meta, "object": "chat.completion", "choices": choices, "usage": usage(n_prompt, n_gen),
                    **({"prompt_token_ids": prompts[0]} if req.return_token_ids else {})}
        finally:
            if lease is not None:
                lease.release()

    def _chat_chunks(requests, req, meta, prompt, served, metrics, started, echo, role):
        # the first delta of each choice names the role (its chunk carries the prompt's ids with return_token_ids,
        # as vLLM's does); then, as vLLM sends it, the echoed text
        n_prompt = len(prompt)
        ids = ChunkIds(requests, req.return_token_ids)
        top = {"prompt_token_ids": prompt} if req.return_token_ids else {}
        head = [({"index": i, "delta": {"role": role, "content": ""}, "logprobs": None, "finish_reason": None}, top)
                for i in range(len(requests))]
        if echo:
            head += [({"index": i, "delta": {"content": echo}, "logprobs": None, "finish_reason": None}, {})
                     for i in range(len(requests))]

        def choice(i: int, ev) -> dict:
            lps = chat_logprobs(served.tokenizer, [ev.logprob]) if req.logprobs and ev.logprob else None
            delta = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
            out = {"index": i, "delta": delta, "logprobs": lps, "finish_reason": ev.finish_reason}
            if ev.finish_reason is not None:  # vLLM's chat chunks carry stop_reason on the last one only
                out["stop_reason"] = requests[i].stop_reason
            return {**out, **ids.delta(i, ev)}

        return _sse_chunks(requests, req, {**meta, "object": "chat.completion.chunk"}, head, choice, n_prompt,
                           [n_prompt] * len(requests), metrics, started)

    async def _sse_chunks(requests, req, base, head, choice, n_prompt, prompt_lens, metrics, started):
        """OpenAI SSE chunks: the `head` choices, then choice(i, event) for each event that says something, the
        usage chunk when asked for, and [DONE]. With vLLM's continuous_usage_stats each chunk carries its choice's
        usage so far (prompt_lens: each choice's prompt tokens): the tokens of the events read, then, on the last
        chunk, all the choice's tokens (a stop token's and a stop string's too, as the final usage counts them)."""
        include_usage, continuous = _usage_options(req)
        made = [0] * len(requests)

        def extra(i: int) -> dict:
            if not include_usage:
                return {}
            return {"usage": usage(prompt_lens[i], made[i]) if continuous else None}

        try:
            for c, top in head:
                yield sse({**base, "choices": [c], **top, **extra(c["index"])})
            async for i, ev in merged(requests, metrics=metrics, started=started):
                made[i] = requests[i].completion_tokens if ev.finish_reason is not None \
                    else made[i] + (ev.token_id is not None)
                if not ev.text and ev.logprob is None and ev.finish_reason is None \
                        and not (req.return_token_ids and ev.token_id is not None):
                    continue  # held-back text (half a character, a possible stop string): nothing to say yet
                yield sse({**base, "choices": [choice(i, ev)], **extra(i)})
            if include_usage:
                yield sse({**base, "choices": [],
                           "usage": usage(n_prompt, sum(r.completion_tokens for r in requests))})
        except Exception as e:  # the status is sent already: report the error in the stream
            yield sse_error(e)
        yield SSE_DONE

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["openai"],
              responses={400: {"description": "invalid request, or a decoder model"}},
              openapi_extra=documented(EmbeddingRequest))
    async def embeddings(req: Annotated[EmbeddingRequest, Depends(body(EmbeddingRequest))]):
        lease = holder.lease()
        try:
            served = lease.served
            check_model(served, req.model, need="encoder")
            texts = embedding_texts(req.input)
            width = served.model.config.n_embd
            if req.dimensions is not None and req.dimensions != width:
                raise bad_request(f"dimensions={req.dimensions}: this model's embeddings have {width} dimensions",
                                  "dimensions")
            keep = embedding_truncation(served, req.truncate_prompt_tokens, special=req.add_special_tokens)
            # vLLM's rule: its tokenizer cuts (keeping [CLS] / [SEP]), unless truncation_side "left" is sent, where
            # it slices the encoded ids (the last k, [CLS] gone)
            vectors, n_tokens = await embed_texts(served, texts, max_length=keep, normalize=req.normalize,
                                                  truncation_side=req.truncation_side or "left",
                                                  cut_special_tokens=req.truncation_side == "left",
                                                  add_special_tokens=req.add_special_tokens,
                                                  refuse_longer=keep is None)
            # built here, not by FastAPI on the event loop: 2048 x 768 floats are 31 MB of JSON, a second of work
            content = await run_in_threadpool(embedding_body, vectors, req.encoding_format, served.name, n_tokens)
            return Response(content, media_type="application/json")
        finally:
            lease.release()


def embedding_body(vectors, encoding_format: str, model: str, n_tokens: int) -> bytes:
    """The /v1/embeddings response as JSON (FastAPI's separators), one vector per json.dumps call: the GIL passes
    to the event loop between them, where one call over the whole list would hold it until the end."""
    def value(v) -> str:
        if encoding_format == "base64":
            return json.dumps(base64.b64encode(v.numpy().astype("<f4").tobytes()).decode())
        return json.dumps(v.tolist(), allow_nan=False, separators=(",", ":"))

    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{value(v)}}}' for i, v in enumerate(vectors))
    usage = {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens}
    return (f'{{"object":"list","data":[{data}],"model":{json.dumps(model, ensure_ascii=False)},'
            f'"usage":{json.dumps(usage, separators=(",", ":"))}}}').encode()


def token_ids(req, prompt: list[int], generated: list[int]) -> dict:
    """A completion choice's vLLM return_token_ids fields (none unless asked for)."""
    return {"prompt_token_ids": prompt, "token_ids": list(generated)} if req.return_token_ids else {}


class ChunkIds:
    """vLLM's return_token_ids in a stream: a choice's first chunk carries its prompt's ids (completions), and each
    chunk the ids of the tokens it reports; the last chunk the rest (a stop token, a stop string's tokens, which
    send no event of their own), so a choice's chunks join into the token_ids the unstreamed answer gives."""

    def __init__(self, requests: list, on: bool) -> None:
        self.requests, self.on = requests, on
        self.sent = [0] * len(requests)
        self.started: set[int] = set()

    def first(self, i: int, prompt: list[int], *, echo: bool = False) -> dict:
        """The prompt's ids on choice i's first chunk; `echo`: that chunk is the echoed prompt's, with no new ids."""
        if not self.on or i in self.started:
            return {}
        self.started.add(i)
        return {"prompt_token_ids": prompt, **({"token_ids": []} if echo else {})}

    def delta(self, i: int, ev) -> dict:
        if not self.on:
            return {}
        if ev.finish_reason is not None:  # the request has ended: its list is whole
            new = self.requests[i].token_ids[self.sent[i]:]
        else:
            new = [] if ev.token_id is None else [ev.token_id]
        self.sent[i] += len(new)
        return {"token_ids": list(new)}


def _usage_options(req) -> tuple[bool, bool]:
    """(a usage chunk at the end, usage in every chunk: vLLM's continuous_usage_stats) for a streamed request."""
    options = req.stream_options
    return (False, False) if options is None else (options.usage, options.continuous_usage_stats)


def stop_token(request) -> list:
    """The log-probabilities of the stop token (eos) that ended `request`, as a list of none or one: OpenAI's and
    vLLM's completions list that token last (an eval harness reads a scored continuation as all but the last token),
    though its text is not returned."""
    return [] if request.stop_logprob is None else [request.stop_logprob]


def echo_texts(tokenizer, prompt, prompts: list[list[int]]) -> list[str]:
    """What `echo` puts before each prompt's completion: a text prompt as the client sent it (its tokens need not
    decode back to it: an unknown character is <unk>, a SentencePiece leading space is dropped), as vLLM echoes it;
    a token-id prompt decoded with its special tokens (an eval harness's leading end-of-text), as its logprobs list
    them: dropping them left the text shorter than the tokens' text_offset said."""
    return [tokenizer.decode(ids, skip_special_tokens=False) if text is None else text
            for text, ids in zip(echo_sources(prompt, len(prompts)), prompts, strict=True)]


def echo_sources(prompt, count: int) -> list[str | None]:
    """Each prompt's text as sent, which echo returns as is (None for a token-id prompt, echoed decoded)."""
    if isinstance(prompt, str):
        return [prompt]
    return list(prompt) if isinstance(prompt[0], str) else [None] * count


def embedding_texts(value) -> list[str]:
    """The strings of an embeddings `input`; token-id inputs are refused (encoders read text)."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise bad_request("input is empty: give a string or a list of strings", "input")
    if not all(isinstance(t, str) for t in texts):
        # clients that count tokens first send ids of another vocabulary (LangChain: tiktoken's), which would embed
        # garbage here
        raise bad_request("input must be text here (a string or a list of strings), not token ids (LangChain: "
                          "OpenAIEmbeddings(check_embedding_ctx_length=False) sends text)", "input")
    for i, t in enumerate(texts):
        if not t.strip():
            raise bad_request(f"input[{i}] is empty or whitespace: give some text", "input")
    if len(texts) > 2048:
        raise bad_request(f"input holds {len(texts)} texts; at most 2048 per request", "input")
    return texts


def embedding_truncation(served: ServedModel, truncate: int | None, *, special: bool = True) -> int | None:
    """The tokens an input keeps under vLLM's truncate_prompt_tokens (-1: max_model_len; None: None), checked: at
    most max_model_len, as vLLM refuses more, and room for a text token beside the special tokens (when added)."""
    if truncate is None:
        return None
    limit = served.max_model_len
    keep = limit if truncate == -1 else truncate
    if keep > limit:
        raise bad_request(f"truncate_prompt_tokens={keep} is over the model's input limit (max_model_len) {limit}",
                          "truncate_prompt_tokens")
    least = max(2, served.tokenizer.hf.num_special_tokens_to_add(False) + 1) if special else 2
    if keep < least:
        raise bad_request(f"truncate_prompt_tokens={keep} leaves no room for the text beside the special tokens: "
                          f"give at least {least}", "truncate_prompt_tokens")
    return keep


async def embed_texts(served: ServedModel, texts: list[str], *, max_length: int | None = None,
                      normalize: bool | None = None, truncation_side: str = "right", add_special_tokens: bool = True,
                      cut_special_tokens: bool = False, refuse_longer: bool = False, param: str = "input",
                      hint: str | None = None):
    """(N, C) float32 CPU embeddings and the number of tokens read, computed in a worker thread; max_length:
    tokens each text keeps (default max_model_len), cut on `truncation_side` (cut_special_tokens: as ids, see
    embed); normalize: None, the model's own.

    refuse_longer: a text with more tokens than max_model_len is a 400 naming both numbers and the request field
    `param` that holds the texts, as vLLM (without truncate_prompt_tokens) and OpenAI answer it, instead of being
    cut silently; hint: how the route's client may cut it instead (default: /v1/embeddings' truncate_prompt_tokens)."""
    from neurallayers.embeddings import embed, read_as, token_counts, tokenize_batch

    limit = served.max_model_len
    max_length = limit if max_length is None else max_length

    def work():
        # no sentence-transformers prompt, as vLLM: a client writes "query: ..." itself, as the model card says
        read = read_as(served.model, texts, prompt="")  # lowercased where embed lowercases: the tokens it read
        if refuse_longer:
            counts = token_counts(served.tokenizer, read, add_special_tokens=add_special_tokens)
            if (i := next((i for i, n in enumerate(counts) if n > limit), None)) is not None:
                where = param if len(texts) == 1 else f"{param}[{i}]"
                how = hint or f", or send truncate_prompt_tokens (-1: keep the last {limit})"
                # vLLM's wording, which clients (LiteLLM, LangChain) recognise as a context-length error
                raise bad_request(f"This model's maximum context length is {limit} tokens. However, you requested "
                                  f"{counts[i]} tokens in {where} for embedding generation. Please reduce the length "
                                  f"of the input{how}.", param, code="context_length_exceeded")
        vectors = embed(served.model, served.tokenizer, texts, max_length=max_length, normalize=normalize,
                        truncation_side=truncation_side, add_special_tokens=add_special_tokens,
                        cut_special_tokens=cut_special_tokens, prompt="").cpu()
        n_tokens = int(tokenize_batch(served.tokenizer, read, max_length=max_length,
                                      add_special_tokens=add_special_tokens)["attention_mask"].sum())
        return vectors, n_tokens

    async with forward_slot(served):
        return await served.call(work)
