"""Completions log-probabilities when the model ends with its stop token (eos): OpenAI's and vLLM's completions
list that token last, without its text; eval harnesses score a continuation sent with echo=True, max_tokens=1,
logprobs=1 as `token_logprobs[ctxlen:-1]`, i.e. all but the one generated token."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from nl_serve_helpers import serving, write_run_dir

import neurallayers


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return neurallayers.load(write_run_dir(tmp_path_factory.mktemp("eos") / "tiny"))


def test_the_eos_that_ends_a_completion_is_its_last_logprob(loaded):
    model, tok = loaded
    eos = tok.eos_id
    context, continuation = tok.encode("The quick"), tok.encode(" fox")
    ids = context + continuation
    body = {"prompt": ids, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1,
            "logit_bias": {str(eos): 100}}  # the model ends at once
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # row t scores token t + 1
    with serving(loaded, model_name="tiny") as srv:
        out = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()
        chunks = [c for c in _events(srv.url, {**body, "stream": True}) if c["choices"]]
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == tok.decode(ids)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + out["usage"]["completion_tokens"] == len(ids) + 1
    assert lp["tokens"][-1] == tok.decode([eos], skip_special_tokens=False)
    assert lp["token_logprobs"][-1] == pytest.approx(float(logp[-1, eos]), abs=1e-5)  # the model's, before the bias
    assert lp["text_offset"][-1] == len(choice["text"])
    scored = lp["token_logprobs"][len(context):-1]  # the harness's slice: the continuation's tokens
    want = [float(logp[len(context) - 1 + k, t]) for k, t in enumerate(continuation)]
    assert scored == pytest.approx(want, abs=1e-5)
    streamed = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for c in chunks:
        for key in streamed:
            streamed[key] += (c["choices"][0]["logprobs"] or {}).get(key, [])
    assert streamed == {key: lp[key] for key in streamed}
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]


def test_a_length_or_stop_string_ending_lists_no_extra_token(loaded):
    model, tok = loaded
    body = {"prompt": "The", "max_tokens": 8, "temperature": 0, "logprobs": 0, "logit_bias": {str(tok.eos_id): -100}}
    kw = dict(max_new_tokens=8, temperature=0, logit_bias={tok.eos_id: -100})
    stop = neurallayers.generate(model, tok, "The", **kw)[0].text[3:5]
    want = neurallayers.generate(model, tok, "The", **kw, stop=[stop])[0]
    with serving(loaded, model_name="tiny") as srv:
        length = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()["choices"][0]
        stopped = httpx.post(f"{srv.url}/v1/completions", json={**body, "stop": stop}, timeout=60).json()["choices"][0]
    assert length["finish_reason"] == "length" and len(length["logprobs"]["tokens"]) == 8
    assert stopped["finish_reason"] == "stop" and stopped["text"] == want.text
    assert len(stopped["logprobs"]["tokens"]) == len(want.token_ids)  # the stop string's tokens are not listed


def _events(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        return [json.loads(line.removeprefix("data: ")) for line in r.iter_lines()
                if line.startswith("data: {")]


def test_an_echoed_token_id_prompt_keeps_its_special_tokens_where_its_offsets_say(loaded):
    """An eval harness sends a continuation after end-of-text as token ids; the echoed text must hold every listed
    token at its text_offset (it dropped the end-of-text, so the prompt's offsets pointed past the text)."""
    model, tok = loaded
    ids = [tok.eos_id, *tok.encode("The quick")]
    body = {"prompt": ids, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 1}
    with serving(loaded, model_name="tiny") as srv:
        choice = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()["choices"][0]
        chunks = [c for c in _events(srv.url, {**body, "stream": True}) if c["choices"]]
    text, lp = choice["text"], choice["logprobs"]
    assert text.startswith(tok.decode(ids, skip_special_tokens=False))
    assert len(lp["tokens"]) == len(ids) + 3
    assert all(text[o:o + len(t)] == t for o, t in zip(lp["text_offset"], lp["tokens"], strict=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert [o for c in chunks for o in (c["choices"][0]["logprobs"] or {}).get("text_offset", [])] == lp["text_offset"]
