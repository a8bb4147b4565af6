"""vLLM's /ping answers GET and POST alike (vLLM registers both), what /health answers, without the API key;
each is counted under its route in /metrics."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import serving, write_run_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(write_run_dir(tmp_path_factory.mktemp("routes_ping") / "tiny-char"), api_key="sk-test") as srv:
        yield srv


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ping_answers_get_and_post_without_the_key(server, method):
    r = httpx.request(method, f"{server.url}/ping")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "model": "tiny-char"})


def ping_count(server) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer sk-test"}).text
    assert 'route="other"' not in text
    line = 'neurallayers_requests_total{route="/ping",status="200"} '
    return next((float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line)), 0.0)


def test_a_post_ping_is_counted_under_its_route(server):
    before = ping_count(server)
    httpx.post(f"{server.url}/ping")
    assert ping_count(server) == before + 1
