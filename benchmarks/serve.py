"""Serving load test over loopback: N concurrent streaming clients against `neurallayers serve`, continuous batching
against one request at a time, on the same model in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve.py [--model PATH] [--preset gpt2] [--clients 1,4,8,16]
        [--seconds 20] [--max-tokens 64] [--target http|engine] [--compare one-at-a-time|plain] [--soak SECONDS]

Two servers run side by side (one is idle while the other is measured): `--max-concurrency max(clients)` (batching)
and `--max-concurrency 1` (one at a time; the others wait in its queue). They take turns at each client count, in
ABBA order, so the noise of a shared machine falls on both. Each client streams /v1/completions requests back to back
for a bounded time; at the deadline the clients disconnect (the server cancels what they left). Reported per server
and client count: completed requests/s, output tokens/s (tokens received inside the window), time to first token and
inter-token latency (p50/p99, as the client sees them), the server's CPU time per output token (user + system, from
/proc: unlike wall time it hardly moves when other processes share the cores) and failed requests; then the
batching / one-at-a-time ratios of output tokens/s and of CPU time per token.

--threads sets the servers' OMP_NUM_THREADS (default: this process's). On a machine that other jobs keep busy, use
1: OpenMP's threads wait for each other at every operator, and a descheduled one stalls the whole step.

`--compare plain` pits the batching server with the compiled decode step (`serve --compile`, generation.fast) against
the same batching server without it, instead of against one at a time.

`--target engine` drives the Engine in-process through the same client loop (no HTTP), to separate the engine's
speed from the server's. `--soak SECONDS` keeps 8 clients on the batching server and samples its resident memory.

Without --model, a random-weight model of --preset with the GPT-2 tokenizer is written once as a run directory
under --cache-dir (random weights decode at the same speed as trained ones; the prompts are fixed text, and the
requests ask for max_tokens with greedy decoding, so a random model rarely stops early at eos).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROMPTS = ["Once upon a time, in a land far away,", "The quick brown fox jumps over the lazy dog, and then",
           "In the beginning the Universe was created. This has made a lot of people", "def fibonacci(n):",
           "To be, or not to be, that is the question:", "The capital of France is",
           "Four score and seven years ago our fathers brought forth", "It was the best of times, it was the"]


# ----- the model -----
def random_run(preset: str, cache_dir: Path) -> Path:
    """A run directory with random weights of `preset` (vocabulary resized to the GPT-2 tokenizer's)."""
    run_dir = cache_dir / f"random-{preset}"
    if (run_dir / "model.safetensors").is_file():
        return run_dir
    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models import build_model
    from neurallayers.training.config import RunConfig
    from neurallayers.weights import save_safetensors

    tok = Tokenizer.load("gpt2")
    cfg = ModelConfig.from_name(preset).replace(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    RunConfig(model=cfg).to_yaml(tmp / "config.yaml")
    save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tok.save(tmp)
    os.replace(tmp, run_dir)
    return run_dir


# ----- measurements -----
@dataclass
class Load:
    """What the clients of one measurement saw."""

    seconds: float = 0.0
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu: float | None = None  # CPU seconds the server (or the in-process engine) spent in the window

    def row(self, name: str, clients: int) -> list[str]:
        def pct(xs: list[float], q: float) -> str:
            return f"{1000 * float(np.percentile(xs, q)):.0f}" if xs else "-"

        return [name, str(clients), f"{self.completed / self.seconds:.2f}", f"{self.tokens / self.seconds:.1f}",
                pct(self.ttft, 50), pct(self.ttft, 99), pct(self.itl, 50), pct(self.itl, 99),
                f"{1000 * self.cpu / self.tokens:.1f}" if self.cpu and self.tokens else "-", str(self.failed)]


async def http_request(client, url: str, prompt: str, deadline: float, load: Load, *, max_tokens: int) -> None:
    """One streaming completion; tokens count from the final usage, or per text chunk when cut at the deadline."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last, chunks, usage, done = None, 0, None, False
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                load.failed += 1
                load.errors.append(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                return
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if now > deadline:
                    break
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    load.failed += 1
                    load.errors.append(str(event["error"])[:200])
                    return
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
                if event["choices"] and event["choices"][0]["text"]:
                    (load.ttft if last is None else load.itl).append(now - (start if last is None else last))
                    last, chunks = now, chunks + 1
    except Exception as e:  # noqa: BLE001 - a failed request is a result here
        if time.perf_counter() < deadline:
            load.failed += 1
            load.errors.append(f"{type(e).__name__}: {e}"[:200])
        return
    if done:
        load.completed += 1
        load.tokens += usage if usage is not None else chunks
    elif time.perf_counter() > deadline:
        load.tokens += chunks  # cut at the deadline: its tokens so far count
    else:
        load.failed += 1
        load.errors.append("the stream ended without [DONE]")


async def engine_request(engine, prompt: list[int], deadline: float, load: Load, *, max_tokens: int) -> None:
    """The same client, talking to an in-process Engine."""
    from neurallayers.generation import GenerationConfig

    start, last, n = time.perf_counter(), None, 0
    req = engine.submit(prompt, GenerationConfig(temperature=0, max_new_tokens=max_tokens))
    try:
        async for ev in req.aiter():
            now = time.perf_counter()
            if now > deadline:
                load.tokens += n
                return  # leaving the iteration cancels the request
            if ev.token_id is not None:
                (load.ttft if last is None else load.itl).append(now - (start if last is None else last))
                last, n = now, n + 1
    except Exception as e:  # noqa: BLE001
        load.failed += 1
        load.errors.append(f"{type(e).__name__}: {e}"[:200])
        return
    load.completed += 1
    load.tokens += n


async def run_clients(make_request, clients: int, seconds: float) -> Load:
    """`clients` loops issuing requests back to back until `seconds` have passed."""
    load = Load()
    start = time.perf_counter()
    deadline = start + seconds

    async def client(i: int) -> None:
        k = i
        while time.perf_counter() < deadline:
            await make_request(PROMPTS[k % len(PROMPTS)], deadline, load)
            k += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    load.seconds = seconds
    return load


# ----- servers -----
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m neurallayers serve` as a subprocess on a free loopback port."""

    def __init__(self, model: Path, *, max_concurrency: int, max_queue: int, threads: int,
                 compile: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "neurallayers", "serve", str(model), "--port", str(self.port),
             "--max-concurrency", str(max_concurrency), "--max-queue", str(max_queue), "--log-level", "warning",
             *(["--compile"] if compile else [])],
            env=env)

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server on port {self.port} did not answer /health in {timeout:.0f} s")

    def busy(self) -> float:
        """Sequences running plus waiting, from /metrics."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(("neurallayers_requests_running ", "neurallayers_requests_waiting ")))

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the requests the last clients left behind have been cancelled."""
        end = time.monotonic() + timeout
        while self.busy() > 0:
            if time.monotonic() > end:
                raise TimeoutError("the server still holds requests from clients that went away")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc (Linux only)")

    def stop(self) -> int:
        self.proc.terminate()  # SIGTERM: a graceful drain
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# ----- the runs -----
def table(rows: list[list[str]]) -> str:
    head = ["server", "clients", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms",
            "CPU ms/tok", "failed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


async def measure_http(url: str, clients: int, seconds: float, max_tokens: int) -> Load:
    """`clients` streaming clients for `seconds`."""
    import httpx

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10), limits=limits) as client:
        return await run_clients(functools.partial(http_request, client, url, max_tokens=max_tokens), clients, seconds)


def pair(args: argparse.Namespace) -> dict[str, tuple[int, bool]]:
    """The two servers compared: name -> (max concurrency, compiled decode step)."""
    top = max(args.clients)
    if args.compare == "plain":
        return {"batching, compiled": (top, True), "batching": (top, False)}
    return {"batching": (top, False), "one-at-a-time": (1, False)}


def bench_http(model: Path, args: argparse.Namespace) -> list[tuple[str, int, Load]]:
    top = max(args.clients)
    servers = {name: Server(model, max_concurrency=rows, max_queue=top, threads=args.threads, compile=comp)
               for name, (rows, comp) in pair(args).items()}
    results = []
    try:
        for s in servers.values():
            s.wait_ready(timeout=600.0)  # a compiled server compiles its decode step first
        for n in args.clients:
            order = list(servers.items())
            for name, s in order if len(results) % 4 == 0 else order[::-1]:  # ABBA: neither always goes first
                asyncio.run(measure_http(s.url, 1, 2, 8))  # warm-up
                cpu = s.cpu_seconds()
                load = asyncio.run(measure_http(s.url, n, args.seconds, args.max_tokens))
                load.cpu = s.cpu_seconds() - cpu
                s.settle()
                results.append((name, n, load))
                print(table([load.row(name, n)]).splitlines()[-1], flush=True)
        codes = {name: s.stop() for name, s in servers.items()}
        print(f"servers stopped with SIGTERM: exit status {codes}")
    finally:
        for s in servers.values():
            if s.proc.poll() is None:
                s.proc.kill()
    return results


def bench_engine(model: Path, args: argparse.Namespace) -> list[tuple[str, int, Load]]:
    import torch

    from neurallayers.api import load
    from neurallayers.generation.fast import prepare_for_decode
    from neurallayers.serve.engine import Engine

    torch.set_num_threads(args.threads)
    top = max(args.clients)
    engines = {}
    for name, (rows, comp) in pair(args).items():
        lm, tok = load(model)  # a model each: the compiled step belongs to its model
        engines[name] = Engine(prepare_for_decode(lm) if comp else lm, tok, max_batch=rows, max_queue=top)
    prompts = {p: tok.encode(p) for p in PROMPTS}
    for e in engines.values():
        e.warm_up()
        e.start()
    results = []
    for n in args.clients:
        order = list(engines.items())
        for name, e in order if len(results) % 4 == 0 else order[::-1]:
            def request(p: str, d: float, load: Load, e=e, m: int = args.max_tokens):
                return engine_request(e, prompts[p], d, load, max_tokens=m)

            asyncio.run(run_clients(functools.partial(request, m=8), 1, 1))
            cpu = time.process_time()
            result = asyncio.run(run_clients(request, n, args.seconds))
            result.cpu = time.process_time() - cpu  # the clients' share included
            while e.stats()["running"] + e.stats()["waiting"]:
                time.sleep(0.05)
            results.append((name, n, result))
            print(table([result.row(name, n)]).splitlines()[-1], flush=True)
    for e in engines.values():
        e.shutdown(drain=False)
    return results


def soak(model: Path, args: argparse.Namespace) -> None:
    """8 clients on the batching server for args.soak seconds; the server's RSS every args.sample seconds."""
    import httpx

    server = Server(model, max_concurrency=8, max_queue=8, threads=args.threads)
    samples: list[tuple[float, float, int]] = []
    try:
        server.wait_ready()
        base = server.rss_mb()

        async def main() -> Load:
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10)) as client:
                load = Load()
                task = asyncio.ensure_future(run_clients(
                    lambda p, d, _: http_request(client, server.url, p, d, load, max_tokens=args.max_tokens), 8,
                    args.soak))
                start = time.perf_counter()
                while not task.done():
                    samples.append((time.perf_counter() - start, server.rss_mb(), load.completed))
                    await asyncio.wait([task], timeout=args.sample)
                await task
                load.seconds = args.soak
                return load

        load = asyncio.run(main())
        server.settle()
        samples.append((args.soak, server.rss_mb(), load.completed))
    finally:
        code = server.stop()
    print(f"\nsoak: 8 clients for {args.soak:.0f} s, {load.completed} requests, {load.failed} failed, "
          f"{load.tokens / args.soak:.1f} tok/s; server RSS before load {base:.0f} MB; exit status {code}\n")
    print("| t (s) | RSS (MB) | requests done |\n|---|---|---|")
    for t, rss, done in samples:
        print(f"| {t:.0f} | {rss:.0f} | {done} |")
    warm = [rss for t, rss, _ in samples if t >= min(30.0, args.soak / 4)]
    if len(warm) >= 2:
        print(f"\nRSS after warm-up: min {min(warm):.0f} MB, max {max(warm):.0f} MB, last - first "
              f"{warm[-1] - warm[0]:+.0f} MB")
    for err in sorted(set(load.errors))[:5]:
        print("error:", err)


def main() -> None:
    from bench_common import argument_parser, at_least, counts, seconds

    parser = argument_parser(__doc__, whole=True)
    parser.add_argument("--model", type=Path, help="a run directory or HF folder (default: a random --preset)")
    parser.add_argument("--preset", default="gpt2", help="the random model's shape (with the GPT-2 tokenizer)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "neurallayers-bench",
                        help="where the random model is written once")
    parser.add_argument("--clients", default="1,4,8,16", type=lambda s: [int(x) for x in counts(s).split(",")],
                        help="concurrent streaming clients, a run for each count")
    parser.add_argument("--seconds", type=seconds(), default=20.0, help="measured time per server and client count")
    parser.add_argument("--max-tokens", type=at_least(1), default=64, help="max_tokens of each request")
    parser.add_argument("--threads", type=at_least(1), default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="the servers' OMP_NUM_THREADS (default: this process's, else 2)")
    parser.add_argument("--target", choices=["http", "engine"], default="http",
                        help="the server over HTTP, or its engine in-process")
    parser.add_argument("--compare", choices=["one-at-a-time", "plain"], default="one-at-a-time",
                        help="the server the batching one is compared with (plain: batching compiled vs not)")
    parser.add_argument("--soak", type=seconds(zero=True), default=0.0,
                        help="run the soak test for this many seconds instead")
    parser.add_argument("--sample", type=seconds(), default=10.0, help="soak: seconds between RSS samples")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = args.model or random_run(args.preset, args.cache_dir)
    print(f"model: {model}; {args.target}; clients {args.clients}; {args.seconds:.0f} s each; "
          f"max_tokens {args.max_tokens}; {args.threads} threads", flush=True)
    if args.soak:
        soak(model, args)
        return
    results = (bench_http if args.target == "http" else bench_engine)(model, args)
    print("\n" + table([load.row(name, n) for name, n, load in results]))
    by = {(name, n): load for name, n, load in results}
    first, second = pair(args)
    for n in args.clients:
        a, b = by[(first, n)], by[(second, n)]
        if a.tokens and b.tokens:
            line = f"\n{n} clients: {first} gives {a.tokens / b.tokens:.2f}x the output tokens/s of {second}"
            if a.cpu and b.cpu:
                line += f", at {(a.cpu / a.tokens) / (b.cpu / b.tokens):.2f}x the CPU time per token"
            print(line)
    errors = sorted({e for _, _, load in results for e in load.errors})
    for err in errors[:10]:
        print("error:", err)


if __name__ == "__main__":
    main()
