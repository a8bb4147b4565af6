"""The routes beyond OpenAI's: /health (and vLLM's /ping), /version, /metrics, /tokenize, /detokenize, /predict,
/batch_predict, /reload.

No `from __future__ import annotations` here: the handlers' annotations must be real classes when FastAPI reads
them, and `Request` is imported inside `register` (fastapi stays an optional dependency).
"""

import functools
import json
import time
from typing import Annotated

from neurallayers.embeddings import read_as
from neurallayers.generation import GenerationConfig
from neurallayers.serve import chat as chat_template
from neurallayers.serve import params
from neurallayers.serve.bodies import add_schemas, body, documented
from neurallayers.serve.errors import bad_request
from neurallayers.serve.routes_openai import check_model, embed_texts, usage
from neurallayers.serve.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    Health,
    Prediction,
    PredictRequest,
    ReloadRequest,
    ReloadResponse,
    TokenizeRequest,
    TokenizeResponse,
    Version,
)
from neurallayers.serve.streaming import collect, submit_all

# /tokenize fields that only mean something for messages: with a prompt they are refused, not ignored
CHAT_ONLY = ("add_generation_prompt", "continue_final_message", "chat_template_kwargs", "chat_template", "documents",
             "tools")


def register(app, *, holder, metrics, draining) -> None:
    """Adds the extra routes; `draining()` is True once the server is shutting down."""
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    add_schemas(app, [TokenizeRequest, DetokenizeRequest, PredictRequest, BatchPredictRequest, ReloadRequest])

    @app.get("/health", response_model=Health, tags=["ops"],
             responses={503: {"description": "shutting down, or the engine stopped after an error"}})
    async def health():
        # Cheap on purpose: no engine call, no lock; the event loop answering is the health signal, and an engine
        # thread that died (every request would get 503) makes it 503 too, as vLLM's /health answers a dead engine.
        served = holder.current
        if draining():
            return JSONResponse({"status": "draining", "model": served.name}, status_code=503)
        if served.engine is not None and served.engine.failure is not None:
            return JSONResponse({"status": "error", "model": served.name}, status_code=503)
        return {"status": "ok", "model": served.name}

    @app.get("/ping", response_model=Health, tags=["ops"],
             responses={503: {"description": "shutting down, or the engine stopped after an error"}})
    async def ping():
        """/health under vLLM's other name for it (SageMaker probes GET /ping)."""
        return await health()

    # vLLM answers POST /ping too (it got 405 here); the schema lists the GET alone
    app.add_api_route("/ping", ping, methods=["POST"], include_in_schema=False)

    @app.get("/version", response_model=Version, tags=["ops"])
    async def version():
        """The server's version, as vLLM's /version gives its own."""
        return {"version": app.version}

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/tokenize", response_model=TokenizeResponse, tags=["tokens"], openapi_extra=documented(TokenizeRequest))
    async def tokenize(req: Annotated[TokenizeRequest, Depends(body(TokenizeRequest))]):
        served = holder.current
        check_model(served, req.model)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("give exactly one of prompt or messages", "prompt")
        text = req.prompt
        if req.messages is not None:
            if not req.messages:
                raise bad_request("messages is empty", "messages")
            # the chat route's options and checks, so these are the ids it counts in usage.prompt_tokens
            options = chat_template.template_options(req, served.tokenizer, holder.templates)
            text = await run_in_threadpool(chat_template.render, served.tokenizer, req.messages, **options)
        elif sent := [name for name in CHAT_ONLY if name in req.model_fields_set]:
            raise bad_request(f"{sent[0]} applies to messages, not to a prompt", sent[0])
        # the ids the model is fed: a prompt's with the tokenizer's own specials (an encoder's [CLS] / [SEP], a
        # Llama's bos), a rendered chat's as they are (its template holds them), unless add_special_tokens says
        special = req.add_special_tokens
        if special is None:
            special = req.messages is None or served.kind == "encoder"
        # Every id, even past the context length, as vLLM answers (a client learns how much to cut; the body limit
        # bounds the text). encode_batch, unlike encode, lets go of the GIL while it works, and the response is built
        # here, not by FastAPI's validation on the event loop: both take seconds for megabytes of text.
        ids = (await run_in_threadpool(functools.partial(served.tokenizer.encode_batch, add_special_tokens=special),
                                       [text]))[0]
        strs = served.tokenizer.id_to_token if req.return_token_strs else None
        body = await run_in_threadpool(_tokenize_body, ids, served.max_model_len, strs)
        return Response(body, media_type="application/json")

    @app.post("/detokenize", response_model=DetokenizeResponse, tags=["tokens"],
              openapi_extra=documented(DetokenizeRequest))
    async def detokenize(req: Annotated[DetokenizeRequest, Depends(body(DetokenizeRequest))]):
        served = holder.current
        check_model(served, req.model)
        vocab = served.tokenizer.vocab_size
        if req.tokens and (min(req.tokens) < 0 or max(req.tokens) >= vocab):
            bad = [t for t in req.tokens if not 0 <= t < vocab]
            raise bad_request(f"tokens holds ids outside the tokenizer's vocabulary [0, {vocab}): {bad[:5]}",
                              "tokens", code="invalid_token_id")
        # special tokens kept, as vLLM decodes: a chat template's markers and a bos tokenize back to the same ids
        text = await run_in_threadpool(functools.partial(served.tokenizer.decode, skip_special_tokens=False),
                                       req.tokens)
        return {"prompt": text}

    async def predict_many(prompts: list[str], req, raw: Request, *, param: str = "prompt") -> list[dict]:
        """raw: the HTTP request (a client that leaves cancels its generations); param: the request field that holds
        the prompts, which errors about them name."""
        lease = holder.lease()
        try:
            served = lease.served
            if served.kind == "encoder":
                # refused, as /v1/embeddings refuses it, rather than cut at max_model_len without a word
                vectors, _ = await embed_texts(served, prompts, refuse_longer=True, param=param,
                                               hint=" (POST /v1/embeddings takes truncate_prompt_tokens to cut it)")
                counts = [len(ids) for ids in await run_in_threadpool(
                    functools.partial(served.tokenizer.encode_batch, add_special_tokens=True),
                    read_as(served.model, prompts, prompt=""))]  # lowercased where embed lowercases them
                return [{"embedding": v.tolist(), "usage": usage(c, 0)} for v, c in zip(vectors, counts, strict=True)]
            started = time.perf_counter()
            ids = await params.prompt_ids(served, prompts, param=param)
            params.check_length(served, ids, req.max_tokens, param=param)
            try:
                config = GenerationConfig(max_new_tokens=req.max_tokens, temperature=req.temperature,
                                          top_p=req.top_p, top_k=req.top_k, stop=params.stop_list(req.stop),
                                          seed=req.seed)
            except ValueError as e:
                raise bad_request(str(e).removeprefix("GenerationConfig.")) from None
            requests = submit_all(served, ids, [config], metrics=metrics, param=param)
            results = await collect(requests, metrics=metrics, started=started, gone=raw.is_disconnected)
            return [{"text": res.text, "finish_reason": res.finish_reason,
                     "usage": usage(r.prompt_tokens, r.completion_tokens)}
                    for res, r in zip(results, requests, strict=True)]
        finally:
            lease.release()

    @app.post("/predict", response_model=Prediction, response_model_exclude_none=True, tags=["simple"],
              openapi_extra=documented(PredictRequest))
    async def predict(req: Annotated[PredictRequest, Depends(body(PredictRequest))], raw: Request):
        """One text in; its completion (decoder models, greedy by default) or its embedding (encoders) out."""
        (out,) = await predict_many([req.prompt], req, raw)
        return out

    @app.post("/batch_predict", response_model=BatchPrediction, response_model_exclude_none=True, tags=["simple"],
              openapi_extra=documented(BatchPredictRequest))
    async def batch_predict(req: Annotated[BatchPredictRequest, Depends(body(BatchPredictRequest))], raw: Request):
        """Many texts in, one prediction each (in order) out; they decode together as one batch."""
        return {"predictions": await predict_many(req.prompts, req, raw, param="prompts")}

    @app.post("/reload", response_model=ReloadResponse, tags=["ops"], openapi_extra=documented(ReloadRequest))
    async def reload(req: Annotated[ReloadRequest, Depends(body(ReloadRequest))]):
        """Swap in the model folder `model` (relative to --model-root). Requests in flight finish on the old one."""
        new, old = await holder.reload(req.model)
        return {"model": new.name, "previous": old.name}


def _tokenize_body(ids: list[int], max_model_len: int, token_str=None, slice_size: int = 65536) -> bytes:
    """The /tokenize response as JSON, written a slice at a time so the GIL passes to the event loop in between;
    token_str: id -> its token string, for vLLM's token_strs (left out when None)."""
    def joined(values: list) -> str:
        return ",".join(json.dumps(values[i:i + slice_size], separators=(",", ":"))[1:-1]
                        for i in range(0, len(values), slice_size))

    strs = "" if token_str is None else f',"token_strs":[{joined([token_str(i) for i in ids])}]'
    return f'{{"tokens":[{joined(ids)}],"count":{len(ids)},"max_model_len":{max_model_len}{strs}}}'.encode()
