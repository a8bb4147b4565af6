"""vLLM's model card fields and its cheap routes against a real uvicorn server on 127.0.0.1: /v1/models gives root
and parent beside max_model_len (clients read them through the openai client), /version the server's version, /ping
what /health answers (SageMaker probes GET /ping)."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import serving, write_run_dir

import neurallayers

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(write_run_dir(tmp_path_factory.mktemp("routes30ops") / "tiny-char")) as srv:
        yield srv


def test_model_cards_carry_vllms_fields(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    for card in (client.models.list().data[0], client.models.retrieve("tiny-char")):
        assert (card.id, card.owned_by, card.object) == ("tiny-char", "neurallayers", "model")
        # vLLM's names: root the model served (no adapters here, so the model itself), parent none, the context
        assert (card.root, card.parent, card.max_model_len) == ("tiny-char", None, 64)


def test_version_and_ping(server):
    assert httpx.get(f"{server.url}/version").json() == {"version": neurallayers.__version__}
    r = httpx.get(f"{server.url}/ping")
    assert (r.status_code, r.json()) == (200, httpx.get(f"{server.url}/health").json())


def test_version_needs_the_key_as_every_route_but_health(tmp_path):
    with serving(write_run_dir(tmp_path / "keyed"), api_key="sk-test") as srv:
        assert httpx.get(f"{srv.url}/version").status_code == 401
        ok = httpx.get(f"{srv.url}/version", headers={"Authorization": "Bearer sk-test"})
        assert ok.json() == {"version": neurallayers.__version__}
