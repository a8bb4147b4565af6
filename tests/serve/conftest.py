"""Module-scoped fixtures the OpenAI-route tests share: a test module defines `run_dir` (the served run), and gets
`loaded` (the run as neurallayers.load gives it), `server` (a real server on 127.0.0.1) and `client` (the real
`openai` client on it); a module that needs another server defines its own."""

from __future__ import annotations

import pytest
from nl_serve_helpers import serving

import neurallayers


@pytest.fixture(scope="module")
def loaded(run_dir):
    return neurallayers.load(run_dir)


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(run_dir, max_concurrency=4, max_queue=16) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
