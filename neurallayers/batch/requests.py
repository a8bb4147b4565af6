"""The OpenAI Batch API's input format, which `vllm run-batch` reads too: one request per line,

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [...]}}

answered, in input order, as `neurallayers serve` answers that body at that url:

    {"id": "batch_req_...", "custom_id": "q1", "response": {"status_code": 200, "request_id": "req_...",
     "body": {...}}, "error": null}

A body the server refuses (a bad temperature, another model's name) does not stop the others: its line has the
server's status code, a null body and the server's error object in "error", as vllm run-batch writes it. A server
fault (a 5xx: a model step out of memory, an engine that stopped) is no answer to the body: no more requests are sent
and the run stops with ServerFault, keeping the answers that came back, and a rerun asks again. A bad envelope (not
JSON, a missing or repeated custom_id, another method or url, a streamed body) stops the run before any work, naming
its line, as OpenAI refuses such a file at upload.

At most batch_size requests are in flight, the next sent as soon as one comes back (a rolling window: vllm run-batch
keeps its engine full, where chunks waited for their slowest request). Answers are journalled as they come back and
put in input order at the end, as the {"prompt": ...} format's results are (neurallayers.batch.journal), keyed by
custom_id; a rerun resumes from them.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from neurallayers.batch.fingerprint import FILES_SCHEME, _sha256
from neurallayers.batch.inputs import _numbered_lines, json_lines
from neurallayers.batch.journal import _append, _finish_jsonl, _line, _Progress, _resume_jsonl
from neurallayers.batch.run import LINE_SUFFIXES, BatchResult
from neurallayers.checks import is_int
from neurallayers.data.corpora import lone_surrogate
from neurallayers.files import exclusive

URLS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
ENVELOPE = ("custom_id", "method", "url", "body")


@dataclass
class Request:
    """One input line: its 0-based index among the requests, 1-based line number, custom_id, url and body."""

    index: int
    line: int
    custom_id: str
    url: str
    body: dict

    @property
    def key(self) -> str:
        return json.dumps(self.custom_id)


def is_request_file(path: str | os.PathLike) -> bool:
    """Whether the first record of a JSONL file is an OpenAI Batch request: it has a custom_id, a method or a url (no
    {"prompt": ...} line has these; one without its custom_id was read as such a line, refused for "unknown field
    'method'; allowed: id, prompt, ...", where read_requests names what the request lacks). Lines end as json_lines
    ends them: a file of lone CR line ends was one line, not JSON, and so read as {"prompt": ...} lines."""
    with Path(path).open("rb") as f:
        for _, raw in _numbered_lines(f):
            if raw.strip():
                try:
                    record = json.loads(raw.decode("utf-8-sig"))
                except ValueError:
                    return False  # read_inputs names the line
                return isinstance(record, dict) and any(k in record for k in ("custom_id", "method", "url"))
    return False


def read_requests(path: str | os.PathLike) -> list[Request]:
    """Parse and check the envelopes of an OpenAI Batch input file (blank lines skipped); bodies are the server's to
    check, line by line.

    Raises:
        ValueError: a line that is not a JSON object, lacks or repeats a custom_id (or has one that is not valid
            Unicode), names another method or url, has a body that is not an object or asks to stream; no requests.
    """
    path = Path(path)
    requests: list[Request] = []
    seen: dict[str, int] = {}
    for n, where, record in json_lines(path, example='{"custom_id": "r1", "method": "POST", "url": ..., "body": {}}'):
        if not isinstance(record, dict) or sorted(record) != sorted(ENVELOPE):
            raise ValueError(f"{where}: an OpenAI Batch request has exactly the fields {', '.join(ENVELOPE)}; "
                             f"{_envelope_words(record)}")
        cid, method, url, body = (record[k] for k in ENVELOPE)
        if not isinstance(cid, str) or not cid:
            raise ValueError(f"{where}: custom_id must be a non-empty string, got {cid!r}")
        if bad := lone_surrogate(cid):  # no UTF-8 output line holds it: it failed, naming no line, after its answer
            raise ValueError(f"{where}: custom_id has a lone surrogate (U+{ord(bad[0]):04X}) at position "
                             f"{bad.start()}: not valid Unicode text")
        if cid in seen:
            raise ValueError(f"{where}: custom_id {cid!r} is already used on line {seen[cid]}; custom_ids must "
                             "be unique")
        if method != "POST":
            raise ValueError(f"{where}: method must be 'POST', got {method!r}")
        if url not in URLS:
            raise ValueError(f"{where}: url {url!r} is not served; allowed: {', '.join(URLS)}")
        if not isinstance(body, dict):
            raise ValueError(f"{where}: body must be a JSON object, got {type(body).__name__}")
        if body.get("stream"):
            raise ValueError(f"{where}: body.stream is true; a batch answers each request whole: leave it out")
        seen[cid] = n
        requests.append(Request(index=len(requests), line=n, custom_id=cid, url=url, body=body))
    if not requests:
        raise ValueError(f"{path} holds no requests")
    return requests


def _envelope_words(record) -> str:
    """What a record lacks and has beyond the envelope ("missing custom_id; unknown customId (did you mean
    'custom_id'?)"), or what it is when not an object."""
    if not isinstance(record, dict):
        return f"got {type(record).__name__}"
    missing = [k for k in ENVELOPE if k not in record]
    words = [f"missing {', '.join(missing)}"] if missing else []
    unknown = []
    for key in record:
        if key not in ENVELOPE:
            hint = difflib.get_close_matches(key, missing or ENVELOPE, n=1)
            unknown.append(f"{key} (did you mean {hint[0]!r}?)" if hint else key)
    return "; ".join(words + ([f"unknown {', '.join(unknown)}"] if unknown else []))


class ServerFault(RuntimeError):
    """The server failed a request (a 5xx: a model step out of memory, an engine that stopped; a 429): no answer to
    its body, so it is not written as one, and a rerun asks again."""


def is_server_fault(status: int) -> bool:
    """A status that says the server could not answer now, not that the body is wrong (OpenAI's clients retry
    these)."""
    return status >= 500 or status == 429


def _message(body: dict) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message") if isinstance(error, dict) else error or body)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def result_line(request: Request, status: int, body: dict) -> dict:
    """The output record of one request; its ids come from its custom_id, so a resumed run writes what a straight one
    would."""
    ok = status == 200
    return {"id": f"batch_req_{_digest('batch', request.custom_id)}", "custom_id": request.custom_id,
            "response": {"status_code": status, "request_id": f"req_{_digest('request', request.custom_id)}",
                         "body": body if ok else None},
            "error": None if ok else body.get("error", body)}


def run_requests(input_path: str | os.PathLike, output_path: str | os.PathLike,
                 post: Callable[[Request], tuple[int, dict]], *, model_identity: dict,
                 batch_size: int = 8, overwrite: bool = False, progress: bool = True,
                 write_server_errors: bool = False) -> BatchResult:
    """Answer every request of an OpenAI Batch input file once, resumably.

    Answers are journalled as they come back (completion order) and put in input order at the end.

    Args:
        input_path: the input JSONL (see read_requests).
        output_path: the `.jsonl` results.
        post: sends one request to the server, returning its (status code, JSON body); called from several threads.
        model_identity: what a resume must find unchanged about the served model (its files, dtype ...).
        batch_size: requests in flight at once: the next one is sent as soon as one comes back, as vllm run-batch
            keeps its engine full (chunks waited for their slowest request).
        overwrite: discard an earlier run's output and progress instead of resuming.
        progress: show a tqdm progress bar.
        write_server_errors: write a server fault (5xx, 429) as its line's error and go on, as vllm run-batch does
            (a body that fails the server every time would otherwise stop every rerun at its line); default: stop.

    Raises:
        ValueError: a bad envelope (naming its line), a bad output or batch_size, or a resume whose input or model
            changed.
        ServerFault: the server failed a request (a 5xx or 429): no more are sent, the answers of those in flight and
            before are kept for a rerun.
    """
    input_path, output = Path(input_path), Path(output_path)
    if not is_int(batch_size) or batch_size < 1:  # 0 sent nothing, then failed on a KeyError at the end
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1 (requests in flight at once)")
    if output.is_dir():
        raise ValueError(f"output {output} is a folder; name a file, e.g. {output / 'results.jsonl'}")
    if output.suffix.lower() not in LINE_SUFFIXES:
        raise ValueError(f"output {output.name}: results are written as JSON lines: name the file .jsonl")
    if output.exists() and output.resolve() == input_path.resolve():
        raise ValueError(f"output {output} is the input file; choose another --output")
    requests = read_requests(input_path)
    # the fields _changes compares, the model's described by what serves it
    fingerprint = {"input_sha256": _sha256(input_path), "settings": {"mode": "openai-batch", **model_identity},
                   "files_scheme": FILES_SCHEME,
                   "model": {"config": {}, "tokenizer": None, "files": None, "weights": None}}
    output.parent.mkdir(parents=True, exist_ok=True)
    busy = f"another batch run is writing {output}; wait for it to end or choose another --output"
    with exclusive(output.with_name(output.name + ".lock"), busy):
        record = _Progress(output, fingerprint, len(requests))
        earlier = record.open(overwrite=overwrite)
        if earlier is not None and earlier["complete"]:
            return BatchResult(output=output, total=len(requests), resumed=len(requests), computed=0)
        done, repaired = _resume_jsonl(record, requests, key="custom_id")
        todo = [r for r in requests if r.key not in done]

        from tqdm.auto import tqdm

        faults = []
        with tqdm(total=len(requests), initial=len(done), unit=" requests", disable=not progress,
                  desc=output.name) as bar:
            for answers in _answers(todo, post, window=batch_size, stop_on_fault=not write_server_errors):
                kept = [a for a in answers if write_server_errors or not is_server_fault(a[1])]
                faults += [a for a in answers if a not in kept]
                if kept:
                    _append(record, [_line(result_line(*a)) for a in kept])
                    bar.update(len(kept))
        if faults:
            r, status, body = min(faults, key=lambda a: a[0].index)
            raise ServerFault(f"{input_path} line {r.line} (custom_id {r.custom_id!r}): the server failed it "
                              f"({status}: {_message(body)}); the answers written before are kept: run the same "
                              "command again to go on")
        _finish_jsonl(record, requests, key="custom_id")
        return BatchResult(output=output, total=len(requests), resumed=len(done), computed=len(todo),
                           repaired_bytes=repaired)


def _answers(todo: list[Request], post: Callable[[Request], tuple[int, dict]], *, window: int,
             stop_on_fault: bool = True) -> Iterator[list[tuple[Request, int, dict]]]:
    """(request, status, body) of the requests as they come back, those back together in one list: at most `window`
    in flight, the next sent as soon as one comes back, so a slow request holds its own slot only. After a server
    fault (with `stop_on_fault`) none is sent, and those in flight are still waited for. Each post runs in a daemon
    thread: left behind by an exception here (Ctrl-C), it holds neither this caller nor the process's exit, as a
    pool's workers would."""
    import queue
    import threading

    back: queue.SimpleQueue = queue.SimpleQueue()
    waiting = iter(todo)

    def send(request: Request) -> None:
        def call() -> None:
            try:
                back.put((request, *post(request)))
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread, below
                back.put((request, e, None))

        threading.Thread(target=call, name=f"batch-request-{request.index}", daemon=True).start()

    in_flight, faulted = 0, False
    for request in itertools.islice(waiting, window):
        send(request)
        in_flight += 1
    while in_flight:
        answers = [back.get()]
        while not back.empty():
            answers.append(back.get_nowait())
        in_flight -= len(answers)
        for _, status, _ in answers:
            if isinstance(status, BaseException):  # the post itself failed (the server is gone): as it raised
                raise status
        faulted = faulted or (stop_on_fault and any(is_server_fault(status) for _, status, _ in answers))
        if not faulted:  # sent before the answers are written: the server works while the journal syncs
            for request in itertools.islice(waiting, len(answers)):
                send(request)
                in_flight += 1
        yield answers
