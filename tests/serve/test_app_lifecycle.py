"""Reload (RELIABILITY.md item 19), SIGTERM through the real CLI (item 20), metrics, and a schemathesis fuzz of
every route in /openapi.json asserting that no request makes the server answer 5xx."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import httpx
import pytest
from nl_serve_helpers import (
    Gate,
    assert_ok_after,
    free_port,
    requests_running,
    serving,
    start_cli_server,
    wait_for,
    wait_healthy,
    write_run_dir,
)

import neurallayers
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.training.checkpoint import COMPLETE


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_run_dir(root / "a", seed=1)
    write_run_dir(root / "nested" / "b", seed=2)
    (root / "empty").mkdir()
    outside = write_run_dir(tmp_path_factory.mktemp("outside") / "secret", seed=3)
    os.symlink(outside, root / "link-out")
    return root


def greedy(run_dir, prompt: str, n: int) -> str:
    model, tok = neurallayers.load(run_dir)
    return neurallayers.generate(model, tok, prompt, max_new_tokens=n, temperature=0)[0].text


def test_reload_is_atomic_and_stays_inside_the_model_root(model_root):
    model, tok = neurallayers.load(model_root / "a")
    gate = Gate(model, delay=0.01)  # keeps the request on model a in flight across the reload
    with serving((model, tok), model_name="a", model_root=model_root, max_concurrency=2) as srv:
        url = srv.url
        old_engine = srv.app.state.holder.current.engine
        for bad, status in (("../outside", 400), ("/etc", 400), ("nested/../../x", 400), ("link-out", 400),
                            ("missing", 404), ("empty", 400), ("", 400)):
            r = httpx.post(f"{url}/reload", json={"model": bad}, timeout=30)
            assert r.status_code == status, (bad, r.text)
            assert r.json()["error"]["param"] == "model"
            assert_ok_after(url)
        body = {"prompt": "The", "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as s:
            lines = s.iter_lines()
            first = json.loads(next(line for line in lines if line.startswith("data: {")).removeprefix("data: "))
            r = httpx.post(f"{url}/reload", json={"model": "nested/b"}, timeout=60)
            assert r.status_code == 200 and r.json() == {"model": "nested/b", "previous": "a"}
            after = httpx.post(f"{url}/v1/completions", json={"prompt": "The", "max_tokens": 10, "temperature": 0})
            assert after.status_code == 200 and after.json()["model"] == "nested/b"
            assert after.json()["choices"][0]["text"] == greedy(model_root / "nested" / "b", "The", 10)
            assert not old_engine.stats()["closed"]  # the old engine still serves the stream in flight
            rest = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
        chunks = [first, *rest]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == greedy(model_root / "a", "The", 40) and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all(c["model"] == "a" for c in chunks)
        wait_for(lambda: old_engine.stats()["closed"], what="the old engine to be retired")
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["nested/b"]
        assert_error_free = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "model": "a"})
        assert assert_error_free.status_code == 404  # the old name is gone
        back = httpx.post(f"{url}/reload", json={"model": "nested/../a"}, timeout=60)  # served by its plain name
        assert back.status_code == 200 and back.json() == {"model": "a", "previous": "nested/b"}
    gate.remove()


def test_running_gauge_counts_the_requests_a_reload_leaves_on_the_old_model(model_root):
    model, tok = neurallayers.load(model_root / "a")
    gate = Gate(model)
    body = {"prompt": "The", "max_tokens": 20, "stream": True, "logit_bias": {str(tok.eos_id): -100}}
    try:
        with serving((model, tok), model_name="a", model_root=model_root) as srv, \
                httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as s:
            lines = s.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            gate.open.clear()  # the request stays on model a's engine, decoding
            assert requests_running(srv.url) == 1
            assert httpx.post(f"{srv.url}/reload", json={"model": "nested/b"}, timeout=60).status_code == 200
            assert requests_running(srv.url) == 1  # still decoding, on the retired engine
            gate.open.set()
            assert [line for line in lines if line][-1] == "data: [DONE]"
            wait_for(lambda: requests_running(srv.url) == 0, what="the gauge to drop")
    finally:
        gate.remove()


def test_reload_refuses_a_folder_with_a_file_that_links_outside_the_root(tmp_path):
    root, outside = tmp_path / "models", write_run_dir(tmp_path / "outside", seed=3)
    write_run_dir(root / "a", seed=1)
    (write_run_dir(root / "leaky", seed=4) / "tokenizer.json").unlink()
    os.symlink(outside / "tokenizer.json", root / "leaky" / "tokenizer.json")  # read by the loader
    (write_run_dir(root / "nested", seed=4) / "1_Pooling").mkdir()
    os.symlink(outside / "config.yaml", root / "nested" / "1_Pooling" / "config.json")  # a file deeper down
    os.symlink(outside, write_run_dir(root / "linked-dir", seed=4) / "extra")  # a folder
    # a Hugging Face cache snapshot: every file a link to a blob inside the same root
    blobs = write_run_dir(root / "blobs", seed=2)
    (root / "snapshot").mkdir()
    for f in blobs.iterdir():
        os.symlink(os.path.relpath(f, root / "snapshot"), root / "snapshot" / f.name)
    with serving(root / "a", model_name="a", model_root=root) as srv:
        for bad, where in (("leaky", "tokenizer.json"), ("nested", "1_Pooling/config.json"), ("linked-dir", "extra")):
            r = httpx.post(f"{srv.url}/reload", json={"model": bad}, timeout=60)
            assert r.status_code == 400, (bad, r.text)
            err = r.json()["error"]
            assert err["param"] == "model" and err["code"] == "path_outside_root" and where in err["message"], err
            assert httpx.get(f"{srv.url}/v1/models").json()["data"][0]["id"] == "a"
        r = httpx.post(f"{srv.url}/reload", json={"model": "snapshot"}, timeout=60)
        assert r.status_code == 200 and r.json() == {"model": "snapshot", "previous": "a"}
        # what a load never reads is not walked: a run's logs/ with a link loop, or many files
        (write_run_dir(root / "loopy", seed=5) / "logs").mkdir()
        os.symlink("a", root / "loopy" / "logs" / "b")
        os.symlink("b", root / "loopy" / "logs" / "a")
        r = httpx.post(f"{srv.url}/reload", json={"model": "loopy"}, timeout=60)
        assert r.status_code == 200, r.text
        assert_ok_after(srv.url)


def test_reload_checks_a_folder_whose_modules_json_is_nested_too_deep(tmp_path):
    """The root check reads modules.json for the module folders a load reads: a file of 100,000 '[' was a
    RecursionError out of it, a 500 (which OpenAI clients retry). A run folder's load never reads the file."""
    root = tmp_path / "models"
    write_run_dir(root / "a", seed=1)
    (write_run_dir(root / "deep", seed=2) / "modules.json").write_text("[" * 100_000 + "]" * 100_000)
    with serving(root / "a", model_name="a", model_root=root) as srv:
        r = httpx.post(f"{srv.url}/reload", json={"model": "deep"}, timeout=60)
        assert r.status_code == 200 and r.json() == {"model": "deep", "previous": "a"}, r.text
        assert_ok_after(srv.url)


def _checkpoint(run: Path, step: int, weights_of: Path) -> Path:
    """run/checkpoints/step-<step>: a complete checkpoint holding the weights of the run `weights_of`."""
    folder = run / "checkpoints" / f"step-{step}"
    folder.mkdir(parents=True)
    shutil.copy(weights_of / "model.safetensors", folder / "model.safetensors")
    (folder / COMPLETE).write_text("")
    return folder


def test_reload_of_a_checkpoint_refuses_a_run_folder_that_leads_outside_the_root(tmp_path):
    # a checkpoint loads with its run's config.yaml and tokenizer, two folders up: those must stay inside the root too
    root, outside = tmp_path / "models", write_run_dir(tmp_path / "outside", seed=3)
    _checkpoint(write_run_dir(root / "run", seed=1), 5, write_run_dir(tmp_path / "other", seed=2))
    leaky = write_run_dir(root / "leaky", seed=1)
    (leaky / "tokenizer.json").unlink()
    os.symlink(outside / "tokenizer.json", leaky / "tokenizer.json")
    _checkpoint(leaky, 5, leaky)
    _checkpoint(outside, 7, outside)
    with serving(root / "run", model_name="run", model_root=root) as srv:
        r = httpx.post(f"{srv.url}/reload", json={"model": "leaky/checkpoints/step-5"}, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "path_outside_root" and "../../tokenizer.json" in err["message"], err
        r = httpx.post(f"{srv.url}/reload", json={"model": "run/checkpoints/step-5"}, timeout=60)
        assert r.status_code == 200 and r.json() == {"model": "run/checkpoints/step-5", "previous": "run"}, r.text
        after = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 10, "temperature": 0})
        assert after.json()["choices"][0]["text"] == greedy(root / "run" / "checkpoints" / "step-5", "The", 10)
    # a root that is a run's checkpoints/ folder (or a step folder in it): the run lies outside
    for where, step in ((outside / "checkpoints", "step-7"), (outside / "checkpoints" / "step-7", ".")):
        with serving(root / "run", model_name="run", model_root=where) as srv:
            r = httpx.post(f"{srv.url}/reload", json={"model": step}, timeout=60)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == "model" and err["code"] == "path_outside_root" and "'../..'" in err["message"], err
            assert str(outside) not in err["message"]
            assert_ok_after(srv.url)


class _Payload:
    """Pickles to a call that creates `marker` when loaded: the file must never appear."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_reload_never_runs_a_pickle_in_the_folder(tmp_path):
    """RELIABILITY.md item 1 for reload (resume and load have their own tests): a Hugging Face folder under the model
    root whose only weights are a pytorch_model.bin that runs code when unpickled. The server has no opt-in for
    pickles: refused with 400, the code never runs, and the old model serves on."""
    import torch

    root = tmp_path / "models"
    write_run_dir(root / "a")
    neurallayers.convert(root / "a", root / "evil", to="hf")
    (root / "evil" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": _Payload(str(marker))}, root / "evil" / "pytorch_model.bin")
    port = free_port()
    proc = start_cli_server(root / "a", port, "--model-root", str(root))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        r = httpx.post(f"{url}/reload", json={"model": "evil"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
        assert "pytorch_model.bin" in r.json()["error"]["message"]
        assert_ok_after(url)
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "a"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not marker.exists()


def test_a_reload_that_fails_in_any_way_is_400_and_the_old_model_serves_on(tmp_path, monkeypatch, caplog):
    root = tmp_path / "models"
    write_run_dir(root / "a", seed=1)
    deep = write_run_dir(root / "deep", seed=2) / "model.safetensors"
    header = b"[" * 200_000  # a safetensors header nested past Python's recursion limit
    deep.write_bytes(len(header).to_bytes(8, "little") + header)
    write_run_dir(root / "odd", seed=2)
    import neurallayers.api

    real = neurallayers.api.load

    def load(path, **kw):
        if Path(path).name == "odd":
            raise KeyError("a loader bug, not a ValueError or OSError")
        return real(path, **kw)

    monkeypatch.setattr(neurallayers.api, "load", load)
    with serving(root / "a", model_name="a", model_root=root) as srv:
        for folder in ("deep", "odd"):
            r = httpx.post(f"{srv.url}/reload", json={"model": folder}, timeout=60)
            assert r.status_code == 400, (folder, r.text)
            err = r.json()["error"]
            assert err["param"] == "model" and err["code"] == "model_load_failed" and folder in err["message"]
            assert str(root) not in err["message"]  # paths relative to the root: the server's layout stays its own
            after = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 2})
            assert after.status_code == 200 and after.json()["model"] == "a"
    failures = [r for r in caplog.records if r.name == "neurallayers.serve" and "reload" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)  # the traceback is in the log


def test_dtype_applies_to_the_model_and_its_reloads(model_root):
    import torch

    with serving(model_root / "a", model_root=model_root, dtype=torch.bfloat16) as srv:
        holder = srv.app.state.holder
        assert next(holder.current.model.parameters()).dtype == torch.bfloat16
        assert httpx.post(f"{srv.url}/reload", json={"model": "nested/b"}, timeout=60).status_code == 200
        assert next(holder.current.model.parameters()).dtype == torch.bfloat16
        assert_ok_after(srv.url)


def test_metrics_count_routes_statuses_tokens_and_latencies(tmp_path):
    run_dir = write_run_dir(tmp_path / "m")
    no_eos = {str(Tokenizer.load(run_dir).eos_id): -100}  # every token sends an event: the latencies count them
    with serving(run_dir) as srv:
        one = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 5,
                                                             "logit_bias": no_eos}).json()
        httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 0})
        # echo alone scores the prompt, n times over as a generation's choices count it
        echo = {"prompt": "The", "max_tokens": 0, "echo": True, "logprobs": 1, "n": 2}
        assert httpx.post(f"{srv.url}/v1/completions", json=echo).status_code == 200
        body = {"prompt": "ab", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True},
                "logit_bias": no_eos}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body) as s:
            two = json.loads([line for line in s.iter_lines() if line.startswith("data: {")][-1][6:])
        httpx.get(f"{srv.url}/no/such/path")
        text = httpx.get(f"{srv.url}/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("neurallayers_requests_total", (("route", "/v1/completions"), ("status", "200")))] == 3
    assert samples[("neurallayers_requests_total", (("route", "/v1/completions"), ("status", "400")))] == 1
    assert samples[("neurallayers_requests_total", (("route", "other"), ("status", "404")))] == 1
    assert samples[("neurallayers_prompt_tokens_total", ())] == 3 + 2 * 3 + 2
    generated = [one["usage"]["completion_tokens"], two["usage"]["completion_tokens"]]
    assert generated == [5, 3] and samples[("neurallayers_generation_tokens_total", ())] == 8
    assert samples[("neurallayers_time_to_first_token_seconds_count", ())] == sum(n > 0 for n in generated)
    assert samples[("neurallayers_inter_token_latency_seconds_count", ())] == sum(max(0, n - 1) for n in generated)
    assert samples[("neurallayers_request_latency_seconds_count", (("route", "/v1/completions"),))] == 4
    for gauge in ("neurallayers_requests_running", "neurallayers_requests_waiting", "neurallayers_batch_size"):
        assert (gauge, ()) in samples


def test_sigterm_finishes_in_flight_refuses_new_and_exits_0(tmp_path):
    run_dir = write_run_dir(tmp_path / "big", block_size=512)  # long generations stay in flight
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_cli_server(run_dir, port, "--max-concurrency", "2")
    try:
        wait_healthy(url, proc)
        no_eos = {str(Tokenizer.load(run_dir).eos_id): -100}  # both requests run to max_tokens
        body = {"prompt": "The", "max_tokens": 500, "temperature": 0, "stream": True, "logit_bias": no_eos}
        other: dict = {}
        waiter = threading.Thread(target=lambda: other.setdefault("r", httpx.post(
            f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 300}, timeout=120)))
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as s:
            lines = s.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            waiter.start()
            wait_for(lambda: "r" in other or requests_running(url) == 2, what="both requests in flight")
            proc.send_signal(signal.SIGTERM)
            refused = _try_new_request(url)
            rest = [line for line in lines if line.startswith("data: ")]
        waiter.join(120)
        assert rest[-1] == "data: [DONE]"
        final = json.loads(rest[-2].removeprefix("data: "))
        assert final["choices"][0]["finish_reason"] == "length"  # the stream in flight ran to its end
        assert other["r"].status_code == 200 and other["r"].json()["usage"]["completion_tokens"] == 300
        assert refused in ("connection refused", 503)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()



def _try_new_request(url: str):
    """After SIGTERM: a new request must be refused (the socket is closed, or 503 while draining)."""
    for _ in range(100):
        try:
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=10)
        except httpx.ConnectError:
            return "connection refused"
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # A connection the listening socket accepted just before uvicorn closed it: closed unanswered (a reset).
            return "connection refused"
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "shutting_down"
            return 503
    return "accepted"


@pytest.mark.parametrize("args", [["missing"], [".", "--max-concurrency", "0"], [".", "--port", "70000"],
                                  [".", "--max-queue", "-1"], ["empty"]])
def test_cli_bad_arguments_are_one_line_exit_2(tmp_path, capsys, args):
    from neurallayers.__main__ import main

    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / a) if i == 0 else a for i, a in enumerate(args)]
    try:
        code = main(["serve", *args])
    except SystemExit as e:  # argparse refuses bad values itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip(), err


# examples per route and mode: the generation routes get the most
FUZZ_EXAMPLES = {"/v1/completions": 60, "/v1/chat/completions": 40}  # many optional fields: few all valid
FUZZ_DEFAULT = 5


def test_schemathesis_fuzz_finds_no_server_errors(tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    run_dir = write_run_dir(tmp_path / "fuzz", block_size=48)
    seen: list[tuple[str, int]] = []
    with serving(run_dir, max_concurrency=4, max_queue=8) as srv:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        operations = [op.ok() for op in schema.get_all_operations()]
        for op in operations:
            modes = [schemathesis.GenerationMode.POSITIVE]
            if op.method.upper() == "POST":  # a GET without parameters has no invalid form
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:
                @settings(max_examples=FUZZ_EXAMPLES.get(op.path, FUZZ_DEFAULT), deadline=None, derandomize=True,
                          database=None, suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(mode))
                def no_5xx(case):
                    response = case.call(base_url=srv.url, timeout=60)
                    seen.append((case.path, response.status_code))
                    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

                no_5xx()
        assert_ok_after(srv.url)
    paths = {p for p, _ in seen}
    assert len(paths) == len(operations) == 14
    for path in FUZZ_EXAMPLES:  # valid requests got through, not only 400s
        assert any(s == 200 for p, s in seen if p == path), path


def test_draining_refuses_new_requests_with_503_and_health_says_so(tmp_path):
    run_dir = write_run_dir(tmp_path / "d")
    with serving(run_dir) as srv:
        assert_ok_after(srv.url)
        srv.app.state.mark_draining()  # what the CLI does on SIGTERM
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "The", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "shutting_down"
        health = httpx.get(f"{srv.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"


def test_concurrent_streaming_clients_all_succeed_with_solo_outputs(tmp_path):
    run_dir = write_run_dir(tmp_path / "c")
    prompts = ["The", "quick", "brown fox", "lazy dog", "héllo", "日本語", "0123", "over the"]
    results: dict[int, str] = {}

    def client(i: int) -> None:
        body = {"prompt": prompts[i], "max_tokens": 12, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=120) as s:
            assert s.status_code == 200
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
        results[i] = "".join(e["choices"][0]["text"] for e in events)

    with serving(run_dir, max_concurrency=4, max_queue=4) as srv:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sorted(results) == list(range(len(prompts)))  # every client finished: no failed requests
    model, tok = neurallayers.load(run_dir)
    solo = neurallayers.generate(model, tok, prompts, max_new_tokens=12, temperature=0)
    assert [results[i] for i in range(len(prompts))] == [g.text for g in solo]  # batching changed no output


def test_help_never_prints_an_api_key_from_the_environment(monkeypatch, capsys):
    from neurallayers.__main__ import main

    monkeypatch.setenv("NEURALLAYERS_API_KEY", "sk-do-not-print")
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--api-key" in out and "sk-do-not-print" not in out
