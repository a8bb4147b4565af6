"""`neurallayers ui`: the verb serves the playground on 127.0.0.1 and reports bad ports and paths in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from nl_ui_helpers import free_port

from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory) -> Path:
    model, tok = tiny
    out = tmp_path_factory.mktemp("run")
    RunConfig(model=model.config).to_yaml(out / "config.yaml")
    tok.save(out)
    save_model(out, model.state_dict())
    return out


def test_serves_the_page_on_localhost(run_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "neurallayers", "ui", str(run_dir), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        page, deadline = None, time.monotonic() + 90
        while page is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.TransportError:
                time.sleep(0.2)  # not listening yet
        assert page is not None, proc.stdout.read().decode() if proc.poll() is not None else "no answer in 90 s"
        assert page.status_code == 200 and "NeuralLayers playground" in page.text
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Gradio closes the server
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bad_port_and_path_are_one_line_errors(run_dir, capsys):
    from neurallayers.__main__ import main

    assert main(["ui", str(run_dir), "--port", "70000"]) == 2
    assert "--port 70000: must be in 1..65535" in capsys.readouterr().err
    assert main(["ui", str(run_dir / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", str(run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"neurallayers ui: error: port {port} on 127.0.0.1 is in use; choose another --port"
