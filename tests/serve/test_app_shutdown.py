"""Stopping a server under load (RELIABILITY.md item 20): what clients in flight see when SIGTERM's drain runs out
of time."""

from __future__ import annotations

import json
import signal
import threading

import httpx
from nl_serve_helpers import free_port, requests_running, start_cli_server, wait_for, wait_healthy, write_run_dir

from neurallayers.data.tokenizers import Tokenizer


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

