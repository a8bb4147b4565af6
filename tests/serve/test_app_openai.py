"""The OpenAI-compatible routes through the real `openai` client against a real uvicorn server on 127.0.0.1.

Oracles: what the server returns equals neurallayers.generate / stream / embed on the same model (greedy, seeded
sampling with seed + k for choice k, stop strings, log-probabilities), and streamed pieces join to the same text.
"""

from __future__ import annotations

import base64
import copy

import httpx
import numpy as np
import pytest
import torch
from nl_serve_helpers import CHAT_TEMPLATE, serving, slowest_health_while, write_run_dir

import neurallayers
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import embed
from neurallayers.models import build_model

openai = pytest.importorskip("openai")

PROMPT = "The quick brown"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("serve") / "tiny-char")


def oracle(loaded, prompt, **kw):
    model, tok = loaded
    return neurallayers.generate(model, tok, prompt, **kw)[0]


def test_models_lists_the_served_model(client):
    (card,) = client.models.list().data
    assert card.id == "tiny-char"


def test_models_retrieve_gives_the_served_models_card_and_404_for_another(client):
    card = client.models.retrieve("tiny-char")
    assert card.id == "tiny-char" and card.object == "model" and card == client.models.list().data[0]
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    metrics = httpx.get(f"{client.base_url}".removesuffix("/v1/") + "/metrics").text  # by route template, not "other"
    assert 'route="/v1/models/{model_id:path}",status="200"' in metrics


def test_an_empty_model_name_means_the_served_model_as_in_vllm(client, server):
    # vLLM's _is_model_supported: an empty (or null) model is the served one; clients that leave the name blank send ""
    out = client.completions.create(model="", prompt=PROMPT, max_tokens=3, temperature=0)
    assert out.model == "tiny-char" and out.usage.completion_tokens == 3
    chat = client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert chat.model == "tiny-char"
    r = httpx.post(f"{server.url}/tokenize", json={"model": "", "prompt": "The"}, timeout=30)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.url}/v1/models/", timeout=30).status_code == 404  # a card needs an id


def test_greedy_completion_equals_generate(client, loaded):
    out = client.completions.create(model="tiny-char", prompt=PROMPT, max_tokens=12, temperature=0)
    want = oracle(loaded, PROMPT, max_new_tokens=12, temperature=0)
    assert out.choices[0].text == want.text
    assert out.choices[0].finish_reason == want.finish_reason == "length"
    assert out.usage.prompt_tokens == len(loaded[1].encode(PROMPT))
    assert out.usage.completion_tokens == 12 and out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_token_id_prompts_and_prompt_lists(client, loaded):
    ids = loaded[1].encode(PROMPT)
    by_ids = client.completions.create(model="tiny-char", prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model="tiny-char", prompt=[PROMPT, "fox"], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert [c.index for c in by_text.choices] == [0, 1]
    assert by_text.choices[1].text == oracle(loaded, "fox", max_new_tokens=6, temperature=0).text


def test_a_folders_generation_config_fills_the_fields_a_request_leaves_out(loaded, tmp_path):
    """As vLLM: a Hugging Face folder's recommended temperature / top_k / top_p / min_p / repetition_penalty
    (generation_config.json) apply to a request without them (or with null); a request's own value wins."""
    import json

    from neurallayers.interop.hf import save_hf

    folder = save_hf(*loaded, tmp_path / "hf")
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**settings, "do_sample": True, "temperature": 1.5,
                                                               "top_k": 3}))
    kw = dict(prompt=PROMPT, max_new_tokens=16, seed=7)
    with serving(folder) as srv:
        def text(**body) -> str:
            r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "seed": 7, **body},
                           timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        assert text() == text(top_k=None) == oracle(loaded, temperature=1.5, top_k=3, **kw).text
        assert text(temperature=1.0, top_k=0) == oracle(loaded, temperature=1.0, top_k=0, **kw).text
        assert text(top_k=0) == oracle(loaded, temperature=1.5, top_k=0, **kw).text
    assert len({oracle(loaded, temperature=t, top_k=k, **kw).text for t, k in ((1.5, 3), (1.0, 0), (1.5, 0))}) == 3


def test_seeded_choices_equal_generate_with_seed_plus_k(client, loaded):
    kw = dict(model="tiny-char", prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.95, n=3, seed=1234)
    first = client.completions.create(**kw)
    again = client.completions.create(**kw)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]  # reproducible
    for k, text in enumerate(texts):
        assert text == oracle(loaded, PROMPT, max_new_tokens=16, temperature=1.0, top_p=0.95, seed=1234 + k).text
    assert len(set(texts)) > 1  # the choices are different samples
    other = client.completions.create(**{**kw, "seed": 99, "n": 1})
    assert other.choices[0].text != texts[0]


def test_stop_string_ends_and_is_excluded(client, loaded):
    full = oracle(loaded, PROMPT, max_new_tokens=24, temperature=0).text
    stop = full[4:6]  # text the model does produce, so the stop is hit
    want = oracle(loaded, PROMPT, max_new_tokens=24, temperature=0, stop=[stop])
    out = client.completions.create(model="tiny-char", prompt=PROMPT, max_tokens=24, temperature=0, stop=stop)
    assert out.choices[0].text == want.text and stop not in out.choices[0].text
    assert out.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in client.completions.create(
        model="tiny-char", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "zzz"], stream=True)]
    assert "".join(pieces) == want.text


def test_streaming_completion_joins_to_the_same_text_with_usage(client, loaded):
    want = oracle(loaded, PROMPT, max_new_tokens=20, temperature=0)
    chunks = list(client.completions.create(model="tiny-char", prompt=PROMPT, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_streaming_n_choices_interleave_and_match_non_streaming(client):
    kw = dict(model="tiny-char", prompt=PROMPT, max_tokens=10, temperature=0.8, n=2, seed=7)
    whole = client.completions.create(**kw)
    parts = {0: "", 1: ""}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            parts[c.index] += c.text
    assert [parts[0], parts[1]] == [c.text for c in whole.choices]


def test_completion_logprobs_equal_generate(client, loaded):
    model, tok = loaded
    out = client.completions.create(model="tiny-char", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    want = oracle(loaded, PROMPT, max_new_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert lp.tokens == [tok.decode([t.token_id], skip_special_tokens=False) for t in want.logprobs]
    assert lp.token_logprobs == pytest.approx([t.logprob for t in want.logprobs], abs=1e-5)
    for got, ref in zip(lp.top_logprobs, want.logprobs, strict=True):
        assert len(got) == 3
        assert sorted(got.values()) == pytest.approx(sorted(v for _, v in ref.top), abs=1e-5)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]


def test_echo_with_logprobs_scores_the_prompt(client, loaded):
    model, tok = loaded
    out = client.completions.create(model="tiny-char", prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                    logprobs=1)
    ids = tok.encode(PROMPT)
    lp = out.choices[0].logprobs
    assert out.choices[0].text.startswith(PROMPT)
    assert len(lp.tokens) == len(ids) + 3 and lp.token_logprobs[0] is None
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    assert lp.token_logprobs[1] == pytest.approx(float(ref[0, ids[1]]), abs=1e-5)


def test_chat_default_template_and_logprobs(client, loaded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 🙂"}]
    out = client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=8, temperature=0,
                                         logprobs=True, top_logprobs=2)
    prompt = "system: Be brief.\nuser: héllo 🙂\nassistant:"  # the documented default template
    want = oracle(loaded, prompt, max_new_tokens=8, temperature=0, logprobs=2)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert out.usage.prompt_tokens == len(loaded[1].encode(prompt))
    assert [e.logprob for e in choice.logprobs.content] == pytest.approx([t.logprob for t in want.logprobs],
                                                                         abs=1e-5)
    assert all(len(e.top_logprobs) == 2 and bytes(e.bytes).decode() == e.token for e in choice.logprobs.content)


def test_chat_streaming_and_max_completion_tokens(client):
    messages = [{"role": "user", "content": "fox"}]
    whole = client.chat.completions.create(model="tiny-char", messages=messages, max_completion_tokens=9,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-char", messages=messages, max_completion_tokens=9,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length" == whole.choices[0].finish_reason


def test_chat_template_from_tokenizer_config(tmp_path):
    run_dir = write_run_dir(tmp_path / "templated", chat_template=CHAT_TEMPLATE)
    with serving(run_dir) as srv:
        msgs = [{"role": "user", "content": "hi"}]
        got = httpx.post(f"{srv.url}/tokenize", json={"messages": msgs}).json()
        model, tok = neurallayers.load(run_dir)
        assert got["tokens"] == tok.encode("<user>hi\n<assistant>")
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
        out = c.chat.completions.create(model="templated", messages=msgs, max_tokens=5, temperature=0)
        assert out.choices[0].message.content == neurallayers.generate(
            model, tok, "<user>hi\n<assistant>", max_new_tokens=5, temperature=0)[0].text


def test_streaming_never_splits_utf8_and_non_ascii_is_valid_json(tmp_path):
    run_dir = write_run_dir(tmp_path / "bpe", kind="bpe", seed=3)
    model, tok = neurallayers.load(run_dir)
    with serving(run_dir) as srv:
        body = {"prompt": "日本語 🙂", "max_tokens": 40, "temperature": 1.0, "seed": 5}
        whole = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        raw = b""
        with httpx.stream("POST", f"{srv.url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            for b in r.iter_bytes():
                raw += b
    want = neurallayers.generate(model, tok, "日本語 🙂", max_new_tokens=40, temperature=1.0, seed=5)[0].text
    assert whole == want and any(ord(ch) > 127 for ch in want)  # multi-byte characters were generated
    import json

    events = raw.decode("utf-8").split("\n\n")  # strict: the stream is valid UTF-8
    assert events[-2] == "data: [DONE]"
    pieces = [json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in events[:-2]]
    assert "".join(pieces) == want
    if "\ufffd" not in want:  # no piece holds a replacement character the whole text does not have
        assert all("\ufffd" not in p for p in pieces)


@pytest.fixture(scope="module")
def bpe_server(tmp_path_factory):
    with serving(write_run_dir(tmp_path_factory.mktemp("serve") / "bpe", kind="bpe", seed=3)) as srv:
        yield srv


def _sse_lines(url: str, body: dict, reader: str) -> list[str]:
    """A stream's lines as a client that reads it line by line gets them."""
    if reader == "httpx":
        with httpx.stream("POST", url, json=body, timeout=60) as r:
            return list(r.iter_lines())
    requests = pytest.importorskip("requests")
    with requests.post(url, json=body, timeout=60, stream=True) as r:
        return list(r.iter_lines(decode_unicode=True))


@pytest.mark.parametrize("reader", ["httpx", "requests"])
def test_a_stream_holding_unicode_line_separators_reads_line_by_line(bpe_server, reader):
    # U+2028, U+2029 and U+0085 end a line for str.splitlines, which httpx's iter_lines and requests'
    # iter_lines(decode_unicode=True) use: raw in a data line they cut its JSON in two
    import json

    prompt = "a\u2028b\u2029c\x85d"
    body = {"prompt": prompt, "max_tokens": 3, "echo": True, "stream": True, "temperature": 0}
    url = f"{bpe_server.url}/v1/completions"
    data = [line.removeprefix("data: ") for line in _sse_lines(url, body, reader) if line]
    whole = httpx.post(url, json={**body, "stream": False}, timeout=60).json()
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]  # every data line is one whole JSON object
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["choices"][0]["text"] and text.startswith(prompt)


@pytest.fixture(scope="module")
def encoder():
    tok = Tokenizer.train_char(["the quick brown fox jumps over the lazy dog héllo 🙂"])
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=64, n_layer=2,
                                                     n_head=2, n_embd=32)
    torch.manual_seed(0)
    return build_model(cfg).eval(), tok


def test_embeddings_equal_embed_in_both_encodings(encoder):
    texts = ["the quick fox", "héllo 🙂", "dog"]
    want = embed(*encoder, texts).numpy()
    with serving(encoder, model_name="tiny-encoder") as srv:
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
        out = c.embeddings.create(model="tiny-encoder", input=texts)  # the client asks for base64 by default
        got = np.array([d.embedding for d in out.data])
        assert got == pytest.approx(want, abs=1e-6)
        assert out.usage.prompt_tokens == sum(len(t) for t in texts)  # char level, no special tokens here
        raw = httpx.post(f"{srv.url}/v1/embeddings", json={"input": "dog", "encoding_format": "base64"}).json()
        vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
        assert vec == pytest.approx(want[2], abs=1e-6)
        single = c.embeddings.create(model="tiny-encoder", input="dog", encoding_format="float")
        assert single.data[0].embedding == pytest.approx(want[2].tolist(), abs=1e-6)
        with pytest.raises(openai.BadRequestError, match="encoder"):
            c.completions.create(model="tiny-encoder", prompt="x", max_tokens=2)
        pred = httpx.post(f"{srv.url}/predict", json={"prompt": "dog"}).json()
        assert pred["embedding"] == pytest.approx(want[2].tolist(), abs=1e-6)
        for ids in ([5, 9], [[5, 9], [3]]):  # token ids (a client's count, maybe of another vocabulary): refused
            r = httpx.post(f"{srv.url}/v1/embeddings", json={"input": ids})
            assert r.status_code == 400 and r.json()["error"]["param"] == "input"
            assert "check_embedding_ctx_length=False" in r.json()["error"]["message"]


def test_a_large_embeddings_response_is_written_off_the_event_loop(encoder, monkeypatch):
    # 2048 x 1024 floats are 44 MB of JSON: FastAPI wrote it on the event loop, where /health waited 1.3-1.9 s for
    # it; a worker thread writes it now, a vector per json.dumps call (/health: 0.3-0.6 s). The same JSON.
    import asyncio

    from neurallayers.serve import routes_openai

    threads = []

    def recorded(*args):
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:
            threads.append("worker")
        return write(*args)

    write = routes_openai.embedding_body
    monkeypatch.setattr(routes_openai, "embedding_body", recorded)
    _, tok = encoder
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=1,
                                                     n_embd=512, intermediate_size=8)
    torch.manual_seed(0)
    wide = build_model(cfg).eval()
    texts = (["d", "🙂", "é"] * 683)[:2048]  # the most one request takes; a token each, cheap to embed
    with serving((wide, tok), model_name="wide") as srv:
        r, slowest = slowest_health_while(srv.url, lambda: httpx.post(
            f"{srv.url}/v1/embeddings", json={"input": texts}, timeout=120))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text[:300]
        assert slowest < 1.0, f"/health waited {slowest:.2f} s"  # generous: a bound, not a timing
        small = httpx.post(f"{srv.url}/v1/embeddings", json={"input": texts[:3], "encoding_format": "base64"}).json()
    assert threads == ["worker", "worker"]
    body, want = r.json(), embed(wide, tok, texts[:3]).numpy()
    assert [d["index"] for d in body["data"]] == list(range(len(texts))) and body["model"] == "wide"
    assert np.array([d["embedding"] for d in body["data"][:3]]) == pytest.approx(want, abs=1e-6)
    assert np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in small["data"]]) == \
        pytest.approx(want, abs=1e-6)
    assert body["usage"] == {"prompt_tokens": 2048, "completion_tokens": 0, "total_tokens": 2048}
    assert set(body) == set(small) == {"object", "data", "model", "usage"} and body["object"] == "list"


def test_an_encoder_reports_the_length_it_reads(encoder):
    model, tok = encoder
    short = copy.copy(tok)
    short.model_max_length = 8  # as a sentence-transformers model cuts texts below its context length
    with serving((model, short), model_name="e") as srv:
        assert httpx.get(f"{srv.url}/v1/models").json()["data"][0]["max_model_len"] == 8
        assert httpx.post(f"{srv.url}/tokenize", json={"prompt": "dog"}).json()["max_model_len"] == 8


def test_embeddings_refused_for_a_decoder(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny-char", input="x")
    assert e.value.body["param"] == "model"


def test_predict_batch_predict_tokenize_detokenize(server, loaded):
    model, tok = loaded
    one = httpx.post(f"{server.url}/predict", json={"prompt": PROMPT, "max_tokens": 5}).json()
    assert one["text"] == oracle(loaded, PROMPT, max_new_tokens=5, temperature=0).text
    many = httpx.post(f"{server.url}/batch_predict", json={"prompts": [PROMPT, "dog"], "max_tokens": 5}).json()
    assert [p["text"] for p in many["predictions"]] == [
        oracle(loaded, p, max_new_tokens=5, temperature=0).text for p in (PROMPT, "dog")]
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "héllo"}).json()
    assert ids == {"tokens": tok.encode("héllo"), "count": 5, "max_model_len": 64}
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": ids["tokens"]}).json() == {"prompt": "héllo"}


def test_tokenize_counts_an_encoders_special_tokens_as_embeddings_do():
    """MiniLM: /tokenize left out [CLS] and [SEP], which /v1/embeddings feeds and counts."""
    from neurallayers.embeddings import minilm_folder

    with serving(str(minilm_folder())) as srv:
        ids = httpx.post(f"{srv.url}/tokenize", json={"prompt": "hello world"}).json()["tokens"]
        usage = httpx.post(f"{srv.url}/v1/embeddings", json={"input": "hello world"}).json()["usage"]
    assert ids == [101, 7592, 2088, 102] and usage["prompt_tokens"] == len(ids)


def test_embedding_usage_counts_the_lowercased_texts_an_encoder_reads():
    """A sentence-transformers folder with do_lower_case: embed() reads each text lowercased, but usage counted the
    tokens of the text as sent (here 13 byte tokens for 3 words)."""
    tok = Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog " * 50], vocab_size=300,
                              show_progress=False)
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                                                     n_embd=32, extra={"lowercase": True})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    want = len(tok.encode("the quick dog", add_special_tokens=True))
    assert len(tok.encode("THE QUICK DOG", add_special_tokens=True)) > want
    with serving((model, tok), model_name="lower") as srv:
        out = httpx.post(f"{srv.url}/v1/embeddings", json={"input": "THE QUICK DOG"}).json()
        assert out["usage"]["prompt_tokens"] == want
        assert out["data"][0]["embedding"] == pytest.approx(embed(model, tok, ["the quick dog"])[0].tolist(), abs=1e-6)
        pred = httpx.post(f"{srv.url}/predict", json={"prompt": "THE QUICK DOG"}).json()
        assert pred["usage"]["prompt_tokens"] == want
