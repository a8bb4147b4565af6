"""Batch on large inputs: the work before the first generation and the final reordering grow with the file, but hold
no per-line copies of what lines share, nor the whole output in memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from neurallayers.batch import decoding, read_inputs, run, run_batch
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig, generate
from neurallayers.models.decoder import DecoderLM

TEXT = "the quick brown fox jumps over the lazy dog.\n"
GREEDY = GenerationConfig(temperature=0, max_new_tokens=4)


@pytest.fixture(scope="module")
def lm():
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, init_std=0.3)
    return DecoderLM(cfg).eval(), tok


def write_lines(path: Path, n: int) -> Path:
    words = TEXT.split()
    lines = [{"id": f"p{i}", "prompt": " ".join(words[i % 5 :][:2])} for i in range(n)]
    for line in lines[1::2]:
        line["temperature"] = 0
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_prompts_are_tokenized_in_chunks_and_lines_share_their_settings(lm, tmp_path, monkeypatch):
    """200k short lines (6 MB) took 670 MB and 50 s before the first generation: every text's tokenizer objects at
    once, and a GenerationConfig made (and described as JSON) for each line. Texts go in chunks now, and lines with
    the same settings share one config."""
    model, tok = lm
    source = write_lines(tmp_path / "in.jsonl", 11)
    items = read_inputs(source, mode="generate")
    sizes, replaced = [], []
    encode_batch, replace = type(tok).encode_batch, GenerationConfig.replace
    monkeypatch.setattr(
        type(tok), "encode_batch", lambda self, texts, **kw: sizes.append(len(texts)) or encode_batch(self, texts, **kw)
    )
    monkeypatch.setattr(GenerationConfig, "replace", lambda self, **kw: replaced.append(kw) or replace(self, **kw))
    monkeypatch.setattr(decoding, "ENCODE_CHUNK", 4)
    config = GenerationConfig(temperature=0.8, max_new_tokens=5, seed=3)
    prompts, configs, seeds = decoding._check_prompts(items, tok, config, 32, source=source)
    assert sizes == [4, 4, 3]
    assert [prompts[it.index] for it in items] == [tok.encode(it.text, add_special_tokens=True) for it in items]
    assert len(replaced) <= 4  # two settings (the run's, and temperature 0), each made once, not once per line
    assert len({id(configs[it.index]) for it in items}) == 2
    assert [configs[it.index].temperature for it in items[:2]] == [0.8, 0]

    out = run_batch(model, tok, source, tmp_path / "out.jsonl", config=config, batch_size=3, progress=False).output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    for it, row in zip(items, got, strict=True):  # still each line's own settings and seed
        want = generate(model, tok, [it.text], config.replace(**it.params), seeds=[seeds[it.index]])[0]
        assert (row["id"], row["text"]) == (it.id, want.text)


def test_putting_the_results_in_input_order_holds_no_copy_of_them(lm, tmp_path, monkeypatch):
    """The last step rewrites the results in input order. It held every result line in memory, then all of them
    joined once more: twice the output's size, for a large file more than the machine had."""
    model, tok = lm
    source = write_lines(tmp_path / "in.jsonl", 64)
    long = "x" * 20_000  # 64 results of 20 kB: 1.3 MB of output

    def fake_generate(model, tokenizer, batch, prompts, config, seeds, *, source):
        return [
            SimpleNamespace(text=long + str(it.index), finish_reason="length", prompt_tokens=1, completion_tokens=1)
            for it in batch
        ]

    finish, peak = run._finish_jsonl, []

    def measured(progress, items):
        tracemalloc.start()
        try:
            finish(progress, items)
            peak.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()

    monkeypatch.setattr(run, "_generate", fake_generate)
    monkeypatch.setattr(run, "_finish_jsonl", measured)
    out = run_batch(model, tok, source, tmp_path / "out.jsonl", config=GREEDY, batch_size=8, progress=False).output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(64)]  # input order (batches ran shortest prompts first)
    assert [r["text"] for r in rows] == [long + str(i) for i in range(64)]
    assert peak[0] < out.stat().st_size / 4
