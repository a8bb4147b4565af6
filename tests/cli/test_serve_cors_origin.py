"""`serve --cors-origin`: CORS compares the browser's Origin header as text, so a value no browser sends (a trailing
slash, a path, capitals, a default port, "") turned CORS on for no page at all; it is refused in one line instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from nl_cli_helpers import assert_user_error, in_process


def _allowed(allow: str, origin: str) -> bool:
    """Whether Starlette's CORSMiddleware, as the server adds it, lets a page at `origin` read the answer."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=[allow], allow_methods=["GET", "POST"])
    app.get("/")(lambda: {})
    return "access-control-allow-origin" in TestClient(app).get("/", headers={"Origin": origin}).headers


@pytest.mark.parametrize(("given", "meant"), [
    ("http://localhost:3000/", "http://localhost:3000"),  # copied from the address bar
    ("http://localhost:3000/app", "http://localhost:3000"),
    ("HTTP://LocalHost:3000", "http://localhost:3000"),
    ("https://ui.example:443", "https://ui.example"),
    ("http://localhost:080", "http://localhost"),  # a browser drops a port's leading zeros, then the default port
    ("http://localhost:03000", "http://localhost:3000"),
    ("http://bücher.example", "http://xn--bcher-kva.example"),  # and sends a host name in its punycode form
    # a browser writes an IPv4 address in dotted decimal, whatever form the address bar had (the URL standard)
    ("http://0x7f.0.0.1:3000", "http://127.0.0.1:3000"),
    ("http://0177.0.0.1", "http://127.0.0.1"),
    ("http://127.1:8080", "http://127.0.0.1:8080"),
    ("http://2130706433", "http://127.0.0.1"),
    ("http://127.0.0.1.:3000", "http://127.0.0.1:3000"),
    ("http://256.1.1.1", None),  # no address: no browser loads it
    ("http://1.2.3.4.5", None),
    ("", None),  # an unset variable
    ("localhost:3000", None),
])
def test_an_origin_no_browser_sends_is_refused(given: str, meant: str | None, tmp_path: Path, monkeypatch):
    if meant is not None:  # the oracle: the page the user meant was never let through
        assert not _allowed(given, meant) and _allowed(meant, meant)
    proc = in_process("serve", "nosuch", "--port", "0", "--cors-origin", given, cwd=tmp_path, monkeypatch=monkeypatch)
    hint = f" (did you mean {meant}?)" if meant else ""
    assert_user_error(proc, f"argument --cors-origin: {given!r} is not an origin: scheme://host[:port] with no path",
                      f"or *{hint}")


@pytest.mark.parametrize("given", ["http://localhost:3000", "https://ui.example", "http://[::1]:8080", "*", "null",
                                   "http://10.0.0.7:3000", "http://1.example", "http://0x.example"])
def test_an_origin_as_a_browser_sends_it_passes(given: str):
    from neurallayers.__main__ import build_verb_parser

    args = build_verb_parser("serve")[1].parse_args(["run", "--cors-origin", given, "--cors-origin", "http://a.b"])
    assert args.cors_origin == [given, "http://a.b"]
