"""The served model and its swap: `ServedModel` (model, tokenizer, engine) and `ModelHolder`, which hands out
leases on the current model and replaces it atomically on reload.

Every request takes a lease on the model that is current when it starts and keeps it until its last byte is sent, so
a reload never pulls a model from under a request: the old engine is shut down (draining) only once its last lease is
returned, and requests that start after the swap see the new model.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from neurallayers.serve.chat import ChatTemplates
from neurallayers.serve.errors import APIError, bad_request, overloaded, unavailable

log = logging.getLogger("neurallayers.serve")

MODEL_CALLS = 40  # model forwards outside the engine that run at once per model, as anyio's thread limit had them


@dataclass
class Limits:
    """Engine sizes: max_batch sequences decode together, max_queue more may wait; beyond that, 429. max_len: the
    tokens a request may use, prompt and reply (vLLM's max_model_len), which sizes a decoder's KV cache and bounds an
    encoder's inputs; None: the model's context length (a model with less serves its own). compile: decoders (and
    reloads) get generation.fast's compiled one-token step, compiled before the model serves."""

    max_batch: int = 8
    max_queue: int = 32
    shutdown_timeout: float | None = 30.0
    compile: bool = False
    max_len: int | None = None

    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue


@dataclass
class ServedModel:
    """One loaded model. `engine` is None for encoders (they embed in daemon threads, `call`, bounded by `limits`)."""

    name: str
    model: object
    tokenizer: object
    engine: object | None
    limits: Limits
    created: int = field(default_factory=lambda: int(time.time()))
    leases: int = 0
    retired: bool = False
    busy: int = 0  # requests in a forward outside the engine (forward_slot): embeddings, echo's scoring
    sampling_defaults: dict = field(default_factory=dict)  # api.generation_defaults: for fields a request leaves out
    # per event loop (an asyncio.Semaphore binds to the first loop that waits on it: a model served under a second
    # loop, a test client's or a server restarted in the process, failed once requests queued there)
    _slots: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    _calls: dict = field(default_factory=dict)  # future -> its loop: the calls (`call`) in flight
    _call_slots: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    _calls_ended: bool = False

    @property
    def kind(self) -> Literal["decoder", "encoder"]:
        return "decoder" if self.model.config.causal else "encoder"

    @property
    def block_size(self) -> int:
        """The context a request may use: a decoder's engine's (limits.max_len, at most the model's), else the
        model's."""
        if self.engine is not None:
            return int(self.engine.max_len)
        return int(self.model.config.block_size)

    @property
    def max_model_len(self) -> int:
        """Tokens a request may use: the context length; an encoder reads at most its tokenizer's limit of it (a
        sentence-transformers model cuts texts at its max_seq_length), and at most limits.max_len (vLLM's
        --max-model-len bounds an embedding model's inputs too)."""
        if self.engine is not None:
            return self.block_size
        from neurallayers.embeddings import input_limit

        return input_limit(self.tokenizer, min(self.block_size, self.limits.max_len or self.block_size))

    @functools.cached_property
    def chars_per_token(self) -> int | None:
        """params.chars_per_token of the tokenizer, read from its vocabulary on first use (a large vocabulary takes a
        fraction of a second): a text of N characters has at least N / this many tokens; None: no such bound."""
        from neurallayers.serve.params import chars_per_token

        return chars_per_token(self.tokenizer)

    def stats(self) -> dict:
        """Engine statistics (running, waiting, last_batch_size ...); encoders report their requests in flight."""
        if self.engine is not None:
            return dict(self.engine.stats())
        return {"running": min(self.busy, self.limits.max_batch),
                "waiting": max(0, self.busy - self.limits.max_batch), "last_batch_size": 0}

    def start(self) -> None:
        if self.engine is not None:
            self.engine.start()

    def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stops the engine, draining it for `timeout` seconds (default: limits.shutdown_timeout), then ends the
        model calls still running (`call`) with a 503."""
        if self.engine is not None:
            self.engine.shutdown(drain=drain, timeout=self.limits.shutdown_timeout if timeout is None else timeout)
        self.end_calls()

    async def call(self, fn, /, *args):
        """fn(*args), a model forward outside the engine (an encoder's embeddings, echo's prompt scoring), in a daemon
        thread: anyio's worker threads are joined when the process exits, so a forward that never returns (a hung
        device) held the server's exit forever. end_calls() answers the calls still waiting with a 503.

        Raises:
            APIError: 503 once end_calls() has run (shutdown).
        """
        async with _loop_semaphore(self._call_slots, MODEL_CALLS):
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._calls[future] = loop
            if self._calls_ended:  # after adding it: end_calls sets this before it settles the calls it sees
                self._calls.pop(future)
                raise _stopped()

            def run() -> None:
                try:
                    result, error = fn(*args), None
                except BaseException as e:  # handed to the waiting request
                    result, error = None, e
                _settle(loop, future, result, error)

            threading.Thread(target=run, name="neurallayers-model-call", daemon=True).start()
            try:
                return await future
            finally:
                self._calls.pop(future, None)

    def end_calls(self) -> None:
        """Ends the model calls in flight, and refuses new ones, with a 503 (from any thread); a forward still running
        is left to its daemon thread."""
        self._calls_ended = True
        for future, loop in list(self._calls.items()):
            _settle(loop, future, None, _stopped())


def _loop_semaphore(slots: weakref.WeakKeyDictionary, size: int) -> asyncio.Semaphore:
    """The running event loop's semaphore of `size` in `slots`, made on first use."""
    loop = asyncio.get_running_loop()
    if (semaphore := slots.get(loop)) is None:
        semaphore = slots[loop] = asyncio.Semaphore(size)
    return semaphore


def _stopped() -> APIError:
    return unavailable("the server stopped before the request finished; retry")


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result, error: BaseException | None) -> None:
    """Gives `future` its result or error on its loop, from any thread; the first to settle it wins."""

    def settle() -> None:
        if future.done():  # ended by end_calls, or its request was cancelled
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop has closed: nobody waits for it any more
        pass


def build_served(model, tokenizer, name: str, limits: Limits, sampling_defaults: dict | None = None) -> ServedModel:
    """Wraps a loaded model; decoders get an Engine (not started: `start()` it inside the server's lifespan)."""
    engine = None
    if model.config.causal:
        from neurallayers.serve.engine import Engine

        if limits.compile:
            from neurallayers.generation.fast import prepare_for_decode

            prepare_for_decode(model)
        max_len = None if limits.max_len is None else min(limits.max_len, model.config.block_size)
        engine = Engine(model, tokenizer, max_batch=limits.max_batch, max_queue=limits.max_queue, max_len=max_len)
        started = time.perf_counter()
        engine.warm_up()  # compiles the fast step, if there is one
        if limits.compile:
            log.info("compiled the decode step in %.0f s", time.perf_counter() - started)
    if sampling_defaults:
        log.info("%s: the model's generation_config.json sets %s for requests that leave them out", name,
                 ", ".join(f"{k}={v}" for k, v in sampling_defaults.items()))
    return ServedModel(name=name, model=model, tokenizer=tokenizer, engine=engine, limits=limits,
                       sampling_defaults=dict(sampling_defaults or {}))


class Lease:
    """A hold on a ServedModel; `release()` is idempotent (streams release when they end, handlers on error)."""

    def __init__(self, holder: ModelHolder, served: ServedModel) -> None:
        self.holder, self.served, self._held = holder, served, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.holder._release(self.served)


class ModelHolder:
    """The current ServedModel, leases on it, and reloads from under `model_root`."""

    def __init__(self, served: ServedModel, *, model_root: str | Path | None = None,
                 device: str | None = None, dtype=None, templates: ChatTemplates | None = None) -> None:
        self.current = served
        self.templates = templates or ChatTemplates()  # the server's chat template settings, for every model it loads
        self.device, self.dtype = device, dtype
        self.model_root = Path(model_root).resolve() if model_root is not None else None
        self._reload_lock: asyncio.Lock | None = None
        self._retiring: dict[asyncio.Task, ServedModel] = {}
        self._idle: dict[int, asyncio.Event] = {}
        self._cut_timer: threading.Timer | None = None
        self._cut_at: float | None = None  # time.monotonic() when cut_after ends what is left

    def stats(self) -> dict:
        """The current model's stats, with running and waiting summed over the models a reload retired too: their
        requests still decode until they finish."""
        out = self.current.stats()
        for old in list(self._retiring.values()):
            old_stats = old.stats()
            for key in ("running", "waiting"):
                out[key] = out.get(key, 0) + old_stats.get(key, 0)
        return out

    def lease(self) -> Lease:
        served = self.current
        served.leases += 1  # only the event loop thread touches leases
        return Lease(self, served)

    def _release(self, served: ServedModel) -> None:
        served.leases -= 1
        if served.leases == 0 and served.retired and id(served) in self._idle:
            self._idle[id(served)].set()

    def resolve(self, relative: str) -> Path:
        """The model folder `relative` names under model_root; refuses absolute paths and escapes (.., symlinks: the
        folder's own, or one of any file or folder inside it; for a checkpoint, `RUN/checkpoints/step-N`, the same of
        its run folder, whose config and tokenizer it loads with). Links that stay inside the root are fine (a Hugging
        Face cache snapshot links to blobs in the same cache)."""
        if self.model_root is None:
            raise bad_request("reload is off: start the server with --model-root to allow it", param="model",
                              code="reload_disabled")
        if Path(relative).is_absolute() or "\\" in relative or "\x00" in relative:
            raise bad_request(f"model must be a path relative to the model root, got {relative!r}", param="model")
        target = (self.model_root / relative).resolve()
        if not self._inside(target):
            raise bad_request(f"model path {relative!r} leads outside the model root", param="model",
                              code="path_outside_root")
        if not target.is_dir():
            raise APIError(404, f"no model folder {relative!r} under the model root", param="model",
                           code="model_not_found", type="not_found_error")
        from neurallayers.api import model_folder

        # the load is given this same resolved path, so model_folder names the very run folder it reads
        run = model_folder(target)
        if not self._inside(run):  # the root is, or lies inside, the checkpoint's checkpoints/ folder
            raise bad_request(f"model path {relative!r} is a checkpoint of the run {os.path.relpath(run, target)!r}, "
                              "which lies outside the model root (a checkpoint loads with its run's config.yaml and "
                              "tokenizer)", param="model", code="path_outside_root")
        for folder in dict.fromkeys((target, run)):
            if (escape := self._escape(folder)) is not None:
                raise bad_request(f"model path {relative!r}: {os.path.relpath(escape, target)!r} leads outside the "
                                  "model root", param="model", code="path_outside_root")
        return target

    def _inside(self, path: Path) -> bool:
        return path == self.model_root or self.model_root in path.parents

    def _escape(self, folder: Path) -> Path | None:
        """The first path a load reads that resolves outside model_root: the folder's files, and the files of the
        sentence-transformers module folders (1_Pooling/, the others modules.json names); None when there is none.
        Only those: a run's checkpoints/, logs or tracker folders are never read, and may hold many files."""
        folders = [folder, folder / "1_Pooling"]  # read without a modules.json too
        modules = folder / "modules.json"
        try:
            listed = json.loads(modules.read_text()) if modules.is_file() else []
            folders += [folder / m["path"] for m in listed if isinstance(m, dict) and m.get("path")]
        except (OSError, ValueError, TypeError, RecursionError):  # the loader reports a bad modules.json itself
            pass
        paths = folders[1:]  # a module folder may itself be a link out
        for where in folders:
            try:
                entries = list(os.scandir(where))
            except OSError:  # missing or unreadable: the loader cannot read it either
                continue
            # the folder's real subfolders are not read, but for the module folders listed above
            paths += [Path(e.path) for e in entries if where != folder or not e.is_dir(follow_symlinks=False)]
        for path in paths:
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):  # a dangling link or a loop (RuntimeError before Python 3.13)
                continue  # not a file any load reads
            if not self._inside(real):
                return path
        return None

    async def reload(self, relative: str) -> tuple[ServedModel, ServedModel]:
        """Loads the model `relative` names, starts it, swaps it in; returns (new, old). The old one keeps
        serving its leases and is shut down (drained) after the last is returned."""
        from starlette.concurrency import run_in_threadpool

        path = await run_in_threadpool(self.resolve, relative)  # walks the folder: not on the event loop
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            old = self.current

            def load() -> ServedModel:
                from neurallayers.api import generation_defaults
                from neurallayers.api import load as load_model

                model, tokenizer = load_model(path, device=self.device, dtype=self.dtype)
                self.templates.check(tokenizer)  # --chat-template names one of the first model's templates
                name = os.path.normpath(relative).strip("/")  # "a/../b" is served as "b"
                served = build_served(model, tokenizer, name, old.limits, generation_defaults(path))
                served.start()
                return served

            try:
                new = await run_in_threadpool(load)
            except Exception as e:  # whatever a broken folder makes the loader raise, the old model keeps serving
                log.exception("reload of %r failed; still serving %s", relative, old.name)
                # the client names paths relative to the root: the server's own layout stays in its log
                reason = f"{e}".replace(f"{self.model_root}{os.sep}", "").replace(str(self.model_root), ".")
                reason = reason[:500].encode("utf-8", "backslashreplace").decode()  # a file name need not be UTF-8
                raise bad_request(f"cannot load {relative!r}: {type(e).__name__}: {reason}", param="model",
                                  code="model_load_failed") from e
            self.current = new
            old.retired = True
            idle = self._idle[id(old)] = asyncio.Event()
            if old.leases == 0:
                idle.set()
            task = asyncio.create_task(self._retire(old, idle))
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
            log.info("reloaded: %s -> %s", old.name, new.name)
            return new, old

    async def _retire(self, old: ServedModel, idle: asyncio.Event) -> None:
        from starlette.concurrency import run_in_threadpool

        await idle.wait()
        self._idle.pop(id(old), None)
        await run_in_threadpool(old.shutdown, drain=True)

    def cut_after(self, seconds: float | None) -> None:
        """SIGTERM: end what the engines still run `seconds` from now with EngineClosed (a 503, an error event), before
        uvicorn's deadline cancels its handler into a plain-text 500 or a cut stream. Until then they take requests
        as before: the gate refuses new ones, and those already past it (tokenizing) are served."""
        if seconds is None or self._cut_timer is not None:
            return
        models = [self.current, *self._retiring.values()]

        def cut() -> None:
            for served in models:
                served.shutdown(drain=False)

        self._cut_at = time.monotonic() + seconds
        self._cut_timer = threading.Timer(seconds, cut)
        self._cut_timer.daemon = True
        self._cut_timer.start()

    async def close(self) -> None:
        """Server shutdown: drain and stop the current engine and any still retiring, within the drain time
        cut_after started (SIGTERM), else each within limits.shutdown_timeout."""
        from starlette.concurrency import run_in_threadpool

        if self._cut_timer is not None:  # everything finished in time
            self._cut_timer.cancel()

        def left() -> float | None:  # the drain time SIGTERM gave, not a second one of the same length
            return None if self._cut_at is None else max(0.0, self._cut_at - time.monotonic())

        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for _, old in retiring:
            await run_in_threadpool(functools.partial(old.shutdown, drain=True, timeout=left()))
        await run_in_threadpool(functools.partial(self.current.shutdown, drain=True, timeout=left()))


@asynccontextmanager
async def forward_slot(served: ServedModel) -> AsyncIterator[None]:
    """Bounds model work outside the engine (an encoder's embeddings, a decoder's prompt scoring for echo) as the
    engine bounds decoding: max_batch run, max_queue wait, the rest get 429 at once."""
    if served.busy >= served.limits.capacity:
        raise overloaded(1.0)
    slots = _loop_semaphore(served._slots, served.limits.max_batch)
    served.busy += 1
    try:
        async with slots:
            yield
    finally:
        served.busy -= 1
