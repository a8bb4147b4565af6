"""`create_app`: the FastAPI application that serves one model over an OpenAI-compatible HTTP API.

Middleware, outermost first: metrics (every request, by route and status) -> CORS (only with `cors_origins`) ->
gate (503 while draining, 401 without the API key; /health and /ping stay open) -> the routes.
The engine starts with the server (lifespan) and drains when it stops; `mark_draining()` (the CLI calls it on
SIGTERM) refuses new requests and ends what is still running shutdown_timeout later with a 503, before the server's
own deadline cancels it.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from neurallayers.checks import is_finite, is_int
from neurallayers.serve.middleware import MAX_BODY_BYTES
from neurallayers.serve.state import Limits, ModelHolder, build_served

if TYPE_CHECKING:
    import torch

log = logging.getLogger("neurallayers.serve")


def _fastapi(**kwargs):
    from fastapi import FastAPI

    if "telemetry" in inspect.signature(FastAPI).parameters:
        # newer FastAPI records OpenTelemetry spans by default; we export our own Prometheus metrics
        kwargs["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return FastAPI(**kwargs)


def create_app(model: str | Path | tuple, *, model_name: str | None = None, api_key: str | None = None,
               max_concurrency: int = 8, max_queue: int = 32, cors_origins: list[str] | None = None,
               model_root: str | Path | None = None, shutdown_timeout: float | None = 30.0, device: str | None = None,
               dtype: torch.dtype | None = None, compile: bool = False, allow_pickle: bool = False,
               chat_template: str | None = None, trust_request_chat_template: bool = False,
               max_model_len: int | None = None, max_body_mb: float = MAX_BODY_BYTES / 2**20):
    """The server's ASGI app.

    Args:
        model: a run directory or Hugging Face folder (loaded with `neurallayers.load`), or a (model, tokenizer)
            pair already loaded. Decoder models generate (completions, chat); encoder models embed.
        model_name: the id clients name in `model` (default: the folder's name, or "model" for a pair).
        api_key: when set, every route but /health and /ping needs `Authorization: Bearer <api_key>`.
        max_concurrency: sequences the engine decodes together (its max_batch).
        max_queue: sequences that may wait for a slot; beyond running + waiting, requests get 429 at once.
        cors_origins: origins allowed to call from a browser; CORS is off when None or empty.
        model_root: the folder POST /reload may load models from (relative paths only); reload is off when None.
        shutdown_timeout: seconds the engine may take to drain at shutdown (None: no limit).
        device: where models loaded from a path (and reloads) live: "auto" (cuda, then mps, then cpu), "cpu",
            "cuda", ...; None: cpu.
        dtype: the weights' dtype for models loaded from a path (and reloads), e.g. torch.bfloat16 (fast on CPUs
            with bf16 dot products and on GPUs); None keeps the stored one.
        compile: decoders (and reloads) decode with generation.fast's compiled one-token step, compiled here,
            before the app serves (15-60 s for GPT-2 124M on 2 cores).
        allow_pickle: accept a Hugging Face folder `model` that only has pytorch_model.bin (reloads never do).
        chat_template: the chat routes' template (and /tokenize's): a name of the tokenizer's templates (default,
            tool_use, rag ...) or Jinja text, as vLLM's --chat-template; None: the tokenizer's own.
        trust_request_chat_template: let requests bring their own template (chat_template), as vLLM's flag of that
            name; refused with a 400 otherwise.
        max_model_len: the tokens a request may use, prompt and reply, at most the model's context length (vLLM's
            --max-model-len): the engine's KV cache holds max_concurrency rows of it, so a long-context model's whole
            context may not fit in memory; an encoder's inputs are held to it. None: the model's context length. A
            reload with a shorter context serves its own.
        max_body_mb: the largest request body taken, in MiB; a larger one is refused with 413 before it is read (a
            chunked one as it passes the limit). A body is parsed in a worker thread, so a big one does not stall
            /health, but its JSON does take memory: a few times its size.

    Returns:
        A FastAPI app; serve it with uvicorn (`neurallayers serve` does).

    Raises:
        ValueError: a bad argument (one line), chat_template among them: neither a template name of the tokenizer nor
            Jinja text.
    """
    from neurallayers.serve import errors, routes_extra, routes_openai
    from neurallayers.serve.chat import ChatTemplates
    from neurallayers.serve.metrics import Metrics, MetricsMiddleware
    from neurallayers.serve.middleware import GateMiddleware

    for name, value in (("max_concurrency", max_concurrency), ("max_queue", max_queue)):
        if not is_int(value) or value < (1 if name == "max_concurrency" else 0):
            raise ValueError(f"{name}={value!r}: must be an integer >= {1 if name == 'max_concurrency' else 0}")
    # read only when the server stops
    if shutdown_timeout is not None and not (is_finite(shutdown_timeout) and shutdown_timeout >= 0):
        raise ValueError(f"shutdown_timeout={shutdown_timeout!r}: must be a finite number of seconds >= 0, or None")
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: give a real key, or None to serve without one")
    if not (is_finite(max_body_mb) and max_body_mb > 0) or isinstance(max_body_mb, bool):
        raise ValueError(f"max_body_mb={max_body_mb!r}: must be a number of MiB > 0")
    if model_root is not None and not Path(model_root).is_dir():
        raise FileNotFoundError(f"model_root {model_root} is not a folder")
    if max_model_len is not None and (not is_int(max_model_len) or max_model_len < 2):
        raise ValueError(f"max_model_len={max_model_len!r}: must be an integer >= 2 (a prompt token and a reply's)")
    if isinstance(model, tuple):
        loaded, tokenizer = model
        name = model_name or "model"
        defaults = {}
    else:
        from neurallayers.api import generation_defaults, load

        loaded, tokenizer = load(model, device=device, dtype=dtype, allow_pickle=allow_pickle)
        name = model_name or Path(model).resolve().name
        defaults = generation_defaults(model)
    if max_model_len is not None:
        _check_max_model_len(max_model_len, loaded.config)
    templates = ChatTemplates(chat_template, bool(trust_request_chat_template))
    templates.check(tokenizer)
    limits = Limits(max_batch=max_concurrency, max_queue=max_queue, shutdown_timeout=shutdown_timeout,
                    compile=compile, max_len=max_model_len)
    holder = ModelHolder(build_served(loaded, tokenizer, name, limits, defaults), model_root=model_root, device=device,
                         dtype=dtype, templates=templates)
    draining = {"on": False}

    @asynccontextmanager
    async def lifespan(app):
        holder.current.start()
        log.info("serving %s (%s, context %d)", holder.current.name, holder.current.kind, holder.current.block_size)
        try:
            yield
        finally:
            draining["on"] = True
            await holder.close()

    app = _fastapi(title="NeuralLayers", version=_version(), lifespan=lifespan,
                   description="An OpenAI-compatible API for one NeuralLayers model.")
    metrics = Metrics(holder.stats)
    errors.install(app)
    routes_openai.register(app, holder=holder, metrics=metrics)
    routes_extra.register(app, holder=holder, metrics=metrics, draining=lambda: draining["on"])

    app.add_middleware(GateMiddleware, api_key=api_key, draining=lambda: draining["on"],
                       max_body_bytes=int(max_body_mb * 2**20))
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # any request header: the openai clients send their own (X-Stainless-*), and a preflight that refused one
        # failed every call from the page; the named origins are what CORS guards
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    routes = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)

    app.state.holder = holder
    app.state.metrics = metrics

    def mark_draining() -> None:
        draining["on"] = True
        holder.cut_after(shutdown_timeout)

    app.state.mark_draining = mark_draining
    return app


def _check_max_model_len(max_model_len: int, config) -> None:
    """max_model_len bounds requests within the model's context (as vLLM refuses a longer one)."""
    if max_model_len > config.block_size:
        raise ValueError(f"max_model_len={max_model_len} is more than the model's context length {config.block_size}")


def _version() -> str:
    from neurallayers import __version__

    return __version__
