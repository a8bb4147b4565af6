"""Which routes the API key guards, against a real uvicorn server on 127.0.0.1: every route but the liveness probes
(/health, and /ping, vLLM's name for it) needs it (RELIABILITY item 18), where vLLM leaves every path outside /v1
open: /version, /metrics, the schema and its docs page, the utility routes, any other path; a CORS preflight, which a
browser sends without the header, is not asked for it."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import serving, write_run_dir

KEY = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(write_run_dir(tmp_path_factory.mktemp("keyed") / "tiny-char"), api_key="sk-test") as srv:
        yield srv


@pytest.mark.parametrize("path", ["/health", "/ping"])
def test_liveness_probes_answer_without_the_key(server, path):
    r = httpx.get(server.url + path)
    assert r.status_code == 200, r.text
    assert r.content == httpx.get(server.url + path, headers=KEY).content


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/models", None), ("GET", "/v1/models/tiny-char", None),
    ("POST", "/v1/completions", {"prompt": "The", "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("POST", "/tokenize", {"prompt": "The"}), ("POST", "/detokenize", {"tokens": [1]}),
    ("POST", "/predict", {"prompt": "The", "max_tokens": 1}), ("POST", "/batch_predict", {"prompts": ["The"]}),
    ("GET", "/nowhere", None), ("GET", "/health/", None), ("GET", "/v1", None), ("GET", "/version", None),
    ("GET", "/metrics", None), ("GET", "/openapi.json", None), ("GET", "/docs", None), ("GET", "/redoc", None)])
def test_every_other_route_needs_the_key(server, method, path, body):
    r = httpx.request(method, server.url + path, json=body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    assert httpx.request(method, server.url + path, json=body, headers=KEY).status_code != 401


def test_reload_needs_the_key(server):
    assert httpx.post(f"{server.url}/reload", json={"model": "x"}).status_code == 401


def test_an_options_request_is_not_asked_for_the_key(server):
    # a browser's CORS preflight sends no Authorization header; without CORS configured the route answers 405
    r = httpx.options(f"{server.url}/v1/completions", headers={"Origin": "http://ui.example",
                                                                "Access-Control-Request-Method": "POST"})
    assert r.status_code == 405
