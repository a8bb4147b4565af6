"""`neurallayers batch` on an OpenAI Batch API file (custom_id, method, url, body), as `vllm run-batch` reads it: each
line's response equals what `neurallayers serve` answers for that body (the server, in-process, is the oracle), bad
bodies answer with the server's error while the others succeed, a killed run resumes to the same file, and a bad
envelope stops the run before any work, naming its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
TEXT = "The quick brown fox jumps over the lazy dog. héllo wörld, naïve café 0123456789\n"
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
BODIES = [
    ("/v1/completions", {"prompt": "The quick", "max_tokens": 12, "temperature": 0}),
    ("/v1/completions", {"model": "run", "prompt": "héllo", "max_tokens": 20, "temperature": 1.2, "top_p": 0.9,
                         "seed": 7, "n": 3, "stop": ["o"]}),
    ("/v1/completions", {"prompt": ["The", "dog. "], "max_tokens": 6, "temperature": 0.8, "seed": 1,
                         "logprobs": 2}),
    ("/v1/completions", {"prompt": "The", "temperature": -1}),  # the server's 400; the other lines go on
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 3,
                              "temperature": 1.0, "n": 2}),
    ("/v1/completions", {"model": "gpt-4o", "prompt": "The"}),  # another model: the server's 404
]


def _run_dir(path: Path, *, causal: bool) -> Path:
    tok = Tokenizer.train_char([TEXT])
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    base = ModelConfig() if causal else ModelConfig.from_name("bert-mini")
    cfg = base.replace(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, init_std=0.3)
    path.mkdir(parents=True)
    RunConfig(model=cfg).to_yaml(path / "config.yaml")
    tok.save(path)
    save_model(path, build_model(cfg).state_dict())
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _run_dir(tmp_path_factory.mktemp("models") / "run", causal=True)


def _write(path: Path, bodies) -> Path:
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
             for i, (url, body) in enumerate(bodies)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")  # a blank line is skipped
    return path


def _batch(model: Path, source: Path, output: Path, *extra: str) -> int:
    from neurallayers.__main__ import main

    return main(["batch", str(model), "--input", str(source), "--output", str(output), "--no-progress", *extra])


def _served(model: Path, **options):
    from fastapi.testclient import TestClient

    from neurallayers.serve.app import create_app

    return TestClient(create_app(model, **options))


def _same(body):
    """A response body without what differs between two calls: its random id, its time, and the last bits of a float
    (log-probabilities and vectors of requests decoded together round differently, about 1e-6)."""
    if isinstance(body, dict):
        return {k: _same(v) for k, v in body.items() if k not in ("id", "created")}
    if isinstance(body, list):
        return [_same(v) for v in body]
    return round(body, 4) if isinstance(body, float) else body


def test_each_line_is_answered_as_the_server_answers_its_body(run_dir, tmp_path):
    source, output = _write(tmp_path / "in.jsonl", BODIES), tmp_path / "out.jsonl"
    assert _batch(run_dir, source, output, "--batch-size", "4") == 0
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(len(BODIES))]  # input order
    assert len({r["id"] for r in results}) == len(results)
    with _served(run_dir) as client:
        for (url, body), result in zip(BODIES, results, strict=True):
            r = client.post(url, json=body)
            assert result["response"]["status_code"] == r.status_code, result
            assert result["response"]["request_id"].startswith("req_")
            if r.status_code == 200:
                assert result["error"] is None
                assert _same(result["response"]["body"]) == _same(r.json()), body
            else:
                assert result["response"]["body"] is None and result["error"] == r.json()["error"], body
    assert [r["response"]["status_code"] for r in results] == [200, 200, 200, 400, 200, 404]
    assert len(results[1]["response"]["body"]["choices"]) == 3


def test_embedding_requests_equal_the_servers(tmp_path):
    encoder = _run_dir(tmp_path / "enc", causal=False)
    bodies = [("/v1/embeddings", {"input": "A man is eating food."}),
              ("/v1/embeddings", {"input": ["Rain.", "naïve café"], "encoding_format": "float"}),
              ("/v1/embeddings", {"input": ""})]
    source, output = _write(tmp_path / "in.jsonl", bodies), tmp_path / "out.jsonl"
    assert _batch(encoder, source, output) == 0
    results = [json.loads(line) for line in output.read_text().splitlines()]
    with _served(encoder) as client:
        for (url, body), result in zip(bodies, results, strict=True):
            r = client.post(url, json=body)
            assert result["response"]["status_code"] == r.status_code
            got = result["response"]["body"] if r.status_code == 200 else {"error": result["error"]}
            assert _same(got) == _same(r.json())


def test_a_killed_run_resumes_to_the_same_file(run_dir, tmp_path, monkeypatch, capsys):
    import neurallayers.batch.requests as requests_module

    source = _write(tmp_path / "in.jsonl", BODIES)  # each answer is determined: greedy, seeded or an error
    straight, resumed = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl"
    assert _batch(run_dir, source, straight, "--batch-size", "1") == 0
    real, calls = requests_module._append, []

    def append_then_die(record, lines):
        real(record, lines)
        calls.append(1)
        if len(calls) == 2:
            with record.output.open("ab") as f:
                f.write(b'{"id": "torn')  # a line cut off mid-write
            raise KeyboardInterrupt

    monkeypatch.setattr(requests_module, "_append", append_then_die)
    assert _batch(run_dir, source, resumed, "--batch-size", "1") == 130
    monkeypatch.setattr(requests_module, "_append", real)
    capsys.readouterr()
    assert _batch(run_dir, source, resumed, "--batch-size", "1") == 0
    assert "4 computed now, 2 from an earlier run, 12 bytes of an unfinished batch redone" in capsys.readouterr().out
    a, b = ([json.loads(line) for line in p.read_text().splitlines()] for p in (straight, resumed))
    assert [(r["id"], r["custom_id"], _same(r["response"]["body"])) for r in a] == \
        [(r["id"], r["custom_id"], _same(r["response"]["body"])) for r in b]
    source.write_text(source.read_text().replace('"seed": 7', '"seed": 8'))
    assert _batch(run_dir, source, resumed) == 2  # a changed input is refused


@pytest.mark.parametrize(("line", "said"), [
    ('{"method": "POST", "url": "/v1/completions", "body": {}}', "exactly the fields custom_id, method, url, body"),
    ('{"custom_id": "req-0", "method": "POST", "url": "/v1/completions", "body": {}}', "custom_id 'req-0' is already"),
    ('{"custom_id": 5, "method": "POST", "url": "/v1/completions", "body": {}}', "custom_id must be a non-empty"),
    ('{"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}', "method must be 'POST'"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/responses", "body": {}}', "url '/v1/responses' is not served"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": []}', "body must be a JSON object"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {"stream": true}}', "body.stream"),
    ('{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {}', "not valid JSON"),
    # no UTF-8 output line holds it: it failed after the server's answer, naming no line
    ('{"custom_id": "x\\ud83d", "method": "POST", "url": "/v1/completions", "body": {}}',
     "custom_id has a lone surrogate (U+D83D) at position 1"),
])
def test_a_bad_envelope_stops_the_run_before_any_work_naming_its_line(run_dir, tmp_path, capsys, line, said):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    first = json.dumps({"custom_id": "req-0", "method": "POST", "url": "/v1/completions", "body": {"prompt": "a"}})
    source.write_text(f"{first}\n{line}\n")
    assert _batch(run_dir, source, output) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "in.jsonl line 2: " in err and said in err, err
    assert not output.exists()


@pytest.mark.parametrize("end", ["\r\n", "\r"])
def test_an_openai_batch_file_of_any_line_ends_is_read_as_requests(run_dir, tmp_path, end):
    # a file of lone CR line ends was one line, not JSON, so read as {"prompt": ...} lines: "unknown field 'custom_id'"
    bodies = [("/v1/completions", {"prompt": "The", "max_tokens": 2, "temperature": 0})] * 2
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + end
                               for i, (url, body) in enumerate(bodies)).encode())
    assert _batch(run_dir, source, output) == 0
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["custom_id"], r["response"]["status_code"]) for r in results] == [("r0", 200), ("r1", 200)]


def test_a_body_over_the_servers_default_size_limit_is_answered(run_dir, tmp_path):
    # the in-process server's 413 (32 MiB) cut such a body off mid-send: a traceback of "Connection reset by peer";
    # vllm run-batch answers every line, and "user" changes no output
    from neurallayers.serve.middleware import MAX_BODY_BYTES

    body = {"prompt": "The", "max_tokens": 3, "temperature": 0}
    bodies = [("/v1/completions", body), ("/v1/completions", {**body, "user": "u" * (MAX_BODY_BYTES + 1)})]
    source, output = _write(tmp_path / "in.jsonl", bodies), tmp_path / "out.jsonl"
    assert _batch(run_dir, source, output) == 0
    small, big = [json.loads(line) for line in output.read_text().splitlines()]
    assert big["response"]["status_code"] == 200, big["error"]
    assert _same(big["response"]["body"]) == _same(small["response"]["body"])


def test_an_output_of_prompt_lines_is_not_resumed_by_requests_nor_the_other_way(run_dir, tmp_path, capsys):
    # the requests after the prompt lines failed as "error: dtype"; the prompt lines after the requests listed every
    # generation setting ("temperature: None -> 0.8; top_k: None -> 0; ...")
    prompts, requests = tmp_path / "prompts.jsonl", tmp_path / "requests.jsonl"
    prompts.write_text('{"prompt": "The", "max_new_tokens": 2}\n')
    _write(requests, [("/v1/completions", {"prompt": "The", "max_tokens": 2})])
    for first, then, kinds in [(prompts, requests, "generation from prompt lines -> OpenAI Batch requests"),
                               (requests, prompts, "OpenAI Batch requests -> generation from prompt lines")]:
        output = tmp_path / f"{first.stem}.out.jsonl"
        assert _batch(run_dir, first, output) == 0
        capsys.readouterr()
        assert _batch(run_dir, then, output) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"neurallayers batch: error: cannot resume into {output}: changed since that run started: the "
                       f"input file's contents; the kind of run: {kinds}. Run with the same input, settings and "
                       "model, or pass --overwrite to start again"), err
        assert _batch(run_dir, then, output, "--overwrite") == 0


def test_sampling_flags_do_not_apply_to_an_openai_batch_file(run_dir, tmp_path, capsys):
    source = _write(tmp_path / "in.jsonl", BODIES[:1])
    assert _batch(run_dir, source, tmp_path / "out.jsonl", "--temperature", "0.5") == 2
    assert "--temperature does not apply" in capsys.readouterr().err


def test_no_request_is_refused_for_the_in_process_servers_capacity(run_dir, tmp_path):
    # the server was sized by --batch-size (1 + 128 queued sequences at 1): a request of 13 prompts x n=10 got the
    # server's 400 "takes at most 129", and two of them sent together (2 + 256) a 429 "retry in 1 s", as their answers
    prompts = ["The", "dog", "fox", "The q", "lazy", "héllo", "naïve", "café", "0123", "a", "b", "c", "d"]
    bodies = [("/v1/completions", {"prompt": prompts, "n": 10, "max_tokens": 1, "temperature": 1.0, "seed": seed})
              for seed in range(2)]
    source = _write(tmp_path / "in.jsonl", bodies)
    with _served(run_dir, max_queue=300) as client:  # ... where a server with room for them answers them
        expected = [_same(client.post(url, json=body).json()) for url, body in bodies]
    for size in ("1", "2"):
        output = tmp_path / f"out-{size}.jsonl"
        assert _batch(run_dir, source, output, "--batch-size", size) == 0
        results = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["response"]["status_code"] for r in results] == [200, 200], [r["error"] for r in results]
        assert [_same(r["response"]["body"]) for r in results] == expected


def _chats_stopped_after_one_answer(model: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A file of 3 chat requests and its output, the run stopped (Ctrl-C) after its first answer was written."""
    import neurallayers.batch.requests as requests_module

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    source = _write(tmp_path / "in.jsonl", [("/v1/chat/completions", chat)] * 3)
    real = requests_module._append

    def append_then_die(record, lines):
        real(record, lines)
        raise KeyboardInterrupt

    monkeypatch.setattr(requests_module, "_append", append_then_die)
    output = tmp_path / "out.jsonl"
    assert _batch(model, source, output, "--batch-size", "1") == 130
    monkeypatch.setattr(requests_module, "_append", real)
    return source, output


@pytest.mark.parametrize(("name", "text"), [
    ("chat_template.jinja", "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"),  # read over tokenizer_config's
    ("additional_chat_templates/tool_use.jinja", "{{ messages[0]['content'] }}"),
    ("special_tokens_map.json", '{"eos_token": "."}'),
])
def test_a_resume_after_the_tokenizers_files_changed_is_refused(run_dir, tmp_path, monkeypatch, capsys, name, text):
    # size and mtime of config, tokenizer.json, tokenizer_config.json and weights were compared: a chat template file
    # written between the kill and the rerun answered the rest of the file's chats with the new template
    import shutil

    model = shutil.copytree(run_dir, tmp_path / "model")
    source, output = _chats_stopped_after_one_answer(model, tmp_path, monkeypatch)
    (model / name).parent.mkdir(exist_ok=True)
    (model / name).write_text(text)
    capsys.readouterr()
    assert _batch(model, source, output, "--batch-size", "1") == 2
    assert f"changed since that run started: files: {name} (new)." in capsys.readouterr().err


def test_a_server_fault_is_not_written_as_an_answer_and_the_rerun_redoes_it(run_dir, tmp_path, monkeypatch, capsys):
    # a model step that fails (a GPU out of memory) made the server answer 500 "internal error": that was written as
    # the request's answer, the run ended "complete", and a rerun redid nothing
    import neurallayers.serve.engine as engine_module
    from neurallayers.cli.batch import _Loopback

    source = _write(tmp_path / "in.jsonl", BODIES)
    straight, faulted = tmp_path / "straight.jsonl", tmp_path / "faulted.jsonl"
    assert _batch(run_dir, source, straight, "--batch-size", "1") == 0
    real_post, real_step, fault = _Loopback._post, engine_module.forward_step, []

    def post_then_arm(self, request):
        if request.custom_id == "req-1":  # one request in flight (--batch-size 1): the next model step is req-1's
            fault.append("armed")
        return real_post(self, request)

    def step(*args, **kwargs):
        if fault == ["armed"]:  # req-1's first decode step fails, once
            fault.append("raised")
            raise RuntimeError("CUDA out of memory")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(_Loopback, "_post", post_then_arm)
    monkeypatch.setattr(engine_module, "forward_step", step)
    capsys.readouterr()
    assert _batch(run_dir, source, faulted, "--batch-size", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the server's log of its error (uvicorn's)
    assert err.startswith("neurallayers batch: error: ") and "in.jsonl line 2 (custom_id 'req-1'): the server " \
        "failed it (500: internal error (RuntimeError)" in err and "run the same command again" in err \
        and "or add --write-server-errors" in err, err
    assert len(faulted.read_text().splitlines()) == 1  # req-0's answer is kept
    monkeypatch.undo()
    assert _batch(run_dir, source, faulted, "--batch-size", "1") == 0
    assert "5 computed now, 1 from an earlier run" in capsys.readouterr().out
    a, b = ([json.loads(line) for line in p.read_text().splitlines()] for p in (straight, faulted))
    assert [(r["id"], r["response"]["status_code"], _same(r["response"]["body"])) for r in a] == \
        [(r["id"], r["response"]["status_code"], _same(r["response"]["body"])) for r in b]


@pytest.mark.parametrize(("first", "said"), [
    ({"method": "POST", "url": "/v1/completions", "body": {}}, "missing custom_id"),
    ({"customId": "a", "method": "POST", "url": "/v1/completions", "body": {}},
     "missing custom_id; unknown customId (did you mean 'custom_id'?)"),
    ({"custom_id": "a", "url": "/v1/completions", "body": {}, "prompt": "x"}, "missing method; unknown prompt"),
])
def test_a_first_request_without_its_custom_id_is_named_as_a_request(run_dir, tmp_path, capsys, first, said):
    # the format was told by the first record's custom_id: without it the file was read as {"prompt": ...} lines,
    # and line 1 was refused for an "unknown field 'method'; allowed: id, prompt, text, max_new_tokens ..."
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    second = {"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "a"}}
    source.write_text(f"{json.dumps(first)}\n{json.dumps(second)}\n")
    assert _batch(run_dir, source, output) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "in.jsonl line 1: an OpenAI Batch request has exactly the fields custom_id, method, " \
        f"url, body; {said}" in err, err


def test_a_run_interrupted_before_more_model_files_were_compared_resumes(run_dir, tmp_path, monkeypatch, capsys):
    # a progress record written when only the config, tokenizer.json, tokenizer_config.json, the index and the weights
    # were compared: the same model folder, holding a chat template file then too, was refused as "files:
    # chat_template.jinja (new)"; a file that did change since is still refused
    import shutil

    model = shutil.copytree(run_dir, tmp_path / "model")
    (model / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    source, output = _chats_stopped_after_one_answer(model, tmp_path, monkeypatch)
    record_path = tmp_path / "out.jsonl.progress.json"
    record = json.loads(record_path.read_text())
    fingerprint = record["fingerprint"]
    fingerprint.pop("files_scheme", None)  # as that version wrote it, without the files it did not compare
    del fingerprint["settings"]["files"]["chat_template.jinja"]
    record_path.write_text(json.dumps(record))
    capsys.readouterr()
    assert _batch(model, source, output, "--batch-size", "1") == 0, capsys.readouterr().err
    assert "2 computed now, 1 from an earlier run" in capsys.readouterr().out
    assert "files_scheme" in json.loads(record_path.read_text())["fingerprint"]  # the next resume compares them all


def test_a_slow_request_does_not_hold_back_the_others(run_dir, tmp_path, monkeypatch):
    # requests went in chunks of --batch-size, each waiting for its slowest: one long answer left the engine idle for
    # the rest of its chunk, where vllm run-batch keeps it full; now a request goes as soon as one finishes
    import threading

    from neurallayers.cli.batch import _Loopback

    bodies = [("/v1/completions", {"prompt": "The", "max_tokens": 3, "temperature": 0})] * 8
    source, output = _write(tmp_path / "in.jsonl", bodies), tmp_path / "out.jsonl"
    real, lock, all_sent = _Loopback._post, threading.Lock(), threading.Event()
    seen = {"in_flight": 0, "most": 0, "sent_while_slow": 0, "slow": "not sent"}

    def post(self, request):
        with lock:
            seen["in_flight"] += 1
            seen["most"] = max(seen["most"], seen["in_flight"])
            if request.custom_id == "req-0":
                seen["slow"] = "in flight"
            elif seen["slow"] == "in flight":
                seen["sent_while_slow"] += 1
                if seen["sent_while_slow"] == len(bodies) - 1:
                    all_sent.set()  # the slow one finishes once all the others were sent
        try:
            if request.custom_id == "req-0":
                all_sent.wait(timeout=30)  # with a barrier the others never come: give up
            return real(self, request)
        finally:
            with lock:
                seen["in_flight"] -= 1
                if request.custom_id == "req-0":
                    seen["slow"] = "finished"

    monkeypatch.setattr(_Loopback, "_post", post)
    assert _batch(run_dir, source, output, "--batch-size", "3") == 0
    assert seen["sent_while_slow"] == len(bodies) - 1, seen
    assert seen["most"] <= 3, seen  # never more than --batch-size at once
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(len(bodies))]  # input order
    assert {r["response"]["status_code"] for r in results} == {200}


def _answer(request) -> tuple[int, dict]:
    """A fake server's answer: made from the body, so every run answers a request alike."""
    return 200, {"echo": request.body["prompt"], "index": request.index}


class _Turns:
    """Requests finishing in a given order: each waits until the one before it in `order` is done: returned, or, when
    `journal` wraps the journal's _append, written (one answer a write)."""

    def __init__(self, order: list[int], *, faults=()) -> None:
        import threading

        self.order, self.faults, self.done, self.written, self.by_write = order, set(faults), set(), [], False
        self.released = False
        self.cond = threading.Condition()

    def post(self, request) -> tuple[int, dict]:
        at = self.order.index(request.index)
        with self.cond:
            self.cond.wait_for(lambda: self.released or at == 0 or self.order[at - 1] in self.done, timeout=30)
            if not self.by_write:
                self.done.add(request.index)
                self.cond.notify_all()
        if request.index in self.faults:
            return 503, {"error": {"message": "engine stopped", "type": "server_error"}}
        return _answer(request)

    def release(self) -> None:
        """Let the requests a killed run left behind answer (to nobody) and end."""
        with self.cond:
            self.released = True
            self.cond.notify_all()

    def journal(self, append):
        self.by_write = True

        def wrapped(record, lines):
            append(record, lines)
            with self.cond:
                self.written.append([int(json.loads(line)["custom_id"][1:]) for line in lines])
                self.done.update(self.written[-1])
                self.cond.notify_all()

        return wrapped


def _requests_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                                        "body": {"prompt": f"p{i}"}}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize("kill_at", range(1, 7))
def test_a_kill_after_any_write_resumes_to_the_straight_runs_file(tmp_path, monkeypatch, kill_at):
    # answers now arrive in the order they finish, not the input's; a kill after any of the journal's writes, with a
    # torn line after it, resumes to the file an uninterrupted run writes, each request answered once
    import neurallayers.batch.requests as requests_module

    order = [1, 2, 3, 5, 4, 0]  # req 0 holds its slot to the end: the others overtake it
    source = _requests_file(tmp_path / "in.jsonl", len(order))
    straight, resumed = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl"
    run = requests_module.run_requests
    assert run(source, straight, _answer, model_identity={}, batch_size=3, progress=False).computed == 6
    real, turns = requests_module._append, _Turns(order)
    journal = turns.journal(real)

    def append_then_die(record, lines):
        journal(record, lines)
        if len(turns.written) == kill_at:
            with record.output.open("ab") as f:
                f.write(b'{"custom_id": "c')  # a line cut off mid-write
            raise KeyboardInterrupt

    monkeypatch.setattr(requests_module, "_append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(source, resumed, turns.post, model_identity={}, batch_size=3, progress=False)
    turns.release()
    assert turns.written == [[i] for i in order[:kill_at]]  # one answer a write, in the order they finished
    monkeypatch.setattr(requests_module, "_append", real)
    result = run(source, resumed, _answer, model_identity={}, batch_size=3, progress=False)
    assert (result.resumed, result.computed) == (kill_at, 6 - kill_at)
    assert resumed.read_bytes() == straight.read_bytes()


def test_a_server_fault_stops_sending_and_keeps_the_answers_that_came_back(tmp_path):
    import neurallayers.batch.requests as requests_module

    source = _requests_file(tmp_path / "in.jsonl", 6)
    straight, faulted = tmp_path / "straight.jsonl", tmp_path / "faulted.jsonl"
    run = requests_module.run_requests
    run(source, straight, _answer, model_identity={}, batch_size=2, progress=False)
    turns, sent = _Turns([1, 0, 2, 3, 4, 5], faults={1}), []

    def post(request):
        sent.append(request.index)
        return turns.post(request)

    with pytest.raises(requests_module.ServerFault, match=r"in.jsonl line 2 \(custom_id 'c1'\): the server failed "
                       r"it \(503: engine stopped\).*run the same command again"):
        run(source, faulted, post, model_identity={}, batch_size=2, progress=False)
    assert sorted(sent) == [0, 1]  # nothing more is sent once the server failed one ...
    assert [json.loads(line)["custom_id"] for line in faulted.read_text().splitlines()] == ["c0"]  # ... c0 is kept
    result = run(source, faulted, _answer, model_identity={}, batch_size=2, progress=False)
    assert (result.resumed, result.computed) == (1, 5)
    assert faulted.read_bytes() == straight.read_bytes()


def test_write_server_errors_writes_a_fault_as_its_lines_error_and_goes_on(tmp_path):
    # a body that failed the server every time stopped every rerun at its line, and dropping the line changed the
    # input (--overwrite, all redone); vllm run-batch writes the failure and goes on, which the option asks for
    import neurallayers.batch.requests as requests_module

    source, output = _requests_file(tmp_path / "in.jsonl", 6), tmp_path / "out.jsonl"
    turns, sent = _Turns([1, 0, 2, 3, 4, 5], faults={1}), []

    def post(request):
        sent.append(request.index)
        return turns.post(request)

    result = requests_module.run_requests(source, output, post, model_identity={}, batch_size=2, progress=False,
                                          write_server_errors=True)
    assert sorted(sent) == list(range(6)) and (result.computed, result.total) == (6, 6)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(6)]  # input order
    assert lines[1]["response"]["status_code"] == 503 and lines[1]["error"]["message"] == "engine stopped"
    assert all(line["response"]["status_code"] == 200 for i, line in enumerate(lines) if i != 1)


def test_write_server_errors_is_refused_for_prompt_lines(run_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    assert _batch(run_dir, source, tmp_path / "out.jsonl", "--write-server-errors") == 2
    assert "--write-server-errors applies to an OpenAI Batch file" in capsys.readouterr().err


CHILD = '''
import sys, time
from pathlib import Path

import neurallayers.batch.requests as requests_module
import neurallayers.serve.engine as engine_module
from neurallayers.__main__ import main

log = Path(sys.argv[1])  # a "." for each decode step, a "W" for each write of answers
log.touch()
real_append, real_step = requests_module._append, engine_module.forward_step


def append(record, lines):
    real_append(record, lines)
    with log.open("a") as f:
        f.write("W")


def step(*args, **kwargs):
    if "W" in log.read_text():  # the next requests: a model far larger than this one, long generations
        time.sleep(0.1)
    with log.open("a") as f:
        f.write(".")
    return real_step(*args, **kwargs)


requests_module._append, engine_module.forward_step = append, step
sys.exit(main(["batch", *sys.argv[2:]]))
'''


def test_ctrl_c_stops_at_once_keeping_the_answers_received(run_dir, tmp_path, capsys):
    # Ctrl-C waited for every request already sent (the thread pool's shutdown, then the server's drain): the
    # generations in flight ran to their end before the run stopped
    import os
    import signal
    import subprocess
    import sys
    import time

    body = {"prompt": "The quick", "max_tokens": 50, "temperature": 0, "ignore_eos": True}
    source, output = _write(tmp_path / "in.jsonl", [("/v1/completions", body)] * 4), tmp_path / "out.jsonl"
    (script := tmp_path / "child.py").write_text(CHILD)
    log = tmp_path / "log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(log), str(run_dir), "--input", str(source),
                             "--output", str(output), "--batch-size", "2", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def steps_after_a_write() -> int:
        text = log.read_text() if log.exists() else ""
        return text[text.index("W"):].count(".") if "W" in text else 0

    deadline = time.monotonic() + 60  # the next two requests are generating
    while steps_after_a_write() < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert steps_after_a_write() >= 3, proc.communicate()
    proc.send_signal(signal.SIGINT)
    steps = log.read_text().count(".")
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("Ctrl-C did not stop the run")
    # they had about 45 steps to go; a few may start before the Ctrl-C reaches the engine on a busy machine
    assert log.read_text().count(".") - steps <= 10, "the generations in flight went on after Ctrl-C"
    assert proc.returncode == 130, err  # as the {"prompt": ...} path's Ctrl-C
    assert f"kept in {output}: the same command goes on from them" in err, err
    assert err.rstrip().endswith("neurallayers batch: interrupted"), err
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    assert 1 <= len(kept) <= 2 and {r["response"]["status_code"] for r in kept} == {200}  # the ended ones: unwritten
    capsys.readouterr()
    assert _batch(run_dir, source, output, "--batch-size", "2") == 0  # the same command goes on
    assert f"({4 - len(kept)} computed now, {len(kept)} from an earlier run)" in capsys.readouterr().out
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(4)]
    assert len({json.dumps(r["response"]["body"]["choices"]) for r in results}) == 1  # greedy: all alike


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_a_bad_batch_size_is_refused_before_any_file(tmp_path, size):
    from neurallayers.batch.requests import run_requests

    source, output = _requests_file(tmp_path / "in.jsonl", 2), tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=rf"batch_size={size!r}: must be an integer >= 1"):
        run_requests(source, output, _answer, model_identity={}, batch_size=size, progress=False)
    assert not output.exists()
