"""Bad input and faults against a real server on 127.0.0.1 (RELIABILITY.md items 12-19, 21, 22), with raw httpx:
every error has the OpenAI shape, validation is 400 with `param` set (never 5xx), overload is 429 with Retry-After
at once, and after every bad request a good one still gets 200."""

from __future__ import annotations

import gzip
import json
import threading

import httpx
import pytest
from nl_serve_helpers import (
    Gate,
    assert_ok_after,
    request_count,
    serving,
    slowest_health_while,
    wait_for,
    write_run_dir,
)

import neurallayers

BLOCK = 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("errors") / "tiny", block_size=BLOCK)


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(run_dir, max_concurrency=2, max_queue=4) as srv:
        yield srv


def assert_error(r: httpx.Response, status: int, param: str | None = "unset") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "unset":
        assert err["param"] == param, err
    return err


COMPLETION_CASES = [
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),  # -1 is vLLM's "every token", as 0
    ({"min_p": 1.01}, "min_p"),
    ({"n": 0}, "n"),
    ({"n": 10_000}, "n"),
    ({"n": 8}, "n"),  # 8 choices > max_concurrency + max_queue: can never be served at once
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"stop": ""}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"stop": ["a"] * 17}, "stop"),
    ({"prompt": [99999]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"logprobs": 21}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 500}}, "logit_bias.1"),
    ({"seed": -(2**63) - 1}, "seed"),  # vLLM's range: 64-bit signed (-1: no seed)
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"echo": "no"}, "echo"),
    ({"temprature": 0.5}, "temprature"),
    ({"best_of": 2}, "best_of"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
]


@pytest.mark.parametrize("change, param", COMPLETION_CASES, ids=[json.dumps(c)[:40] for c, _ in COMPLETION_CASES])
def test_bad_completion_fields_are_400_naming_the_field(server, change, param):
    body = {"prompt": "The", "max_tokens": 4, **change}
    assert_error(httpx.post(f"{server.url}/v1/completions", json=body), 400, param)
    assert_ok_after(server.url)


CHAT_CASES = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "url": "x"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}], "extra": 1}, "extra"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"max_completion_tokens": 500}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x" * 200}]}, "messages"),
    ({"temperature": float("nan")}, "temperature"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream: true, as OpenAI refuses it
]


@pytest.mark.parametrize("change, param", CHAT_CASES, ids=[str(i) for i in range(len(CHAT_CASES))])
def test_bad_chat_fields_are_400_naming_the_field(server, change, param):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    raw = json.dumps(body)  # json.dumps writes NaN, as a sloppy client would
    r = httpx.post(f"{server.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400, param)
    assert_ok_after(server.url)


@pytest.mark.parametrize("raw", [b"{", b"", b"[1, 2]", b"null", b'{"prompt": "\xff"}', b'{"prompt": "x", "n": NaN}',
                                 b'{"prompt": "x", "temperature": Infinity}'])
def test_malformed_bodies_are_400(server, raw):
    r = httpx.post(f"{server.url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    err = assert_error(r, 400)
    assert err["param"] in ("body", "n", "temperature")
    assert_ok_after(server.url)


LONE_SURROGATE_CASES = [
    ("/v1/completions", {"prompt": "a\ud83d"}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "\udc00b"]}, "prompt"),
    ("/v1/completions", {"prompt": "ok", "stop": ["\ud83d"]}, "stop"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud83d"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]},
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a", "name": "\ud83d"}]}, "messages[0].name"),
    ("/tokenize", {"prompt": "a\ud83d"}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": "a\ud83d"}]}, "messages[0].content"),
    ("/predict", {"prompt": "a\ud83d"}, "prompt"),
    ("/batch_predict", {"prompts": ["ok", "a\ud83d"]}, "prompts[1]"),
    ("/v1/embeddings", {"input": ["a\ud83d"]}, "input"),
    ("/reload", {"model": "a\ud83d"}, "model"),
]


@pytest.mark.parametrize("route, body, param", LONE_SURROGATE_CASES, ids=[f"{r}-{p}" for r, _, p in
                                                                         LONE_SURROGATE_CASES])
def test_a_lone_surrogate_in_text_is_400_naming_the_field(server, route, body, param):
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a JSON escape, as JavaScript clients send it
    r = httpx.post(f"{server.url}{route}", content=raw, headers={"content-type": "application/json"})
    err = assert_error(r, 400, param)
    assert "unicode" in err["message"].lower()
    assert_ok_after(server.url)


def test_context_length_errors_name_the_numbers(server):
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": "The", "max_tokens": 62}), 400,
                       "max_tokens")
    assert "3 tokens" in err["message"] and "62" in err["message"] and str(BLOCK) in err["message"]
    assert err["code"] == "context_length_exceeded"
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": "a" * 100, "max_tokens": 1}),
                       400, "prompt")
    assert "100 tokens" in err["message"] and str(BLOCK) in err["message"]
    ok = httpx.post(f"{server.url}/v1/completions", json={"prompt": "The", "max_tokens": BLOCK - 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= BLOCK - 3
    assert_ok_after(server.url)


def test_max_model_len_sizes_the_kv_cache_and_holds_requests_to_it(run_dir):
    """The engine's KV cache, allocated at start, holds max_concurrency rows of the whole context: for a long-context
    model more than most machines have (Llama 3.2 1B: 131072 positions x 8 rows x 16 layers, 69 GB in fp32), with no
    way to ask for less. max_model_len (vLLM's --max-model-len) sizes it, and requests are held to it as to the
    context."""
    from neurallayers.serve.app import create_app

    model, tok = neurallayers.load(run_dir)
    short = 24
    with serving((model, tok), model_name="short", max_concurrency=2, max_model_len=short) as srv:
        assert srv.app.state.holder.current.engine.stats()["max_len"] == short
        assert httpx.get(f"{srv.url}/v1/models/short").json()["max_model_len"] == short
        assert httpx.post(f"{srv.url}/tokenize", json={"prompt": "The"}).json()["max_model_len"] == short
        err = assert_error(httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": short - 2}),
                           400, "max_tokens")
        assert f"context length {short}" in err["message"] and err["code"] == "context_length_exceeded"
        body = {"prompt": "The", "max_tokens": short - 3, "logit_bias": {str(tok.eos_id): -100}}
        ok = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["total_tokens"] == short
    for bad in (BLOCK + 1, 1, 2.5):
        with pytest.raises(ValueError, match="max_model_len"):
            create_app((model, tok), max_model_len=bad)


def test_other_routes_refuse_bad_input_with_400(server):
    url = server.url
    assert_error(httpx.post(f"{url}/v1/embeddings", json={"input": "x"}), 400, "model")
    assert_error(httpx.post(f"{url}/v1/completions", json={"prompt": "x", "model": "other"}), 404, "model")
    assert_error(httpx.post(f"{url}/detokenize", json={"tokens": [-1]}), 400, "tokens")
    assert_error(httpx.post(f"{url}/tokenize", json={}), 400, "prompt")
    assert_error(httpx.post(f"{url}/predict", json={"prompt": ""}), 400, "prompt")
    assert_error(httpx.post(f"{url}/batch_predict", json={"prompts": []}), 400, "prompts")
    assert_error(httpx.post(f"{url}/reload", json={"model": "x"}), 400, "model")  # no --model-root: off
    assert_error(httpx.get(f"{url}/nowhere"), 404)
    assert_error(httpx.get(f"{url}/v1/completions"), 405)
    assert_ok_after(url)


OPTIONAL_AS_NULL = ["model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop", "stream",
                    "stream_options", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
                    "logit_bias", "user", "echo", "logprobs", "tools", "tool_choice", "response_format", "suffix"]


def test_null_in_an_optional_field_means_its_default(server):
    # OpenAI's schema makes these nullable and some clients send every field, null where unset
    body = {"prompt": "The", "max_tokens": 4, "temperature": 0}
    want = httpx.post(f"{server.url}/v1/completions", json=body).json()["choices"]
    nulls = {name: None for name in OPTIONAL_AS_NULL if name not in body}
    got = httpx.post(f"{server.url}/v1/completions", json={**body, **nulls})
    assert got.status_code == 200, got.text
    assert got.json()["choices"] == want
    # an assistant message as the openai client returns it, passed back as history: its null fields are absent
    returned = {"role": "assistant", "content": "yo", "tool_calls": None, "refusal": None, "audio": None,
                "function_call": None, "annotations": None}
    chat = {"messages": [{"role": "user", "content": "hi", "name": None}, returned, {"role": "user", "content": "x"}],
            "max_completion_tokens": 3, "top_logprobs": None, "logprobs": None, "max_tokens": None,
            "parallel_tool_calls": None}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=chat).status_code == 200
    assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": None}), 400, "prompt")


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_empty_stream_options_without_stream_are_none(server, route):
    # vLLM refuses stream_options without stream only when they hold something: {} (sent by some clients on every
    # call) reads as none
    body = {"prompt": "ab"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "ab"}]}
    body |= {"max_tokens": 2, "temperature": 0}
    want = httpx.post(f"{server.url}{route}", json=body).json()
    got = httpx.post(f"{server.url}{route}", json={**body, "stream_options": {}})
    assert got.status_code == 200, got.text
    assert got.json()["choices"] == want["choices"] and got.json()["usage"] == want["usage"]
    assert_error(httpx.post(f"{server.url}{route}", json={**body, "stream_options": {"include_usage": False}}), 400,
                 "stream_options")


def test_unknown_fields_are_told_apart_from_unsupported_ones(server):
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "temprature": 0}), 400,
                       "temprature")
    assert err["message"] == "temprature: unknown field (did you mean 'temperature'?)"
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={
        "prompt": "x", "stream": True, "stream_options": {"include_usag": True}}), 400, "stream_options.include_usag")
    assert err["message"] == "stream_options.include_usag: unknown field (did you mean 'include_usage'?)"
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [
        {"role": "assistant", "content": "42", "audio": {"id": "a1"}}]}), 400, "messages[0].audio")
    assert err["message"] == "messages[0].audio: not supported by this server (send null or leave it out)"
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={  # chat takes tools (with tool_choice "none")
        "prompt": "x", "tools": [{"type": "function"}]}), 400, "tools")
    assert err["message"] == "tools: not supported by this server (send null or leave it out)"
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "dimensions": 8}), 400, "dimensions")
    assert err["message"] == "dimensions: not a field of this route (another route takes it)"
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "zzz": 1}), 400, "zzz")
    assert err["message"] == "zzz: unknown field (check the spelling)"


def test_oversized_body_is_413_before_it_is_read(server):
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n")  # headers only: the server must not wait for the body
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert_ok_after(server.url)


def test_chunked_body_over_the_limit_is_413_before_the_rest_is_read(server, caplog):
    import select
    import socket

    from neurallayers.serve.middleware import MAX_BODY_BYTES

    port = int(server.url.rsplit(":", 1)[1])
    chunk = b"a" * 2**20  # not JSON: a server that reads it all answers 400 at once
    sent, reply = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # no Content-Length: the size is only known as the chunks arrive
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 3 * MAX_BODY_BYTES and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            if sent >= 3 * MAX_BODY_BYTES:
                sock.sendall(b"0\r\n\r\n")  # the whole body was taken: end it and read the answer
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        while not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:300]
    err = json.loads(body)["error"]
    assert err["code"] == "request_too_large" and err["param"] == "body" and str(MAX_BODY_BYTES) in err["message"]
    assert sent < 2 * MAX_BODY_BYTES  # refused once past the limit, not after reading everything
    assert_ok_after(server.url)
    # the route sees the cut body as a disconnect: the client's doing, not a server error with a traceback
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text[-2000:]


def test_empty_api_key_is_refused(run_dir):
    from neurallayers.serve.app import create_app

    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(run_dir, api_key=" ")


def test_empty_and_non_ascii_outputs_are_valid_json(server, run_dir):
    _, tok = neurallayers.load(run_dir)
    force_eos = {str(tok.eos_id): 100}  # the first token is eos: an empty completion
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "日本 🙂", "max_tokens": 5, "logit_bias": force_eos})
    assert r.status_code == 200
    assert json.loads(r.content.decode("utf-8"))["choices"][0] == {"index": 0, "text": "", "logprobs": None,
                                                                    "finish_reason": "stop", "stop_reason": None}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "é"}], "max_tokens": 5, "logit_bias": force_eos,
            "stream": True}) as s:
        events = [line for line in s.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "stop"
    for prompt in ("ünïcödé ∑", "🙂🎉", "日本語"):
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and isinstance(json.loads(r.content.decode("utf-8"))["choices"][0]["text"], str)


@pytest.fixture
def gated(run_dir):
    """A server with one decode slot and no queue, and a gate on its model's forward."""
    model, tok = neurallayers.load(run_dir)
    gate = Gate(model)
    with serving((model, tok), model_name="tiny", max_concurrency=1, max_queue=0) as srv:
        try:
            yield srv, gate, srv.app.state.holder.current.engine, {str(tok.eos_id): -100}
        finally:
            gate.remove()  # let anything still held finish before the server stops


def test_overload_is_429_with_retry_after_at_once(gated):
    srv, gate, engine, no_eos = gated
    gate.delay = 0.02
    body = {"prompt": "The", "max_tokens": 50, "stream": True, "logit_bias": no_eos}  # runs all 50 tokens
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as s:
        lines = s.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # decoding: the only slot is taken
        gate.open.clear()
        assert engine.stats()["running"] == 1
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 3}, timeout=10)
        err = assert_error(r, 429)
        assert err["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1
        r = httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                                "max_tokens": 3, "stream": True}, timeout=10)
        assert_error(r, 429)
        gate.open.set()
        gate.delay = 0.0
        rest = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
    assert rest[-1]["choices"][0]["finish_reason"] == "length"  # the running request was not disturbed
    assert_ok_after(srv.url)


def test_prompt_scoring_outside_the_engine_is_bounded_with_429_too(gated):
    """echo with logprobs scores the prompt in a forward of its own, outside the engine (an eval harness's
    loglikelihood requests: max_tokens 0): past max_concurrency + max_queue of them a request gets 429 at once, as a
    generation does, not a place in an unbounded line of forwards."""
    srv, gate, _, _ = gated
    entered = threading.Event()
    hook = srv.app.state.holder.current.model.register_forward_pre_hook(lambda *_: entered.set(), prepend=True)
    score = {"prompt": "The", "max_tokens": 0, "echo": True, "logprobs": 1}
    first: dict = {}
    try:
        gate.open.clear()  # the first scoring forward holds the only slot
        waiter = threading.Thread(target=lambda: first.setdefault("r", httpx.post(
            f"{srv.url}/v1/completions", json=score, timeout=60)))
        waiter.start()
        assert entered.wait(30)
        for body in (score, {**score, "max_tokens": 2}):  # scoring, then echo's scoring before a generation
            r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=5)
            err = assert_error(r, 429)
            assert err["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1
    finally:
        gate.open.set()
        hook.remove()
    waiter.join(60)
    assert first["r"].status_code == 200 and first["r"].json()["choices"][0]["text"] == "The"
    assert httpx.post(f"{srv.url}/v1/completions", json=score, timeout=30).status_code == 200  # the slot is free


def test_client_disconnect_mid_stream_cancels_and_frees_the_slot(gated):
    srv, gate, engine, no_eos = gated
    gate.delay = 0.02  # keep the stream going long enough to walk away from it
    body = {"prompt": "The", "max_tokens": 50, "stream": True, "logit_bias": no_eos}
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=30) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                break  # one token arrived; now leave
    wait_for(lambda: engine.stats()["requests_cancelled"] == 1 and engine.stats()["running"] == 0,
             what="the abandoned request to be cancelled")
    assert engine.stats()["tokens_generated"] < 50
    # counted as a client that closed the request (nginx's 499), not as the 200 its stream had begun with
    wait_for(lambda: request_count(srv.url, "/v1/completions", 499) == 1, timeout=10,
             what="the request to be counted")
    assert request_count(srv.url, "/v1/completions", 200) == 0
    gate.delay = 0.0
    assert_ok_after(srv.url)  # the slot (the only one) is free again
    assert request_count(srv.url, "/v1/completions", 200) == 1


def test_client_that_gives_up_on_a_non_streaming_request_frees_the_slot(gated):
    srv, gate, engine, no_eos = gated
    gate.delay = 0.05
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                            "max_tokens": 40, "logit_bias": no_eos}, timeout=0.5)
    wait_for(lambda: engine.stats()["requests_cancelled"] == 1 and engine.stats()["running"] == 0,
             what="the abandoned request to be cancelled")
    assert engine.stats()["tokens_generated"] < 40
    # the answer its handler still made for nobody is not a success
    wait_for(lambda: request_count(srv.url, "/v1/chat/completions", 499) == 1, timeout=10,
             what="the request to be counted")
    assert request_count(srv.url, "/v1/chat/completions", 200) == 0
    gate.delay = 0.0
    assert_ok_after(srv.url)


def test_an_embeddings_client_that_left_is_not_a_success():
    """/v1/embeddings reads no disconnect while its forward runs, and the server drops its answer to a closed
    connection without a word: the request was counted a 200."""
    import time

    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models import build_model

    tok = Tokenizer.train_char(["the quick brown fox"])
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                                                     n_embd=16)
    model = build_model(cfg).eval()
    done = threading.Event()
    model.register_forward_pre_hook(lambda m, a: time.sleep(0.6))
    model.register_forward_hook(lambda m, a, o: done.set())
    with serving((model, tok), model_name="tiny") as srv:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{srv.url}/v1/embeddings", json={"input": "the fox"}, timeout=0.2)
        wait_for(done.is_set, what="the forward to end")
        wait_for(lambda: request_count(srv.url, "/v1/embeddings", 499) == 1, timeout=10, what="the count")
        assert request_count(srv.url, "/v1/embeddings", 200) == 0
        httpx.post(f"{srv.url}/v1/embeddings", json={"input": "the fox"}, timeout=30).raise_for_status()
        wait_for(lambda: request_count(srv.url, "/v1/embeddings", 200) == 1, timeout=10, what="a served one counted")


def test_health_answers_while_a_huge_prompt_is_tokenized(run_dir):
    model, tok = neurallayers.load(run_dir)
    entered, release = threading.Event(), threading.Event()
    real = tok.encode_batch

    def slow_encode_batch(texts, **kw):
        entered.set()
        release.wait(60)
        return real(texts, **kw)

    tok.encode_batch = slow_encode_batch  # stands in for a tokenizer busy with megabytes of text
    with serving((model, tok), model_name="tiny") as srv:
        out = {}
        # short enough that it may fit (a char token is at most 13 characters: "<|endoftext|>"), so it is tokenized
        t = threading.Thread(target=lambda: out.setdefault("r", httpx.post(
            f"{srv.url}/v1/completions", json={"prompt": "x" * 800, "max_tokens": 1}, timeout=120)))
        t.start()
        assert entered.wait(30)
        health = httpx.get(f"{srv.url}/health", timeout=10)  # would time out if tokenizing blocked the loop
        assert health.status_code == 200 and health.json()["status"] == "ok"
        release.set()
        t.join(120)
        err = assert_error(out["r"], 400, "prompt")
        assert "800 tokens" in err["message"]
        assert_ok_after(srv.url)


def test_a_text_certainly_over_the_context_is_refused_before_it_is_tokenized(server, monkeypatch):
    tok = server.app.state.holder.current.tokenizer
    seen = []
    real = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda texts, **kw: seen.append(max(map(len, texts))) or real(texts, **kw))
    n = 2_000_000  # a char tokenizer's token is at most 13 characters: at least 153847 tokens
    for route, body, param in (("/v1/completions", {"prompt": "x" * n, "max_tokens": 1}, "prompt"),
                               ("/v1/completions", {"prompt": ["x", "x" * n], "max_tokens": 1}, "prompt"),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * n}]},
                                "messages"),
                               ("/predict", {"prompt": "x" * n}, "prompt")):
        err = assert_error(httpx.post(f"{server.url}{route}", json=body, timeout=60), 400, param)
        assert err["code"] == "context_length_exceeded"
        assert "characters, so at least 1538" in err["message"] and f"context length is {BLOCK}" in err["message"]
    assert not seen or max(seen) < BLOCK  # (the chat template renders the message into a slightly longer text)
    ids = assert_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": [99999] * 100_000}), 400, "prompt")
    assert ids["code"] == "context_length_exceeded" and "100000 tokens" in ids["message"]
    assert_ok_after(server.url)


def test_a_token_id_prompt_is_one_prompt_however_long(server):
    # a flat id list is one prompt: it was counted as one prompt per id against the server's capacity (6 here)
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1] * 20, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 20


def test_health_answers_while_tokenize_reads_a_huge_prompt(server):
    import time

    n = 3_000_000  # tokenized in about 3 s here; /tokenize returns every id, as vLLM's does
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", httpx.post(f"{server.url}/tokenize",
                                                                       json={"prompt": "x" * n}, timeout=120)))
    t.start()
    # the gaps between answers: a stall of the whole process (the GIL held) shows too, wherever it caught this thread
    gaps, last = [], time.perf_counter()
    while t.is_alive():
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        time.sleep(0.05)
    t.join()
    assert out["r"].status_code == 200 and out["r"].json()["count"] == n
    # relative to the whole call, not a clock figure: a loop or GIL held through the tokenizing shows as one gap as
    # long as the call, however loaded the machine
    assert len(gaps) >= 3 and max(gaps) < sum(gaps) / 2, [round(g, 2) for g in gaps]


def test_api_key_guards_every_route_but_health(run_dir, monkeypatch):
    import neurallayers.serve.middleware as mw

    calls = []
    real = mw.hmac.compare_digest
    monkeypatch.setattr(mw.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    with serving(run_dir, api_key="s3cret") as srv:
        url = srv.url
        routes = [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                  ("POST", "/v1/embeddings"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/predict"),
                  ("POST", "/batch_predict"), ("POST", "/reload"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                  ("GET", "/docs"), ("GET", "/nowhere")]
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer s3cre"}, {"Authorization": "Basic s3cret"}):
                r = httpx.request(method, url + path, headers=headers, json={})
                assert assert_error(r, 401)["type"] == "authentication_error", (method, path, headers)
        assert httpx.get(f"{url}/health").status_code == 200
        for headers in ({"Authorization": "Bearer s3cret2"}, {"Authorization": "s3cret"}):
            assert_error(httpx.get(f"{url}/v1/models", headers=headers), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/v1/models", headers=good).status_code == 200
        assert_ok_after(url, headers=good)
    assert calls  # the key is compared with hmac.compare_digest (constant time)


def test_cors_is_off_by_default_and_on_for_named_origins(server, run_dir):
    pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{server.url}/v1/completions", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in httpx.get(f"{server.url}/v1/models", headers=pre).headers
    with serving(run_dir, cors_origins=["http://ui.example"]) as srv:
        ok = httpx.options(f"{srv.url}/v1/completions", headers={**pre, "Origin": "http://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "http://ui.example"
        bad = httpx.options(f"{srv.url}/v1/completions", headers=pre)
        assert bad.headers.get("access-control-allow-origin") != "http://evil.example"


def test_cors_lets_the_openai_clients_own_headers_through_a_preflight(run_dir):
    """The official openai client (the JavaScript one in a browser as the Python one here) sends X-Stainless-* headers
    on every call, so a browser asks for them in the preflight; refusing them failed every call from that page."""
    openai = pytest.importorskip("openai")
    sent = []
    hook = {"request": [lambda request: sent.append(request.headers)]}
    with serving(run_dir, cors_origins=["http://ui.example"]) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0,
                               http_client=httpx.Client(event_hooks=hook))
        client.models.list()
        # what a browser would not set itself or lets through without asking
        ask = sorted({k for k in sent[0] if k not in ("host", "user-agent", "accept", "accept-encoding", "connection",
                                                      "content-length")})
        assert any(k.startswith("x-stainless") for k in ask)
        pre = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": ", ".join(ask)}
        r = httpx.options(f"{srv.url}/v1/chat/completions", headers=pre)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "http://ui.example"


def test_default_host_is_loopback():
    import argparse

    from neurallayers.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args(["some/run"]).host == "127.0.0.1"


def test_no_character_bound_where_one_token_can_hold_a_run_of_unknown_characters():
    """Byte fallback without the 256 <0xNN> tokens (transformers' LlamaConverter writes it for any SentencePiece
    vocabulary) reads unknown characters as <unk>, fused into one token per run; a "." split stops at newlines, so a
    run of them is one piece. Both refused valid prompts: "Hi " + 400 x "漢" is 6 tokens."""
    from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    from neurallayers.data import Tokenizer
    from neurallayers.serve.params import chars_per_token

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{c: 4 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyzH")}}
    hf = HFTokenizer(models.BPE(vocab, [], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    llama = Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")
    assert len(llama.encode("Hi " + "漢" * 400)) < 10 and chars_per_token(llama) is None
    words = HFTokenizer(models.WordLevel({"a": 0, "b": 1, "\n": 2, "<unk>": 3}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    dots = Tokenizer.from_hf(words)
    assert len(dots.encode("a" + "\n" * 1000 + "b")) == 3 and chars_per_token(dots) is None
    assert chars_per_token(Tokenizer.train_char(["ab\n"])) is not None  # [\s\S]: every character its own piece


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"}, {}])
def test_a_json_body_sent_without_a_json_content_type_is_400_naming_the_header(server, headers):
    # curl -d sends a form's Content-Type; the body is a fine JSON object, so "not a JSON object" would mislead
    body = json.dumps({"prompt": "The", "max_tokens": 2}).encode()
    r = httpx.post(f"{server.url}/v1/completions", content=body, headers=headers)
    err = assert_error(r, 400, "body")
    assert "Content-Type: application/json" in err["message"], err
    assert_ok_after(server.url)


def test_a_long_token_id_prompt_is_validated_in_one_pass():
    # A plain union also tried the ids as a list of strings and as a list of lists, building an error per id: 15M ids
    # (inside the 32 MiB body limit) held the event loop, and /health with it, for 13 s. Now one shape is tried, picked
    # by the value's type and its first item's: a list of ids with one bad item is one error, not one per id.
    from pydantic import ValidationError

    from neurallayers.serve.schemas import CompletionRequest, EmbeddingRequest

    for model, field in ((CompletionRequest, "prompt"), (EmbeddingRequest, "input")):
        with pytest.raises(ValidationError) as e:
            model.model_validate({field: [1] * 1000 + ["a"]})
        assert len(e.value.errors()) == 1, (model.__name__, len(e.value.errors()))
        assert model.model_validate({field: [1] * 1000}) is not None


@pytest.mark.parametrize("prompt, words", [(5, "must be a string, a list of strings"), ([1, "a"], "valid integer"),
                                           (["a", 1], "valid string"), ([[1], "a"], "valid list"),
                                           ([1.5], "must be a string, a list of strings")])
def test_a_prompt_of_no_allowed_shape_is_400_saying_what_is_wrong(server, prompt, words):
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    assert words in assert_error(r, 400, "prompt")["message"]


@pytest.mark.parametrize("raw, headers, words", [
    (b'{"prompt": "The", "max_tokens": 2}', {"content-encoding": "gzip"}, "Content-Encoding 'gzip' is not supported"),
    (b'{"prompt": "\xff\xfe", "max_tokens": 2}', {}, "UnicodeDecodeError"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, "RecursionError"),
])
def test_a_body_that_cannot_be_parsed_is_400_saying_why(server, raw, headers, words):
    # FastAPI says only "There was an error parsing the body"
    body = gzip.compress(raw) if headers.get("content-encoding") == "gzip" else raw
    r = httpx.post(f"{server.url}/v1/completions", content=body,
                   headers={"content-type": "application/json", **headers})
    assert words in assert_error(r, 400, "body")["message"]
    assert_ok_after(server.url)


@pytest.mark.parametrize("route, body", [("/predict", {"prompt": "The"}), ("/batch_predict", {"prompts": ["The"]})])
def test_a_client_that_gives_up_on_predict_frees_the_slot(gated, route, body):
    # as on the OpenAI routes: the generation of a client that left is cancelled, not run to max_tokens ("The" runs
    # all 40 greedy tokens without an end-of-text)
    srv, gate, engine, _ = gated
    gate.delay = 0.05
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{srv.url}{route}", json={**body, "max_tokens": 40}, timeout=0.5)
    wait_for(lambda: engine.stats()["requests_cancelled"] == 1 and engine.stats()["running"] == 0,
             what="the abandoned request to be cancelled")
    assert engine.stats()["tokens_generated"] < 40
    wait_for(lambda: request_count(srv.url, route, 499) == 1, timeout=10, what="the request to be counted")
    assert request_count(srv.url, route, 200) == 0
    gate.delay = 0.0
    assert_ok_after(srv.url)


@pytest.mark.parametrize("route, body, status", [
    # 300,000 messages (12 MB): pydantic's validators per message held the event loop for seconds
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi there"}] * 300_000, "max_tokens": 1}, 400),
    # 3,000,000 stop_token_ids: each choice's config checked and copied them on the loop
    ("/v1/completions", {"prompt": "The", "max_tokens": 1, "n": 2, "seed": 0,
                         "stop_token_ids": list(range(40)) * 75_000}, 200),
    ("/tokenize", {"messages": [{"role": "user", "content": "hi there"}] * 300_000}, 200),
])
def test_health_answers_while_a_huge_body_is_read(server, route, body, status):
    raw = json.dumps(body).encode()
    r, slowest = slowest_health_while(server.url, lambda: httpx.post(
        f"{server.url}{route}", content=raw, headers={"content-type": "application/json"}, timeout=120))
    assert r.status_code == status, r.text[:300]
    # a generous bound: the loop only forwards bytes and answers /health while a worker thread reads the body
    assert slowest < 1.0, f"/health waited {slowest:.2f} s"
    assert_ok_after(server.url)


def test_the_body_limit_is_configurable_and_a_1_mib_prompt_is_served(run_dir):
    big = {"prompt": "x" * 2**20, "max_tokens": 1, "truncate_prompt_tokens": 8}  # 1 MiB of text, its last 8 tokens
    with serving(run_dir, max_body_mb=0.5) as srv:
        err = assert_error(httpx.post(f"{srv.url}/v1/completions", json=big, timeout=60), 413, "body")
        assert err["code"] == "request_too_large" and str(2**19) in err["message"]
        small = {**big, "prompt": "x" * 2**18}
        assert httpx.post(f"{srv.url}/v1/completions", json=small, timeout=60).status_code == 200
        assert_ok_after(srv.url)
    with serving(run_dir) as srv:  # the default limit (32 MiB) takes it
        r = httpx.post(f"{srv.url}/v1/completions", json=big, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 8, r.text[:300]


def test_repeated_stop_token_ids_stop_as_the_ids_once(server):
    # repeats are dropped before the configs are built (3,000,000 of them took seconds): the same choices, stopped by
    # the same id
    def ask(ids):
        body = {"prompt": "The", "max_tokens": 12, "n": 3, "seed": 7, "temperature": 1.0, "stop_token_ids": ids}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return [(c["text"], c["finish_reason"], c["stop_reason"]) for c in r.json()["choices"]]

    once = ask([5, 9, 20])
    assert ask([20, 5, 9, 5, 20, 9] * 1000) == once
    assert_ok_after(server.url)
