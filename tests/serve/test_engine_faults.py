"""Faults inside the engine: a model forward that fails (a device error) ends the requests of its step with a server
error, streamed or not, and leaves its traceback in the server's log; one request whose own choice fails (a token
without text, which a model whose vocabulary is padded past its tokenizer's, as Qwen2's, can choose) fails alone, not
the requests decoded beside it; a bug in the engine thread's own loop stops the engine, and then every request it held
must end at once (the queued and the admitted ones too), and /health and new requests must say that it stopped, as
vLLM's /health answers 503 for a dead engine."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from nl_serve_helpers import TEXT, requests_running, serving, wait_for

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig
from neurallayers.models import build_model
from neurallayers.serve.engine import Engine

PADDING = 12  # model rows past the tokenizer's vocabulary


@pytest.fixture(scope="module")
def padded():
    """A model whose vocabulary is padded past its tokenizer's, that tokenizer, and a switch that makes every forward
    of the model fail (a device error)."""
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size + PADDING, block_size=64, n_layer=2, n_head=2, n_embd=32, init_std=0.3)
    model = build_model(cfg).eval()
    failing = {"on": False}

    def device_error(module, args):
        if failing["on"]:
            raise ValueError("device error in /internal/path")

    model.register_forward_pre_hook(device_error)
    return model, tok, failing


@pytest.fixture(scope="module")
def server(padded):
    with serving(padded[:2], model_name="tiny") as srv:
        yield srv


def test_a_request_whose_own_choice_fails_fails_alone(padded, monkeypatch):
    """A request that cannot be prefilled (its _Sequence fails to build) and one whose first decode step fails each
    fail alone: either failed every request prefilled or decoded beside it. (Padded-vocabulary ids, which once made
    them fail, now decode as "": test_padded_vocab_serve.py.)"""
    from neurallayers.serve import _engine_request

    model, tok, _ = padded
    prompt = tok.encode("The")
    config = GenerationConfig(max_new_tokens=8, temperature=0, logit_bias={tok.eos_id: -100})
    alone = Engine(model, tok, max_batch=1)
    alone.start()
    expected = "".join(e.text for e in alone.submit(prompt, config))
    alone.shutdown()

    init, step = _engine_request._Sequence.__init__, _engine_request._Sequence.step

    def failing_init(self, req, **kw):
        if req.config.seed == 11:
            raise ValueError("cannot build this one")
        init(self, req, **kw)

    def failing_step(self, *args, **kw):
        if self.req.config.seed == 22 and self.n >= 1:  # at its first decode step, beside the innocent one
            raise ValueError("cannot choose for this one")
        return step(self, *args, **kw)

    monkeypatch.setattr(_engine_request._Sequence, "__init__", failing_init)
    monkeypatch.setattr(_engine_request._Sequence, "step", failing_step)
    engine = Engine(model, tok, max_batch=3)
    innocent = engine.submit(prompt, config)
    unbuilt, unchosen = (engine.submit(prompt, config.replace(seed=seed)) for seed in (11, 22))
    engine.start()
    try:
        assert "".join(e.text for e in innocent) == expected and innocent.finish_reason == "length"
        for req, why in ((unbuilt, "cannot build"), (unchosen, "cannot choose")):
            with pytest.raises(RuntimeError, match=why):
                list(req)
        # the last event goes out before the engine counts the step's ended requests
        wait_for(lambda: engine.stats()["running"] == 0, what="the rows to be freed")
        stats = engine.stats()
        assert (stats["requests_finished"], stats["requests_failed"]) == (1, 2)
    finally:
        engine.shutdown()


def test_prompt_ids_past_the_tokenizers_vocabulary_are_400(server, padded):
    vocab = padded[1].vocab_size
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": [5, vocab], "max_tokens": 2})
    error = r.json()["error"]
    assert (r.status_code, error["param"], error["code"]) == (400, "prompt", "invalid_token_id")
    assert f"[0, {vocab})" in error["message"]  # the tokenizer's, not the model's rows
    assert httpx.post(f"{server.url}/v1/completions", json={"prompt": [5, 6], "max_tokens": 2}).status_code == 200


def test_logprobs_give_padding_ids_among_the_alternatives_no_text(server, padded):
    # a padded row among the top alternatives: its text is "", as vLLM's tokenizer decodes it; the bias keeps the
    # choices themselves off those rows (logprobs are the model's, before the bias)
    vocab = padded[1].vocab_size
    real = {"logit_bias": {str(i): -100 for i in range(vocab, vocab + PADDING)}, "max_tokens": 3}
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "The", "logprobs": 20, **real})
    assert r.status_code == 200, r.text  # was a 500: the tokenizer refused the id
    lps = r.json()["choices"][0]["logprobs"]
    assert "".join(lps["tokens"]) == r.json()["choices"][0]["text"]
    assert any("" in top for top in lps["top_logprobs"])
    r = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 20, **real})
    assert r.status_code == 200, r.text
    tops = [alt for entry in r.json()["choices"][0]["logprobs"]["content"] for alt in entry["top_logprobs"]]
    assert {"token": "", "bytes": []}.items() <= next(alt for alt in tops if alt["token"] == "").items()


def test_a_model_failure_mid_stream_is_logged_and_answered_as_unstreamed(server, padded, caplog):
    failing = padded[2]
    failing["on"] = True
    try:
        body = {"prompt": "The", "max_tokens": 3}
        plain = httpx.post(f"{server.url}/v1/completions", json=body, timeout=10)
        with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=10) as s:
            events = [line.removeprefix("data: ") for line in s.iter_lines() if line]
    finally:
        failing["on"] = False
    assert plain.status_code == 500 and events[-1] == "[DONE]"
    # the same error object: no internals in either (the stream's said "generation failed: RuntimeError: generation
    # failed: ValueError: device error in /internal/path")
    assert json.loads(events[-2]) == plain.json()
    assert plain.json()["error"]["type"] == "server_error" and "/internal/path" not in events[-2]
    assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=10).status_code == 200
    logged = [r for r in caplog.records if r.name == "neurallayers.serve" and r.exc_info]
    # the stream's failure is in the log too, with its cause (it left nothing there)
    assert len(logged) == 2 and all("device error" in repr(r.exc_info[1].__cause__) for r in logged)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_engine_ends_its_requests_and_health_says_so(padded):
    with serving(padded[:2], model_name="tiny", max_concurrency=2, max_queue=2) as srv:  # an engine of its own
        engine = srv.app.state.holder.current.engine
        assert httpx.get(f"{srv.url}/health").json() == {"status": "ok", "model": "tiny"}

        def bug(*args, **kwargs):
            raise RuntimeError("a bug in the loop")

        # runs after the newcomer left the queue and before its prefill: it was left hanging, its client with it
        engine._drop_cancelled = bug
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 3}, timeout=10)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert requests_running(srv.url) == 0
        assert engine.stats()["requests_failed"] == 1  # ended by the dying loop: it counted none

        health = httpx.get(f"{srv.url}/health", timeout=5)  # was 200 "ok" while every request got 503
        assert (health.status_code, health.json()) == (503, {"status": "error", "model": "tiny"})
        assert httpx.post(f"{srv.url}/ping", timeout=5).status_code == 503

        r = httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                       timeout=5)
        error = r.json()["error"]
        assert (r.status_code, error["type"], error["code"]) == (503, "service_unavailable", "engine_failed")
        assert "retry-after" not in r.headers
        assert "the engine stopped: RuntimeError: a bug in the loop" in error["message"]
        assert "retry" not in error["message"]  # not "shutting down; retry": no retry here can succeed
