"""`neurallayers batch`: offline, resumable generation (decoder) or embedding (encoder) of a JSONL file.

Input lines: {"id": optional, "prompt": "...", per-line settings such as "max_new_tokens"} ("text" works too);
the full format, the outputs and how resuming works are described in the docstring of neurallayers.batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

from neurallayers.cli.common import add_device_dtype, add_model_path, load_model, non_empty, positive_int
from neurallayers.cli.generate import (
    add_sampling_arguments,
    check_vocab,
    flag_names,
    generation_config,
    use_model_defaults,
)

EPILOG = """input: one JSON object per line, e.g.
  {"id": "q1", "prompt": "Once upon a time", "max_new_tokens": 32, "temperature": 0}
"id" is optional (default: the line number); "text" may stand for "prompt". Lines may override max_new_tokens,
min_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty,
no_repeat_ngram_size, stop, seed and ignore_eos. An encoder model embeds each "text" instead. A bad line (not JSON,
an unknown field, no prompt, a bad value) stops the run before any work, naming its line number.

An OpenAI Batch API file ({"custom_id", "method": "POST", "url", "body"} per line, as vllm run-batch reads) is
answered by the `neurallayers serve` server, run in-process, --batch-size requests in flight at once (the next sent as
soon as one comes back): {"id", "custom_id", "response", "error"}.

output: .jsonl (one result per input line, in input order when done); .npy / .npz for embeddings.
Interrupted? Run the same command again: finished batches are kept, the rest is computed. A resume with a changed
input file, settings or model is refused (pass --overwrite to start again), and so is an output file that no
interrupted run left (--overwrite replaces it)."""


# The in-process server's queue: at most --batch-size requests are in flight, so this bounds nothing but refusals
UNBOUNDED_QUEUE = 2**62


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_path(parser)
    parser.add_argument("--input", type=non_empty, required=True, help="the prompts: a JSONL file (see below)")
    parser.add_argument("--output", type=non_empty, required=True,
                        help="results .jsonl; for an encoder also .npy (N x C float32) or .npz (ids, embeddings)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="prompts per batch (an OpenAI Batch file: requests in flight at once)")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier run's output instead of resuming")
    parser.add_argument("--write-server-errors", action="store_true",
                        help="an OpenAI Batch file: write a server fault (5xx) as its line's error and go on, as vllm "
                        "run-batch does (default: stop there; the same command again asks anew)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_dtype(parser)
    _add_decoding(parser)
    _add_embedding(parser)


def _add_decoding(parser: argparse.ArgumentParser) -> None:
    # Seeded by default, so that a resumed sampling run gives what an uninterrupted one would
    add_sampling_arguments(parser, seed=0, seed_help='each line samples with a seed made from this one and its id, or '
                           'with its own "seed" (default: 0)')


def _add_embedding(parser: argparse.ArgumentParser) -> None:
    e = parser.add_argument_group("embeddings (encoder models)")
    e.add_argument("--pooling", type=non_empty, default=None,
                   help="mean, cls, max, mean_sqrt_len_tokens, weightedmean, lasttoken, or several joined by + "
                   "(default: the model's sentence-transformers pooling, else mean)")
    e.add_argument("--no-normalize", action="store_true", help="keep raw vectors instead of L2-normalising them")
    e.add_argument("--max-length", type=positive_int, default=None,
                   help="truncate texts to this many tokens (unset: the tokenizer's limit, at most the model's "
                   "context length)")


def run(args: argparse.Namespace) -> int:
    from neurallayers.api import resolve_model_path
    from neurallayers.batch import model_files_identity, run_batch

    if Path(args.input).is_dir():
        raise IsADirectoryError(f"--input {args.input} is a folder; give a JSONL file")
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"--input: no such file: {args.input}")
    _check_output_folder(args.output)
    from neurallayers.batch.requests import is_request_file

    if is_request_file(args.input):
        return _run_openai_batch(args)
    if args.write_server_errors:  # a {"prompt": ...} file is answered in this process: no server to fail
        raise ValueError("--write-server-errors applies to an OpenAI Batch file (custom_id, method, url, body lines) "
                         f"only; {args.input} holds prompt lines")
    _check_lines_before_loading(args)
    model, tokenizer = load_model(args.path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    _check_flags_apply(args, causal=model.config.causal)
    if model.config.causal:
        use_model_defaults(args, args.path)
    else:
        _check_embedding_flags(args, block_size=model.config.block_size)
    config = generation_config(args) if model.config.causal else None
    if config is not None:
        check_vocab(config, model)
    # the run's settings by their flags; a line's fields keep the line's names
    with _noting_interrupt(args), flag_names(bounds=False):
        result = run_batch(model, tokenizer, args.input, args.output, config=config, batch_size=args.batch_size,
                           pooling=args.pooling, normalize=False if args.no_normalize else None,
                           max_length=args.max_length, model_files=model_files_identity(resolve_model_path(args.path)),
                           overwrite=args.overwrite, progress=not args.no_progress)
    return _report(result, "records")


def _check_lines_before_loading(args: argparse.Namespace) -> None:
    """A bad line named before the model loads (a large model's load took a minute, then line 3 was refused): the
    lines are read as run_batch reads them, for generation or embedding as the model's config says."""
    from neurallayers.api import folder_model_config, resolve_model_path
    from neurallayers.batch.inputs import read_inputs

    try:
        causal = folder_model_config(resolve_model_path(args.path)).causal
    except Exception:  # noqa: BLE001 - no readable config: load_model names what is wrong with the model
        return
    read_inputs(args.input, mode="generate" if causal else "embed")


@contextlib.contextmanager
def _noting_interrupt(args: argparse.Namespace):
    """Ctrl-C: what is written stays; say how to go on (the CLI then prints "interrupted")."""
    try:
        yield
    except KeyboardInterrupt:
        print(_interrupted_note(Path(args.output), overwrite=args.overwrite), file=sys.stderr)
        raise


def _report(result, what: str) -> int:
    note = f", {result.repaired_bytes} bytes of an unfinished batch redone" if result.repaired_bytes else ""
    print(f"{result.output}: {result.total} {what} ({result.computed} computed now, {result.resumed} from an "
          f"earlier run{note})")
    return 0


def _run_openai_batch(args: argparse.Namespace) -> int:
    """An OpenAI Batch API file (custom_id, method, url, body): each body goes to the server `neurallayers serve`
    runs, here in-process on a loopback port, so every line gets that server's answer (its routes, defaults, model
    name and errors)."""
    from neurallayers.api import resolve_model_path
    from neurallayers.batch import model_files_identity
    from neurallayers.batch.requests import ServerFault, read_requests, run_requests

    given = _given(args, _add_decoding) + _given(args, _add_embedding)
    if given:
        raise ValueError(f"{args.input} is an OpenAI Batch file, whose bodies hold their own settings: "
                         f"{', '.join(given)} {'do' if len(given) > 1 else 'does'} not apply; leave "
                         f"{'them' if len(given) > 1 else 'it'} out")
    from neurallayers.cli.common import UserError, torch_dtype

    try:  # every library of the serve extra, as `neurallayers serve` checks them
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401

        from neurallayers.serve.app import create_app
    except ImportError as e:
        what = f"{e.name} is missing" if isinstance(e, ModuleNotFoundError) else f"an older library: {e}"
        raise UserError(f"an OpenAI Batch file is answered by the server, which needs the 'serve' extra ({what}): "
                        "pip install -U 'neurallayers[serve]'") from None

    # a bad envelope is named before the server loads the model; the requests are not kept (run_requests reads them)
    body_limit_mb = _body_limit_mb(read_requests(args.input))
    # --batch-size sequences decode together and the rest wait their turn: a queue sized by --batch-size refused a
    # request of many prompts x n (the server's 400 "takes at most N sequences") or, sent with others, gave it a 429,
    # written as its answer, where vllm run-batch answers each request
    app = create_app(args.path, max_concurrency=args.batch_size, max_queue=UNBOUNDED_QUEUE, device=args.device,
                     dtype=torch_dtype(args.dtype), allow_pickle=args.allow_pickle,
                     max_body_mb=body_limit_mb)
    folder = resolve_model_path(args.path)
    # the server also takes its sampling defaults from generation_config.json: a changed one is another run
    defaults = folder / "generation_config.json"
    identity = {"model": str(folder.resolve()), "dtype": args.dtype, "files": model_files_identity(folder),
                "generation_config": defaults.read_text() if defaults.is_file() else None}
    try:
        with _Loopback(app) as post, _noting_interrupt(args):
            result = run_requests(args.input, args.output, post, model_identity=identity, batch_size=args.batch_size,
                                  overwrite=args.overwrite, progress=not args.no_progress,
                                  write_server_errors=args.write_server_errors)
    except ServerFault as e:  # one line, as a full disk is: what was written stays, the rerun goes on
        raise UserError(f"{e} (or add --write-server-errors to write such a failure as its line's error and go on, "
                        "as vllm run-batch does)") from None
    return _report(result, "requests")


def _body_limit_mb(requests) -> float:
    """The in-process server's body limit: the file's largest body, where it passes the served default (32 MiB). The
    file is local and already read whole, so no body is refused for its size, as vllm run-batch refuses none; the
    default's 413 cut such a body off mid-send, and the run died with a traceback of "Connection reset by peer"."""
    from neurallayers.serve.middleware import MAX_BODY_BYTES

    return max(MAX_BODY_BYTES, *(len(_body_bytes(r)) for r in requests)) / 2**20


def _body_bytes(request) -> bytes:
    """A request's body as the in-process server receives it."""
    return json.dumps(request.body).encode()


class _Loopback:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread; calling it posts one request (from any thread).

    Left by an exception (Ctrl-C, a failed write), it ends the requests still in flight (a 503 each, which nobody
    reads): the server's own shutdown waits for their generations to finish, so a Ctrl-C did not stop the run."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.01)
        import urllib.request

        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy for loopback
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.app.state.holder.cut_after(0)  # as SIGTERM's drain time running out, now
        self.server.should_exit = True
        self.thread.join()

    def __call__(self, request) -> tuple[int, dict]:
        return self._post(request)

    def _post(self, request) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + request.url, data=_body_bytes(request),
                                     headers={"Content-Type": "application/json"})
        try:
            with self.opener.open(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:  # the server's 4xx/5xx, with its OpenAI error body
            return e.code, json.loads(e.read())


def _interrupted_note(output: Path, *, overwrite: bool) -> str:
    """Where the records written so far are, and the command that goes on from them: vectors wait in the parts
    folder (the .npy is written at the end), and rerun with --overwrite the command would discard them."""
    from neurallayers.batch import VECTOR_SUFFIXES

    kept = output.with_name(output.name + ".parts") if output.suffix.lower() in VECTOR_SUFFIXES else output
    how = "the same command without --overwrite" if overwrite else "the same command"
    return f"the records written so far are kept in {kept}: {how} goes on from them"


def _check_output_folder(output: str) -> None:
    """--output's folder is made when missing, but not where a file stands in its path (that said only "[Errno 17]
    File exists", after the model had loaded)."""
    from neurallayers.files import file_in_the_way

    if (blocker := file_in_the_way(output)) is not None:
        raise NotADirectoryError(f"--output {output}: {blocker} is a file, not a folder")


def _check_flags_apply(args: argparse.Namespace, *, causal: bool) -> None:
    """A decoder generates and an encoder embeds: the other kind's flags (--temperature for an encoder, --pooling for
    a decoder) were silently ignored, so a user believed the output sampled or pooled as asked."""
    unused = _given(args, _add_embedding if causal else _add_decoding)
    if unused:
        kind, use = ("a decoder, which generates", "an encoder's embeddings") if causal else \
            ("an encoder, which embeds", "a decoder's generation")
        raise ValueError(f"{args.path} is {kind}: {', '.join(unused)} {'are' if len(unused) > 1 else 'is'} for {use}; "
                         f"leave {'them' if len(unused) > 1 else 'it'} out")


def _check_embedding_flags(args: argparse.Namespace, *, block_size: int) -> None:
    """--pooling and --max-length refused by their flags: run_batch named its own arguments ("max_length=1: must be
    in [2, 512]"), which the command line never typed."""
    from neurallayers.embeddings import pooling_modes

    if args.pooling is not None:
        try:
            pooling_modes(args.pooling)
        except ValueError as e:
            raise ValueError(str(e).replace(f"pooling={args.pooling!r}", f"--pooling {args.pooling}", 1)) from None
    if args.max_length is not None and not 2 <= args.max_length <= block_size:
        raise ValueError(f"--max-length {args.max_length}: must be in [2, {block_size}] (tokens, up to the model's "
                         "context length)")


def _given(args: argparse.Namespace, add) -> list[str]:
    """The flags, of those `add(parser)` defines, that `args` sets to other than their defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return [action.option_strings[0] for action in parser._actions
            if getattr(args, action.dest) != action.default]
