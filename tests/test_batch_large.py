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
from neurallayers.models import build_model
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


def test_lines_that_differ_only_in_their_seed_share_one_config(lm, tmp_path, monkeypatch):
    """A line's seed is its own, not a setting: keyed by it, a file whose lines each carry a seed (as vLLM requests do)
    made and described a config per line again (8 s for 50k lines before the first generation, not 0.7)."""
    model, tok = lm
    source = tmp_path / "in.jsonl"
    lines = [{"id": i, "prompt": "the", "seed": 100 + i, **({"temperature": 0.5} if i % 2 else {})} for i in range(6)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = read_inputs(source, mode="generate")
    replaced, replace = [], GenerationConfig.replace
    monkeypatch.setattr(GenerationConfig, "replace", lambda self, **kw: replaced.append(kw) or replace(self, **kw))
    config = GenerationConfig(temperature=1.0, max_new_tokens=6, seed=3)
    _, configs, seeds = decoding._check_prompts(items, tok, config, 32, source=source)
    assert len(replaced) <= 2  # the two settings, each made once
    assert len({id(configs[it.index]) for it in items}) == 2
    assert [seeds[it.index] for it in items] == [100 + i for i in range(6)]
    monkeypatch.setattr(GenerationConfig, "replace", replace)

    out = run_batch(model, tok, source, tmp_path / "out.jsonl", config=config, batch_size=4, progress=False).output
    got = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    want = [generate(model, tok, ["the"], config.replace(**it.params), seeds=[it.params["seed"]])[0].text
            for it in items]
    assert got == want and len(set(got)) > 1  # each line still samples with its own seed


@pytest.mark.parametrize("seed", [1.5, 2**64, True])
def test_a_bad_seed_is_still_named_with_its_line(lm, tmp_path, seed):
    model, tok = lm
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": "the", "seed": s}) + "\n" for s in (1, seed)))
    with pytest.raises(ValueError, match=r"in\.jsonl line 2: seed=.*: must be None or an integer"):
        run_batch(model, tok, source, tmp_path / "out.jsonl", config=GREEDY, progress=False)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_resumed_embedding_run_holds_one_copy_of_the_vectors(tmp_path, monkeypatch, suffix):
    """The vectors wait in part files and are joined at the end. A resumed run read the earlier parts' vectors at its
    start and held them to its end; the join read them all again, then np.stack and astype copied them: four times
    the matrix, so a large job that had run for hours failed at its last step for want of memory, as did every rerun.
    Now one copy, and numpy's write buffer (16 MiB at most: all of this small matrix)."""
    import numpy as np

    import neurallayers.embeddings

    tok = Tokenizer.train_char([TEXT])
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                                                     n_embd=16)
    model = build_model(cfg).eval()
    n, width, calls = 2000, 1024, []

    def fake_embed(model, tokenizer, texts, **kw):  # a vector that names its text, without a forward
        calls.append(1)
        if len(calls) == 20:  # half the batches of 50 are in their part files
            raise KeyboardInterrupt
        return torch.tensor([float(len(t)) for t in texts])[:, None] + torch.arange(width) % 2

    monkeypatch.setattr(neurallayers.embeddings, "embed", fake_embed)
    source, out = tmp_path / "in.jsonl", tmp_path / f"out{suffix}"
    source.write_text("".join(json.dumps({"text": "the quick"[: 1 + i % 9]}) + "\n" for i in range(n)))
    with pytest.raises(KeyboardInterrupt):
        run_batch(model, tok, source, out, batch_size=50, progress=False)
    tracemalloc.start()
    try:
        result = run_batch(model, tok, source, out, batch_size=50, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.resumed, result.computed) == (19 * 50, n - 19 * 50)
    got = np.load(out)["embeddings"] if suffix == ".npz" else np.load(out)
    want = ((1 + np.arange(n) % 9)[:, None] + np.arange(width) % 2).astype(np.float32)
    np.testing.assert_array_equal(got, want)  # each row its own line's, in input order
    assert peak < 2.5 * want.nbytes, peak / want.nbytes
