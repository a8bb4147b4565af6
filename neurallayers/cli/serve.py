"""`neurallayers serve PATH`: an OpenAI-compatible HTTP server for a run directory or Hugging Face folder.

SIGTERM (or Ctrl-C) stops it gracefully: new requests are refused, requests in flight finish (those still running
after --shutdown-timeout end with a 503, or an error event in a stream), the engine drains, and the process exits 0
(130 after Ctrl-C, as any interrupted command).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys

from neurallayers.cli.common import (
    UserError,
    add_device_dtype,
    add_model_path,
    bind_socket,
    non_empty,
    positive_int,
    torch_dtype,
    url_host,
)

API_KEY_ENV = "NEURALLAYERS_API_KEY"
MAX_BODY_MB = 32.0  # serve.middleware.MAX_BODY_BYTES, not imported: the serve extra is optional
ANSWER_GRACE_S = 1.0  # after --shutdown-timeout, for the answers to requests the engine ended


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_path(parser)
    parser.add_argument("--host", default="127.0.0.1", type=non_empty,
                        help="address to listen on (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="(default 8000; 0 picks a free one)")
    # read from the environment in run(), not as the default: --help prints defaults, and must not print a key
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every route but /health and /ping; or set "
                        f"${API_KEY_ENV}")
    parser.add_argument("--max-concurrency", type=positive_int, default=8,
                        help="sequences decoded together (the engine's batch)")
    parser.add_argument("--max-queue", type=int, default=32,
                        help="sequences that may wait for a slot; more get 429 with Retry-After")
    parser.add_argument("--cors-origin", action="append", type=_origin, default=None, metavar="ORIGIN",
                        help="allow browser calls from this origin, scheme://host[:port] as a browser sends it "
                        "(http://localhost:3000), or * for any (repeatable); CORS is off without it")
    parser.add_argument("--model-root", type=non_empty, default=None,  # "" is the current folder to pathlib
                        help="folder that POST /reload may load models from (relative paths only); off without it")
    parser.add_argument("--model-name", type=non_empty, default=None,
                        help="the model id clients use (default: the folder's name)")
    add_device_dtype(parser, compiles=True)
    parser.add_argument("--compile", action="store_true",
                        help="compile the one-token decode step (neurallayers.generation.fast) before serving: "
                        "15-60 s to start, then 1.5-3x the decode tokens/s on CPU")
    parser.add_argument("--max-model-len", type=positive_int, default=None, metavar="TOKENS",
                        help="tokens a request may use, prompt and reply (default: the model's context length); a "
                        "decoder's KV cache holds --max-concurrency rows of it, so a long-context model may need "
                        "less; an encoder's inputs are held to it")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB, metavar="MIB",
                        help="the largest request body taken, in MiB; a larger one gets 413 before it is read "
                        "(default %(default)g)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds to let requests in flight finish after SIGTERM; those left then get 503")
    parser.add_argument("--chat-template", metavar="NAME|FILE|JINJA",
                        help="the chat routes' template: one of the tokenizer's by name (tool_use, rag ...), "
                        "a .jinja file, or the template's text (default: the tokenizer's own)")
    parser.add_argument("--trust-request-chat-template", action="store_true",
                        help="let requests bring their own chat template (chat_template); refused without it")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="the server log's level (uvicorn's): info logs each request")


def _origin(text: str) -> str:
    """argparse type: an origin as a browser's Origin header writes it, which CORS compares as text: a trailing slash
    or a path (`http://localhost:3000/`, copied from the address bar), capitals, a default port or "" (an unset
    variable) matched no browser's call, and every call from the page failed with only the browser's CORS error."""
    from urllib.parse import urlsplit

    if text in ("*", "null"):  # any origin; the one a file:// page or a sandboxed frame sends
        return text
    try:
        parts = urlsplit(text)
        bare = parts.scheme and parts.hostname and "@" not in parts.netloc and parts.port != 0
    except ValueError:  # a port that is not a number, or out of range
        bare = False
    origin = None
    if bare:  # as a browser writes it: the scheme and host in lower case, no port where it is the scheme's default, a
        # port without leading zeros, a host name in its IDNA (punycode) form
        scheme, port = parts.scheme.lower(), parts.port
        try:
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            host = parts.hostname
        host = f"[{host}]" if ":" in host else _ipv4_as_browsers_write_it(host)
        shown = port is not None and port != {"http": 80, "https": 443}.get(scheme)
        origin = f"{scheme}://{host}" + (f":{port}" if shown else "") if host is not None else None
    if text == origin:
        return text
    hint = f" (did you mean {origin}?)" if origin else ""
    raise argparse.ArgumentTypeError(f"{text!r} is not an origin: scheme://host[:port] with no path, as a browser "
                                     f"sends it (http://localhost:3000), or *{hint}")


def _ipv4_as_browsers_write_it(host: str) -> str | None:
    """A host whose last label is a number is an IPv4 address to a browser (the URL standard), which writes it in
    dotted decimal: 0x7f.0.0.1, 0177.0.0.1, 127.1 and 2130706433 all send Origin http://127.0.0.1. None: no
    address (256.1.1.1, 1.2.3.4.5), a URL no browser loads."""
    import re
    import socket

    bare = host.removesuffix(".")
    if not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", bare.rsplit(".", 1)[-1]):
        return host  # a name
    try:
        return socket.inet_ntoa(socket.inet_aton(bare))
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    try:
        # every library of the extra, not only those the app imports at once: the `ui` extra (Gradio) brings fastapi
        # and uvicorn without prometheus_client, whose import in create_app then failed as a traceback
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn

        from neurallayers.serve.app import create_app
    except ImportError as e:  # missing, or too old (pydantic < 2.5 has no Discriminator: a plain ImportError)
        what = f"{e.name} is missing" if isinstance(e, ModuleNotFoundError) else f"an older library: {e}"
        raise UserError(f"serving needs the 'serve' extra ({what}): pip install -U 'neurallayers[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be in [0, 65535]")
    if args.max_queue < 0:
        raise UserError(f"--max-queue {args.max_queue}: must be >= 0")
    if not args.shutdown_timeout >= 0 or math.isinf(args.shutdown_timeout):  # NaN fails the first test
        # uvicorn and the engine would read it only at SIGTERM: NaN and inf crash the drain, -1 fails what is in flight
        raise UserError(f"--shutdown-timeout {args.shutdown_timeout}: must be a finite number of seconds >= 0")
    if args.max_model_len is not None and args.max_model_len < 2:  # create_app would name its argument
        raise UserError(f"--max-model-len {args.max_model_len}: must be >= 2 (a prompt token and a reply's)")
    if not args.max_body_mb > 0 or math.isinf(args.max_body_mb):  # NaN fails the first test
        raise UserError(f"--max-body-mb {args.max_body_mb}: must be a finite number of MiB > 0")
    if args.model_root is not None and not os.path.isdir(args.model_root):  # create_app would name its argument
        raise UserError(f"--model-root {args.model_root}: not a folder")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():  # an empty key would serve everyone: say so rather than open up
        where = "--api-key" if args.api_key is not None else f"${API_KEY_ENV}"
        raise UserError(f"{where} is empty: give a key, or leave it unset to serve without one")
    sock = bind_socket(args.host, args.port)  # before loading the model: a port in use fails at once, in one line
    if args.compile:
        print("neurallayers serve: compiling the decode step before serving (15-60 s)", file=sys.stderr, flush=True)
    from neurallayers.cli.chat import _template_choice

    app = create_app(args.path, model_name=args.model_name, api_key=api_key,
                     max_concurrency=args.max_concurrency, max_queue=args.max_queue, cors_origins=args.cors_origin,
                     model_root=args.model_root, shutdown_timeout=args.shutdown_timeout, device=args.device,
                     dtype=torch_dtype(args.dtype), compile=args.compile, allow_pickle=args.allow_pickle,
                     chat_template=_template_choice(args.chat_template, None),  # a file's text; names: create_app
                     trust_request_chat_template=args.trust_request_chat_template, max_model_len=args.max_model_len,
                     max_body_mb=args.max_body_mb)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.mark_draining()  # a request that still reaches us gets 503, not a half-served answer
            super().handle_exit(sig, frame)

    # The engine ends what is left at --shutdown-timeout; uvicorn then gives those 503s a moment to go out before it
    # cancels the handlers still running (which a client would see as a plain-text 500 or a cut stream).
    config = uvicorn.Config(app, host=args.host, port=sock.getsockname()[1], log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout + ANSWER_GRACE_S)
    server = Server(config)
    # A SIGTERM stops the server gracefully from here on, also before uvicorn installs its own handler (a no-op here
    # lost one that came in between: the server served on). uvicorn re-raises the SIGTERM it caught once it has
    # stopped, into the handler it restores, this one, so a graceful stop ends the process normally (status 0).
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        _announce(args, app.state.holder.current, sock, api_key)  # after that: a supervisor may stop us at once
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0


def _announce(args: argparse.Namespace, served, sock: socket.socket, api_key: str | None) -> None:
    port = sock.getsockname()[1]  # --port 0: the port the system chose
    host = url_host(args.host)  # an IPv6 address goes in brackets in a URL
    print(f"neurallayers serve: {served.name!r} ({served.kind}, context {served.block_size}) on "
          f"http://{host}:{port}" + (" (API key required)" if api_key else ""), file=sys.stderr, flush=True)
