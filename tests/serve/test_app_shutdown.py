"""Stopping a server under load (RELIABILITY.md item 20): what clients in flight see when SIGTERM's drain runs out
of time, and that the server exits even when a model step never returns."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest
from nl_serve_helpers import (
    ServerThread,
    free_port,
    requests_running,
    start_cli_server,
    wait_for,
    wait_healthy,
    write_run_dir,
)

import neurallayers
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model


def test_requests_still_running_when_the_shutdown_timeout_ends_get_503_not_a_bare_500(tmp_path):
    run_dir = write_run_dir(tmp_path / "long", block_size=512)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_cli_server(run_dir, port, "--max-concurrency", "2", "--shutdown-timeout", "0")
    try:
        wait_healthy(url, proc)
        no_eos = {str(Tokenizer.load(run_dir).eos_id): -100}  # both requests would run all 500 tokens
        body = {"prompt": "The", "max_tokens": 500, "temperature": 0, "logit_bias": no_eos}
        other: dict = {}
        waiter = threading.Thread(
            target=lambda: other.setdefault("r", httpx.post(f"{url}/v1/completions", json=body, timeout=120))
        )
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120) as s:
            lines = s.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            waiter.start()
            wait_for(lambda: "r" in other or requests_running(url) == 2, what="both requests in flight")
            proc.send_signal(signal.SIGTERM)  # --shutdown-timeout 0: neither may finish
            rest = [line for line in lines if line.startswith("data: ")]
        waiter.join(120)
        # the stream ends cleanly, with an OpenAI error event and [DONE], not a cut chunked body
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["type"] == "service_unavailable", error
        # the non-streaming request gets the OpenAI error shape with 503, not a plain-text 500 the client retries
        r = other["r"]
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert r.json()["error"]["type"] == "service_unavailable"
        assert proc.wait(60) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _encoder():
    tok = Tokenizer.train_char(["the quick brown fox"])
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                                                     n_embd=16)
    return build_model(cfg).eval(), tok


# a request whose model forward hangs on each path: the engine's decode step, echo's prompt scoring and an encoder's
# embeddings (those two run outside the engine)
HUNG = [("/v1/completions", {"prompt": "The", "max_tokens": 5}),
        ("/v1/completions", {"prompt": "The", "max_tokens": 0, "echo": True, "logprobs": 1}),
        ("/v1/embeddings", {"input": "the fox"})]


@pytest.mark.parametrize("route, body", HUNG, ids=["engine", "echo-logprobs", "embeddings"])
def test_a_forward_that_never_returns_is_given_up_after_the_shutdown_timeout(tmp_path, monkeypatch, route, body):
    """A model forward that hangs (a stuck device, a deadlocked kernel) cannot be interrupted: the server ends the
    requests it holds with a 503 at the shutdown timeout, stops waiting for the forward a moment later, and exits;
    the forward is left in a daemon thread, which Python does not wait for at exit (it joins the others)."""
    from neurallayers.serve import engine as engine_module
    from neurallayers.serve.app import create_app

    # a short wait for the hung step (raising=False: an engine without the constant waited for it for ever)
    monkeypatch.setattr(engine_module, "STOP_GRACE_S", 0.2, raising=False)
    model, tok = _encoder() if route == "/v1/embeddings" else neurallayers.load(write_run_dir(tmp_path / "hung"))
    release, threads = threading.Event(), []

    def hang(module, args):
        threads.append(threading.current_thread())
        release.wait(60)

    model.register_forward_pre_hook(hang)
    srv = ServerThread(create_app((model, tok), model_name="tiny", shutdown_timeout=0.3))
    out: dict = {}
    try:
        srv.__enter__()
        client = threading.Thread(target=lambda: out.setdefault("r", httpx.post(f"{srv.url}{route}", json=body,
                                                                                timeout=60)))
        client.start()
        wait_for(lambda: threads, what="the forward to start")
        srv.app.state.mark_draining()  # what SIGTERM does (cli/serve.py), then uvicorn's own exit
        srv.server.should_exit = True
        srv.thread.join(5)  # the ServerThread's uvicorn would cancel a handler still running after 10 s
        assert not srv.thread.is_alive(), "the server still waits for the hung forward"
        client.join(10)
        r = out["r"]
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["type"] == "service_unavailable" and "retry" in error["message"]
        assert all(t.daemon for t in threads), "a hung forward in a non-daemon thread holds the process's exit"
    finally:
        release.set()  # the hung forward returns and its thread ends
        srv.__exit__(None, None, None)


def test_model_calls_queue_under_a_second_event_loop():
    """The bound on model calls (and on encoder requests) was one asyncio.Semaphore, bound to the first event loop
    that waited on it: the same model under a later loop (a test client's, a server restarted in the process) failed
    every queued call with "bound to a different event loop"."""
    import asyncio
    import time

    from neurallayers.serve import state

    served = state.ServedModel(name="m", model=None, tokenizer=None, engine=None, limits=state.Limits(max_batch=1))

    def slow():
        time.sleep(0.002)
        return 1

    async def many():
        async def embed_like():
            async with state.forward_slot(served):
                return await served.call(slow)

        calls = [served.call(slow) for _ in range(state.MODEL_CALLS + 2)] + [embed_like() for _ in range(2)]
        return await asyncio.gather(*calls, return_exceptions=True)

    for _ in range(2):  # two loops, one after the other
        out = asyncio.run(many())
        assert out == [1] * len(out), [repr(e) for e in out if isinstance(e, BaseException)][:1]
