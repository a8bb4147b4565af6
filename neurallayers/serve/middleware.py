"""ASGI middleware: the API key check and the draining gate (SIGTERM: refuse new requests with 503)."""

from __future__ import annotations

import hmac
import json

from neurallayers.serve.errors import error_body

# Paths that answer without the API key, and while draining: liveness probes (load balancers; /ping is vLLM's and
# SageMaker's name for /health). Every other path needs the key (RELIABILITY item 18), a route added later too, where
# vLLM leaves every path outside /v1 open (/version, /metrics, /tokenize): those show the model, its load or its text.
OPEN_PATHS = frozenset({"/health", "/ping"})
MAX_BODY_BYTES = 32 * 2**20  # a request body larger than this is refused (413) before it is read


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class GateMiddleware:
    """Refuses requests before any route runs: 503 while the server drains, 401 without the right key (on every path
    but OPEN_PATHS), 413 when the body is over `max_body_bytes` (a declared Content-Length at once, a chunked body
    as soon as it passes the limit).

    The key is compared with hmac.compare_digest (constant time), so response timing does not reveal how much of a
    guess was right.

    Args:
        app: the ASGI app inside.
        api_key: the key clients must send as `Authorization: Bearer <key>`; None turns the check off.
        draining: a callable that is True once shutdown has begun.
        max_body_bytes: the largest request body accepted.
    """

    def __init__(self, app, *, api_key: str | None, draining, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        # HTTP drops whitespace around a header value, so a key read with a trailing newline (a secret file) could
        # never be sent: compare without it
        self.key = api_key.strip().encode() if api_key else None
        self.draining = draining
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.draining() and path not in OPEN_PATHS:
            body = error_body("the server is shutting down and accepts no new requests", type="service_unavailable",
                              code="shutting_down")
            await _send_json(send, 503, body, [(b"connection", b"close"), (b"retry-after", b"1")])
            return
        # a CORS preflight carries no Authorization header (a browser sends none), as vLLM lets OPTIONS through
        keyless = path in OPEN_PATHS or scope.get("method") == "OPTIONS"
        if self.key is not None and not keyless and not self._authorized(scope):
            body = error_body("missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                              type="authentication_error", code="invalid_api_key")
            await _send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])
            return
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > self.max_body_bytes:
            body = error_body(f"the request body has {int(length)} bytes; the limit is {self.max_body_bytes}",
                              param="body", code="request_too_large")
            await _send_json(send, 413, body, [(b"connection", b"close")])
            return
        await self.app(scope, *self._limited(receive, send))

    def _limited(self, receive, send):
        """(receive, send) for the app that count the body as it arrives: a body without Content-Length (chunked) is
        refused with 413 once it passes the limit, without reading the rest; the app then sees a disconnect, and
        whatever it answers is dropped."""
        state = {"read": 0, "started": False, "refused": False}

        async def limited_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_body_bytes:
                    if not state["started"]:
                        body = error_body(f"the request body is over the limit of {self.max_body_bytes} bytes",
                                          param="body", code="request_too_large")
                        await _send_json(send, 413, body, [(b"connection", b"close")])
                    state["refused"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            if state["refused"]:
                return
            state["started"] = True
            await send(message)

        return limited_receive, guarded_send

    def _authorized(self, scope) -> bool:
        scheme, _, token = _header(scope, b"authorization").encode("latin-1").partition(b" ")
        # compare even when the scheme is wrong, so every refusal takes the same time
        ok = hmac.compare_digest(token.strip(), self.key)
        return ok and scheme.lower() == b"bearer"


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""
