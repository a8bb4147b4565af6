"""`neurallayers ui`: the verb serves the playground on 127.0.0.1 and reports bad ports and paths in one line."""

from __future__ import annotations

import os
import select
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
    # Ctrl-C as a terminal delivers it: a test run started in the background by a shell (`make test &`) ignores
    # SIGINT, and the verb inherited that, never stopped, and was killed
    proc = subprocess.Popen([sys.executable, "-m", "neurallayers", "ui", str(run_dir), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        page, deadline = None, time.monotonic() + 90
        while page is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.TransportError:
                time.sleep(0.2)  # not listening yet
        assert page is not None, proc.stdout.read().decode() if proc.poll() is not None else "no answer in 90 s"
        assert page.status_code == 200 and "NeuralLayers playground" in page.text
        said = _line_with(proc, "Running on", deadline=time.monotonic() + 30)  # printed once launch() returns
        assert f"* Running on http://127.0.0.1:{port}/ (Ctrl-C to stop)\n" in said
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the server closes
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rest = proc.stdout.read().decode()
    assert "share=True" not in said + rest  # Gradio's hint to edit launch(): not for a CLI user
    # Gradio's block_thread() swallowed the Ctrl-C ("Keyboard interruption in main thread...") and the verb exited 0
    assert proc.returncode == 130 and "neurallayers ui: interrupted" in rest, rest
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # closed: the port is free again


def _line_with(proc: subprocess.Popen, text: str, *, deadline: float) -> str:
    """Lines of proc's output up to the first that holds `text` (all of them, without it, by the deadline)."""
    said = ""
    while time.monotonic() < deadline and text not in said:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        line = proc.stdout.readline().decode() if ready else ""
        if ready and not line:
            break  # the process ended
        said += line
    return said


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


@pytest.mark.parametrize(("host", "message"), [
    ("no.such.host.invalid", "--host no.such.host.invalid: not a known host name or address"),
    ("192.0.2.1", "--host 192.0.2.1: not an address of this machine"),  # was "port N on 192.0.2.1 is in use"
    ("", "argument --host: must not be empty"),
])
def test_bad_host_is_a_one_line_error(run_dir, capsys, host, message):
    from neurallayers.__main__ import main

    try:
        code = main(["ui", str(run_dir), "--host", host, "--port", str(free_port())])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "in use" not in err and len(err.splitlines()) == 1


def test_controls_start_at_the_folder_generation_config(run_dir, tmp_path, monkeypatch):
    import json
    import shutil

    import gradio as gr

    import neurallayers.ui
    from neurallayers.__main__ import main

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    apps = []
    monkeypatch.setattr(neurallayers.ui, "launch", lambda app, **kw: apps.append(app))  # build, do not serve
    assert main(["ui", str(folder), "--port", str(free_port())]) == 0
    sliders = {b.label: b.value for b in apps[0].blocks.values() if isinstance(b, gr.Slider)}
    assert sliders["Temperature (0 = greedy)"] == 0.6 and sliders["Top-p (1 = off)"] == 0.9  # as `generate` takes them


def _ipv6_port() -> int:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_serves_the_page(tiny, host):
    """--host ::1 ended in httpx's traceback "Invalid port: ':1:7860'" (Gradio put the address in its URL bare);
    "[::1]", as in a URL, was "not a known host name"."""
    pytest.importorskip("gradio", reason="the web playground needs the ui extra (gradio)")
    from neurallayers.cli.ui import _check_address
    from neurallayers.ui import build_app, launch

    port = _ipv6_port()
    _check_address(host, port)
    app = build_app(*tiny, name="tiny")
    try:
        url = launch(app, host=host, port=port, block=False, quiet=True)
        assert url == f"http://[::1]:{port}/" and httpx.get(url, timeout=30).status_code == 200
    finally:
        app.close()


def test_one_bind_check_for_every_server_verb():
    """`ui` and `serve` each spelt out the bind checks and the IPv6 brackets of a URL; cli.common holds them once."""
    from neurallayers.cli.common import UserError, bind_socket, url_host

    assert [url_host(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost")] == ["127.0.0.1", "[::1]", "[::1]",
                                                                                "localhost"]
    with bind_socket("127.0.0.1", 0) as sock:  # bound, not yet listening: the caller's to use or close
        port = sock.getsockname()[1]
        sock.listen()
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use; choose another --port"):
            bind_socket("127.0.0.1", port)
    with pytest.raises(UserError, match="--host no.such.host.invalid: not a known host name or address"):
        bind_socket("no.such.host.invalid", 0)


def test_a_host_name_with_several_addresses_binds_one_this_machine_has(monkeypatch):
    """Only the first address of a name was tried: "localhost" resolving to ::1 first, on a machine without IPv6, was
    "not an address of this machine", and socket() refusing the family (EAFNOSUPPORT) was a traceback."""
    import errno
    import socket

    from neurallayers.cli import common

    stream = (socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    elsewhere = (socket.AF_INET6, *stream, ("2001:db8::1", 0, 0, 0))  # a documentation address: no machine's
    here = (socket.AF_INET, *stream, ("127.0.0.1", 0))
    monkeypatch.setattr(common.socket, "getaddrinfo", lambda *a, **k: [elsewhere, here])
    with common.bind_socket("myhost", 0) as sock:
        assert sock.getsockname()[0] == "127.0.0.1"
    real = socket.socket

    def no_ipv6(family=socket.AF_INET, *args):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args)

    monkeypatch.setattr(common.socket, "socket", no_ipv6)
    monkeypatch.setattr(common.socket, "getaddrinfo", lambda *a, **k: [elsewhere])
    with pytest.raises(common.UserError, match="^--host ::1: not an address of this machine"):
        common.bind_socket("::1", 0)
