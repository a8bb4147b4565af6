"""Each batch line answers as `neurallayers serve` answers the same request: /v1/completions for a decoder's lines
(text, finish_reason and token counts, greedy and seeded sampling with stops and penalties; the server has no
no_repeat_ngram_size), /v1/embeddings for an
encoder's; the server runs in-process on the same model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurallayers.batch import run_batch
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig
from neurallayers.models import build_model

pytest.importorskip("fastapi")
TEXT = "The quick brown fox jumps over the lazy dog. héllo wörld, naïve café 0123456789\n"
# a line's field -> the completions request's name for it (vLLM's min_tokens; the rest are the same)
REQUEST_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
LINES = [
    {"id": "greedy", "prompt": "The quick", "max_new_tokens": 12, "temperature": 0},
    {"id": "sampled", "prompt": "The quick", "max_new_tokens": 12, "temperature": 0.9, "seed": 5},
    {"id": "top", "prompt": "héllo", "max_new_tokens": 20, "temperature": 1.3, "top_k": 20, "top_p": 0.9, "seed": 7,
     "stop": ["o"]},
    {"id": 4, "prompt": "naïve", "max_new_tokens": 15, "temperature": 1.0, "seed": 11, "ignore_eos": True,
     "stop": "a"},
    {"id": "penalties", "prompt": "0123", "max_new_tokens": 15, "temperature": 0.8, "seed": 3,
     "presence_penalty": 1.0, "frequency_penalty": 0.5, "repetition_penalty": 1.2, "min_p": 0.05},
    {"id": "min", "prompt": "The", "max_new_tokens": 10, "min_new_tokens": 5, "temperature": 1.0, "seed": 2},
    {"id": "eos", "prompt": "dog. ", "max_new_tokens": 40, "temperature": 1.0, "seed": 0},
    # vLLM's spelling of "every token", which the server takes (and batch refused)
    {"id": "all", "prompt": "The", "max_new_tokens": 12, "temperature": 1.0, "top_k": -1, "seed": 9},
]


def _model(causal: bool):
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    base = ModelConfig() if causal else ModelConfig.from_name("bert-mini")
    # init_std 0.3: peaked next-token distributions, so greedy and seeded choices have no near-ties
    cfg = base.replace(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, init_std=0.3)
    return build_model(cfg).eval(), tok


def _served(model, tok):
    from fastapi.testclient import TestClient

    from neurallayers.serve.app import create_app

    return TestClient(create_app((model, tok)))


def test_each_generation_line_equals_the_servers_completion(tmp_path):
    model, tok = _model(causal=True)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    run_batch(model, tok, source, out, config=GenerationConfig(), batch_size=3, progress=False)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == [line["id"] for line in LINES]
    with _served(model, tok) as client:
        for line, got in zip(LINES, results, strict=True):
            body = {REQUEST_NAMES.get(k, k): v for k, v in line.items() if k != "id"}
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            choice, usage = r.json()["choices"][0], r.json()["usage"]
            assert (got["text"], got["finish_reason"], got["prompt_tokens"], got["completion_tokens"]) == (
                choice["text"], choice["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"]), line
    assert {r["finish_reason"] for r in results} >= {"stop", "length"}  # both ends are compared


def test_each_embedding_line_equals_the_servers_embedding(tmp_path):
    model, tok = _model(causal=False)
    texts = ["A man is eating food.", "Two dogs play in the snow.", "Rain.", "naïve café"]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run_batch(model, tok, source, out, batch_size=1, progress=False)  # one at a time, as each request is
    got = [json.loads(line)["embedding"] for line in out.read_text().splitlines()]
    with _served(model, tok) as client:
        for text, vector in zip(texts, got, strict=True):
            r = client.post("/v1/embeddings", json={"input": text})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(vector, r.json()["data"][0]["embedding"], rtol=0, atol=1e-6)


def test_a_text_that_gives_no_tokens_is_named_before_any_work(tmp_path):
    # a char tokenizer adds no [CLS]/[SEP]: "" gives no tokens, which embed() refuses; that came mid-run, naming
    # "texts[0]" of its batch and no line
    model, tok = _model(causal=False)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"text": "Rain."}\n\n{"id": "blank", "prompt": ""}\n')
    with pytest.raises(ValueError, match=r"in\.jsonl line 3: the text '' encodes to no tokens"):
        run_batch(model, tok, source, out, batch_size=1, progress=False)
    assert not out.exists() or out.stat().st_size == 0


def test_seed_minus_one_means_no_seed_of_its_own_as_for_the_server(tmp_path):
    # the server reads seed -1 as none; batch sampled every such line from seed -1, so equal prompts gave one sample
    model, tok = _model(causal=True)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": i, "prompt": "The", "max_new_tokens": 12, "temperature": 1.0, **seed}
             for i, seed in enumerate([{"seed": -1}, {"seed": -1}, {}, {}])]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run_batch(model, tok, source, out, config=GenerationConfig(seed=3), progress=False)
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    source.write_text("".join(json.dumps({**line, "id": line["id"] + 2}) + "\n" for line in lines[:2]))
    run_batch(model, tok, source, tmp_path / "same.jsonl", config=GenerationConfig(seed=3), progress=False)
    # ids 2 and 3 without a seed sample as ids 2 and 3 with seed -1: from the run's seed and the id
    assert [json.loads(line)["text"] for line in (tmp_path / "same.jsonl").read_text().splitlines()] == texts[2:]
    assert texts[0] != texts[1]
