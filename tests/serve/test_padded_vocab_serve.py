"""A served model whose vocabulary is padded past its tokenizer's (Qwen2's 151936 rows for 151665 tokens): an id there
is text-less, as vLLM's detokenizer reads it, yet still a generated token (token_ids, logprobs, usage). The oracle is
neurallayers.generate on the same prompt and settings (itself checked against transformers in
tests/generation/test_padded_vocab.py); before, the request failed mid-generation."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from nl_serve_helpers import TEXT, assert_ok_after

import neurallayers
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

openai = pytest.importorskip("openai")

PADDING = 20
PROMPTS = ["The quick", "ab", "fox"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("padded") / "padded"
    tok = Tokenizer.train_char([TEXT])
    cfg = ModelConfig(vocab_size=tok.vocab_size + PADDING, block_size=64, n_layer=2, n_head=2, n_embd=32,
                      init_std=0.3)
    torch.manual_seed(0)
    path.mkdir(parents=True)
    RunConfig(model=cfg).to_yaml(path / "config.yaml")
    save_model(path, build_model(cfg).state_dict())
    tok.save(path)
    return path


def test_completions_text_ids_logprobs_and_usage_equal_generate(client, loaded, server):
    model, tok = loaded
    padded = stops = 0
    for prompt in PROMPTS:
        gen = neurallayers.generate(model, tok, prompt, temperature=0, max_new_tokens=10)[0]
        padded += sum(i >= tok.vocab_size for i in gen.token_ids)
        out = client.completions.create(model="padded", prompt=prompt, max_tokens=10, temperature=0, logprobs=2,
                                        extra_body={"return_token_ids": True})
        (c,) = out.choices
        assert c.text == gen.text and c.model_extra["token_ids"][:len(gen.token_ids)] == gen.token_ids
        assert out.usage.completion_tokens == gen.completion_tokens
        assert "".join(c.logprobs.tokens) == gen.text and len(c.logprobs.tokens) == len(gen.token_ids)
        pieces = [ch.choices[0].text for ch in client.completions.create(
            model="padded", prompt=prompt, max_tokens=10, temperature=0, stream=True)]
        assert "".join(pieces) == gen.text
        stop = gen.text[1:2]
        if stop:  # a stop string found across padded ids, as generate() finds it
            want = neurallayers.generate(model, tok, prompt, temperature=0, max_new_tokens=10, stop=[stop])[0]
            got = client.completions.create(model="padded", prompt=prompt, max_tokens=10, temperature=0, stop=[stop])
            assert got.choices[0].text == want.text and got.choices[0].finish_reason == "stop"
            assert got.usage.completion_tokens == want.completion_tokens
            stops += 1
    assert padded >= 5 and stops >= 2  # the random model does choose padded ids
    assert_ok_after(server.url)


def test_chat_stream_of_a_forced_padded_id_is_empty_and_counted(server, loaded):
    tok = loaded[1]
    pad = tok.vocab_size + 4
    body = {"model": "padded", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0,
            "logit_bias": {str(pad): 100}, "logprobs": True, "top_logprobs": 2, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert not any("error" in c for c in chunks), chunks
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == ""
    entries = [e for d in deltas if d.get("logprobs") for e in d["logprobs"]["content"]]
    assert [(e["token"], e["bytes"]) for e in entries] == [("", [])] * 5
    assert deltas[-1]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 5
