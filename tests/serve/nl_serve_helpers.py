"""Shared setups for the server tests: tiny run directories and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
TEXT = "The quick brown fox jumps over the lazy dog. héllo wörld, naïve café, 日本語 ok! 🙂🎉 0123456789\n"
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def write_run_dir(path: Path, *, kind: str = "char", seed: int = 0, block_size: int = 64,
                  chat_template: str | None = None) -> Path:
    """A run directory with random weights: a char-level (or byte-level BPE) 2-layer 32-wide decoder.

    init_std 0.3 makes next-token distributions peaked, so greedy and seeded choices have no near-ties.
    """
    if kind == "char":
        tok = Tokenizer.train_char([TEXT])
    else:
        tok = Tokenizer.train_bpe([TEXT] * 4, vocab_size=300, show_progress=False)  # splits multi-byte characters
    tok.chat_template = chat_template
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                      init_std=0.3)
    torch.manual_seed(seed)
    model = build_model(cfg)
    path.mkdir(parents=True, exist_ok=True)
    RunConfig(model=cfg).to_yaml(path / "config.yaml")
    save_model(path, model.state_dict())
    tok.save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a background thread (lifespan included)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextmanager
def serving(model, **kwargs):
    """A started server for create_app(model, **kwargs); yields the ServerThread."""
    from neurallayers.serve.app import create_app

    with ServerThread(create_app(model, **kwargs)) as srv:
        yield srv


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_ok_after(url: str, headers: dict | None = None) -> None:
    """After a bad request, a good one still gets 200."""
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "The", "max_tokens": 2}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def start_cli_server(run_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """`python -m neurallayers serve run_dir --port port` in a new process."""
    return subprocess.Popen([sys.executable, "-m", "neurallayers", "serve", str(run_dir), "--port", str(port),
                             "--log-level", "warning", *extra], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early ({proc.returncode}): {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


class Gate:
    """A forward pre-hook that holds the engine thread before every model forward while closed."""

    def __init__(self, model, *, delay: float = 0.0) -> None:
        self.open = threading.Event()
        self.open.set()
        self.delay = delay  # seconds per forward, to keep requests in flight long enough to act on them
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if not self.open.wait(60):
            raise RuntimeError("gate left closed")
        if self.delay:
            time.sleep(self.delay)

    def remove(self) -> None:
        self.open.set()
        self.handle.remove()


def requests_running(url: str) -> int:
    """The server's neurallayers_requests_running gauge, read from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("neurallayers_requests_running "))
    return int(float(line.split()[1]))


def request_count(url: str, route: str, status: int) -> float:
    """The server's neurallayers_requests_total for (route, status), read from /metrics (0 when never counted)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "neurallayers_requests_total" and s.labels == {"route": route, "status": str(status)})


def slowest_health_while(url: str, send) -> tuple[httpx.Response, float]:
    """(send()'s response, the longest /health call) with send() running in a thread and /health polled until it
    returns."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", send()))
    t.start()
    slowest = 0.0
    while t.is_alive():
        start = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=60).status_code == 200
        slowest = max(slowest, time.perf_counter() - start)
        time.sleep(0.02)
    t.join()
    return out["r"], slowest
