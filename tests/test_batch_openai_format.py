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
])
def test_a_bad_envelope_stops_the_run_before_any_work_naming_its_line(run_dir, tmp_path, capsys, line, said):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    first = json.dumps({"custom_id": "req-0", "method": "POST", "url": "/v1/completions", "body": {"prompt": "a"}})
    source.write_text(f"{first}\n{line}\n")
    assert _batch(run_dir, source, output) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "in.jsonl line 2: " in err and said in err, err
    assert not output.exists()


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


@pytest.mark.parametrize(("name", "text"), [
    ("chat_template.jinja", "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"),  # read over tokenizer_config's
    ("additional_chat_templates/tool_use.jinja", "{{ messages[0]['content'] }}"),
    ("special_tokens_map.json", '{"eos_token": "."}'),
])
def test_a_resume_after_the_tokenizers_files_changed_is_refused(run_dir, tmp_path, monkeypatch, capsys, name, text):
    # size and mtime of config, tokenizer.json, tokenizer_config.json and weights were compared: a chat template file
    # written between the kill and the rerun answered the rest of the file's chats with the new template
    import shutil

    import neurallayers.batch.requests as requests_module

    model = shutil.copytree(run_dir, tmp_path / "model")
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
    (model / name).parent.mkdir(exist_ok=True)
    (model / name).write_text(text)
    capsys.readouterr()
    assert _batch(model, source, output, "--batch-size", "1") == 2
    assert f"changed since that run started: files: {name} (new)." in capsys.readouterr().err


def test_a_server_fault_is_not_written_as_an_answer_and_the_rerun_redoes_it(run_dir, tmp_path, monkeypatch, capsys):
    # a model step that fails (a GPU out of memory) made the server answer 500 "internal error": that was written as
    # the request's answer, the run ended "complete", and a rerun redid nothing
    import neurallayers.batch.requests as requests_module
    import neurallayers.serve.engine as engine_module

    source = _write(tmp_path / "in.jsonl", BODIES)
    straight, faulted = tmp_path / "straight.jsonl", tmp_path / "faulted.jsonl"
    assert _batch(run_dir, source, straight, "--batch-size", "1") == 0
    real_append, real_step, fault = requests_module._append, engine_module.forward_step, []

    def append_then_arm(record, lines):
        real_append(record, lines)
        fault.append("armed")

    def step(*args, **kwargs):
        if fault == ["armed"]:  # the first model step after the first answer is written fails, once
            fault.append("raised")
            raise RuntimeError("CUDA out of memory")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(requests_module, "_append", append_then_arm)
    monkeypatch.setattr(engine_module, "forward_step", step)
    capsys.readouterr()
    assert _batch(run_dir, source, faulted, "--batch-size", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the server's log of its error (uvicorn's)
    assert err.startswith("neurallayers batch: error: ") and "in.jsonl line 2 (custom_id 'req-1'): the server " \
        "failed it (500: internal error (RuntimeError)" in err and "run the same command again" in err, err
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

    import neurallayers.batch.requests as requests_module

    model = shutil.copytree(run_dir, tmp_path / "model")
    (model / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
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
