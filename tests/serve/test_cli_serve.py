"""`neurallayers serve` arguments: a shutdown timeout is read only when the server stops, so one that is not a time is
refused at startup (in one line), not when SIGTERM comes; a bad --model-root is named as the flag; the URL it prints
opens; a SIGTERM right after that line stops it."""

from __future__ import annotations

import sys
import time

import pytest


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_shutdown_timeout_that_is_not_a_time_is_refused_before_loading(tmp_path, capsys, value):
    from neurallayers.__main__ import main

    # the folder holds no model: the check comes first, not at SIGTERM (where NaN crashed the drain and -1 failed
    # every request in flight with a bare 500)
    code = main(["serve", str(tmp_path), "--port", "0", "--shutdown-timeout", value])
    err = capsys.readouterr().err
    assert code == 2 and "--shutdown-timeout" in err and "Traceback" not in err, err


# "30" was a TypeError, not this error; 10**400 was taken
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "30", pytest.param(10**400, id="past-float")])
def test_create_app_refuses_a_shutdown_timeout_that_is_not_a_time(value):
    from neurallayers.serve.app import create_app

    with pytest.raises(ValueError, match="shutdown_timeout"):
        create_app(("model", "tokenizer"), shutdown_timeout=value)  # refused before the model is looked at


@pytest.mark.parametrize(("value", "why"), [("65", "max_model_len=65 is more than the model's context length 64"),
                                             ("1", "--max-model-len 1: must be >= 2")])
def test_a_max_model_len_the_model_cannot_serve_is_one_line(tmp_path, capsys, value, why):
    from nl_serve_helpers import write_run_dir

    from neurallayers.__main__ import main

    run = write_run_dir(tmp_path / "tiny", block_size=64)
    code = main(["serve", str(run), "--port", "0", "--max-model-len", value])
    err = capsys.readouterr().err
    assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("root", ["nowhere", "file.txt"])
def test_a_model_root_that_is_not_a_folder_is_named_as_the_flag_before_loading(tmp_path, capsys, root):
    from neurallayers.__main__ import main

    (tmp_path / "file.txt").write_text("x")
    code = main(["serve", str(tmp_path), "--port", "0", "--model-root", str(tmp_path / root)])  # no model there
    err = capsys.readouterr().err
    assert code == 2 and "--model-root" in err and "not a folder" in err and "Traceback" not in err, err


def test_the_url_printed_for_an_ipv6_host_is_one_a_client_can_open(tmp_path):
    import re
    import socket

    import httpx
    from nl_serve_helpers import start_cli_server, write_run_dir

    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    proc = start_cli_server(write_run_dir(tmp_path / "run"), 0, "--host", "::1")
    try:
        line = proc.stderr.readline()  # printed once the model is loaded, before serving
        url = re.search(r"on (http://\S+)", line)
        assert url and url[1].startswith("http://[::1]:"), line  # it printed http://::1:PORT
        for _ in range(100):
            try:
                assert httpx.get(f"{url[1]}/health", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"{url[1]} never answered")
    finally:
        proc.kill()
        proc.wait(30)


def test_a_sigterm_right_after_the_server_says_where_it_listens_stops_it_with_status_0(tmp_path):
    """A supervisor may stop the server as soon as it has announced itself, before uvicorn has installed its own
    signal handler: that SIGTERM was swallowed by a no-op handler, and the server served on."""
    from nl_serve_helpers import start_cli_server, write_run_dir

    proc = start_cli_server(write_run_dir(tmp_path / "run"), 0)
    try:
        assert "on http://" in proc.stderr.readline()
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_a_serve_extra_too_old_to_import_is_one_line(tmp_path, capsys, monkeypatch):
    """pydantic < 2.5 (which fastapi 0.110 accepts) has no Discriminator: a plain ImportError, not a missing module,
    which the one-line 'serve extra' message did not catch (a traceback)."""
    import types

    from neurallayers.__main__ import main

    monkeypatch.setitem(sys.modules, "neurallayers.serve.app", types.ModuleType("neurallayers.serve.app"))
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "serving needs the 'serve' extra (an older library: cannot import name 'create_app'" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_body_limit_that_is_not_a_size_is_refused_before_loading(tmp_path, capsys, value):
    from neurallayers.__main__ import main

    code = main(["serve", str(tmp_path), "--port", "0", "--max-body-mb", value])
    err = capsys.readouterr().err
    assert code == 2 and "--max-body-mb" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "32", True])
def test_create_app_refuses_a_body_limit_that_is_not_a_size(value):
    from neurallayers.serve.app import create_app

    with pytest.raises(ValueError, match="max_body_mb"):
        create_app(("model", "tokenizer"), max_body_mb=value)  # refused before the model is looked at
