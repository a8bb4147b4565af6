"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide) and the ASGI
middleware that counts every request by route and status."""

from __future__ import annotations

import time
from collections.abc import Callable

# seconds; generation latencies on CPU range from milliseconds (one token) to minutes (long completions)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# the status of a request whose client left before its response ended: nginx's "client closed request", as
# starlette_exporter and SGLang count it; vLLM counts such a request as aborted, never among its successes
CLIENT_CLOSED = 499


class Metrics:
    """The server's metrics; `stats` returns the engines' stats() (ModelHolder.stats) for the gauges at scrape time."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("neurallayers_requests", "HTTP requests by route and status; a client that "
                                f"disconnected before its response ended counts as {CLIENT_CLOSED} (not a success)",
                                ["route", "status"], registry=r)
        self.e2e = Histogram("neurallayers_request_latency_seconds", "end-to-end request latency", ["route"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("neurallayers_time_to_first_token_seconds", "request arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("neurallayers_inter_token_latency_seconds", "time between tokens of one sequence",
                             buckets=TOKEN_BUCKETS, registry=r)
        self.prompt_tokens = Counter("neurallayers_prompt_tokens", "prompt tokens processed", registry=r)
        self.generated_tokens = Counter("neurallayers_generation_tokens", "tokens generated", registry=r)
        running = Gauge("neurallayers_requests_running", "sequences decoding now", registry=r)
        waiting = Gauge("neurallayers_requests_waiting", "sequences queued for a decode slot", registry=r)
        batch = Gauge("neurallayers_batch_size", "sequences in the last decode step", registry=r)
        running.set_function(lambda: float(stats().get("running", 0)))
        waiting.set_function(lambda: float(stats().get("waiting", 0)))
        batch.set_function(lambda: float(stats().get("last_batch_size", 0)))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TokenClock:
    """Per-sequence timing: TTFT from the request's arrival, then the gap between successive tokens."""

    def __init__(self, metrics: Metrics, started: float) -> None:
        self.metrics, self.started, self.last = metrics, started, None

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.started)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now


async def _client_left(scope, receive) -> bool:
    """Whether the client has disconnected, without waiting (Starlette's Request.is_disconnected: the server has its
    http.disconnect ready at once then, else the receive is cancelled). Called once the app has read its body: a
    message it would have wanted is not taken from it."""
    from starlette.requests import Request

    return await Request(scope, receive).is_disconnected()


class MetricsMiddleware:
    """Counts requests by (route template, status) and times them end to end, streams included.

    Paths that match no route are counted as "other", so scanners cannot blow up the label set. A request whose
    client disconnected before the last byte of its response was sent counts as CLIENT_CLOSED (499), whatever status
    the server had sent or was about to send: a stream's 200 went out with its first chunk, and a non-streaming
    handler answers (to nobody) after its generation was cancelled. The disconnect is seen as the server sees it: an
    `http.disconnect` the app read (streams and generation routes watch for it), one the server holds when the
    response's last part goes out (routes that never read it: embeddings, tokenize), or a send that failed.
    """

    def __init__(self, app, *, metrics: Metrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, ended, gone = 500, False, False
        started = time.perf_counter()

        async def watch_receive():
            nonlocal gone
            message = await receive()
            # the server also reports a disconnect once the response has ended: that one is no early leave
            if message["type"] == "http.disconnect" and not ended:
                gone = True
            return message

        async def send_status(message) -> None:
            nonlocal status, ended, gone
            if message["type"] == "http.response.start":
                status = message["status"]
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            if last and not gone:  # a route that never reads `receive` (embeddings, tokenize) sees no disconnect
                gone = await _client_left(scope, receive)
            try:
                await send(message)
            except OSError:  # the connection is gone (ASGI 2.4 servers raise here)
                gone = True
                raise
            if last:
                ended = True

        try:
            await self.app(scope, watch_receive, send_status)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route, str(CLIENT_CLOSED if gone else status)).inc()
            self.metrics.e2e.labels(route).observe(time.perf_counter() - started)

    def _route(self, scope) -> str:
        # the template of the route the router matched ("/v1/models/{model_id:path}" for any model id; it leaves it
        # in the shared scope), else the path itself when it is a route's (a request refused before routing)
        matched = getattr(scope.get("route"), "path", None)
        if matched in self.routes:
            return matched
        return scope["path"] if scope["path"] in self.routes else "other"
