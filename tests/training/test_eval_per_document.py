"""`neurallayers eval --per-document` against lm-evaluation-harness's perplexity tasks (wikitext), its algorithm
written out here as a plain loop: each document tokenized on its own, the prefix token (bos, else eos) as its first
context, `get_rolling_token_windows(context_len=1)` then `make_disjoint_window`, each window scored as HFLM's
`_loglikelihood_tokens` does ((context + continuation)[-(max_length + 1):][:-1] in, the last len(continuation)
log-probabilities), on transformers' GPT2LMHeadModel / LlamaForCausalLM holding the run's weights; word_perplexity,
byte_perplexity and bits_per_byte as its weighted means over documents of the documents' own words and bytes."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from test_eval_sliding_window import bos_llama_run, cli_scores, small_gpt2_folder  # noqa: E402

from neurallayers.api import load  # noqa: E402
from neurallayers.data import Tokenizer  # noqa: E402
from neurallayers.training.evaluate import document_scores, rolling_windows  # noqa: E402

# lengths around the window: shorter, one window exactly, one token over (a last window of one target), several
# windows and a short last one; a document that starts with spaces, one of a single word, an empty one
DOCS = ["The first document, ünïcödé and all.\nIts second line, and a third: 東京 🙂.", "  short one  ",
        "Ein drittes Dokument über Straßen 🚲 und Wege.\n" * 3, "last\n\nwith a blank line and more words at its end",
        "word", "", "A much longer text. " * 12]


def lm_eval_windows(tokens: list[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """get_rolling_token_windows(tokens, prefix, max_len, context_len=1), then make_disjoint_window on each."""
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    pairs = [([prefix, *tokens[: first - 1]], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_len)  # context_len 1: max_len predictions a window
        end = predicted + n
        pairs.append((tokens[end - max_len - 1 : end - 1], tokens[end - n : end]))
        predicted += n
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in pairs]


def lm_eval_loglikelihood(ref: torch.nn.Module, tokens: list[int], prefix: int, max_len: int) -> tuple[float, int]:
    """(sum of log-probabilities, tokens scored) of one document, window by window as HFLM scores them."""
    total, count = 0.0, 0
    for ctx, cont in lm_eval_windows(tokens, prefix, max_len):
        inp = (ctx + cont)[-(max_len + 1) :][:-1]
        assert len(inp) <= max_len
        with torch.no_grad():
            logits = ref(torch.tensor([inp])).logits[0].double()
        logprobs = torch.log_softmax(logits[len(inp) - len(cont) :], dim=-1)  # (len(cont), V)
        total += float(logprobs.gather(1, torch.tensor(cont)[:, None]).sum())
        count += len(cont)
    return total, count


def lm_eval_scores(ref, tok: Tokenizer, docs: list[str], prefix: int, max_len: int) -> dict[str, float]:
    """wikitext's process_results per document, then the weighted aggregations of lm_eval.api.metrics."""
    results = [lm_eval_loglikelihood(ref, tok.encode(d), prefix, max_len) for d in docs]
    ll, tokens = sum(r[0] for r in results), sum(r[1] for r in results)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"tokens scored": tokens, "words": words, "bytes": n_bytes, "loglikelihoods": [r[0] for r in results],
            "word perplexity": math.exp(-ll / words), "byte perplexity": math.exp(-ll / n_bytes),
            "bits per byte": -ll / n_bytes / math.log(2), "loss": -ll / tokens}


def write_docs(path, docs: list[str]):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def assert_matches(got: dict, want: dict, out: str, n_docs: int) -> None:
    assert f"documents: {n_docs}" in out
    for key in ("tokens scored", "words", "bytes"):
        assert got[key] == want[key], (key, got[key], want[key])
    for key in ("loss", "bits per byte", "byte perplexity", "word perplexity"):
        assert math.isclose(got[key], want[key], rel_tol=2e-4, abs_tol=1e-4), (key, got[key], want[key])


def test_windows_are_lm_evals():
    with pytest.raises(ValueError, match="max_length 0 must be at least 1"):
        rolling_windows(5, max_length=0)
    for n in range(0, 40):
        for max_len in range(1, 10):
            want = lm_eval_windows(list(range(n)), -1, max_len)
            got = rolling_windows(n, max_length=max_len)
            assert len(got) == len(want)
            stream = [-1, *range(n)]
            for (begin, end, scored), (ctx, cont) in zip(got, want, strict=True):
                assert stream[begin:end] == (ctx + cont)[-(max_len + 1) :][:-1]
                assert stream[end - scored + 1 : end + 1] == cont


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A small GPT-2 (context 16) with GPT-2's own tokenizer, saved as a Hugging Face folder."""
    return small_gpt2_folder(tmp_path_factory, block_size=16)


# (--block-size or the model's 16, --batch-size)
@pytest.mark.parametrize(("window", "batch"), [(None, 8), (8, 3), (5, 1)])
def test_gpt2_equals_lm_evals_rolling_loglikelihood(gpt2_folder, tmp_path, capsys, monkeypatch, window, batch):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    docs = write_docs(tmp_path / "docs.jsonl", DOCS)
    extra = ["--block-size", str(window)] if window else []
    got, out = cli_scores(str(gpt2_folder), "--data", str(docs), "--per-document", "--batch-size", str(batch),
                          *extra, capsys=capsys)
    tok = Tokenizer.load("gpt2")
    ref = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    max_len = window or 16
    want = lm_eval_scores(ref, tok, DOCS, tok.eos_id, max_len)  # GPT-2's bos is its eos, <|endoftext|>
    assert_matches(got, want, out, len(DOCS))
    # each document's log-likelihood, to 1e-5
    ours, _ = load(gpt2_folder)
    nll = document_scores(ours.eval(), [tok.encode(d) for d in DOCS], prefix_id=tok.eos_id, max_length=max_len,
                          batch_size=batch, device=torch.device("cpu"))
    for mine, theirs in zip(nll, want["loglikelihoods"], strict=True):
        assert abs(-mine - theirs) < 1e-5 * max(1.0, abs(theirs)), (mine, theirs)


def test_llama_run_with_a_bos_equals_lm_evals_rolling_loglikelihood(tmp_path, capsys, monkeypatch):
    """A run whose documents start with bos: lm-eval's prefix is the bos, and the documents' tokens are their text's
    (the bos is the prefix, never a target)."""
    model, tok = bos_llama_run(tmp_path, monkeypatch, DOCS)
    docs = write_docs(tmp_path / "docs.jsonl", DOCS)
    got, out = cli_scores(str(tmp_path / "run"), "--data", str(docs), "--per-document", "--block-size", "12",
                          "--batch-size", "4", capsys=capsys)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert tok.bos_id is not None and tok.bos_id != tok.eos_id
    want = lm_eval_scores(ref, tok, DOCS, tok.bos_id, 12)
    assert_matches(got, want, out, len(DOCS))
    nll = document_scores(model.eval(), [tok.encode(d) for d in DOCS], prefix_id=tok.bos_id, max_length=12,
                          batch_size=4, device=torch.device("cpu"))
    for mine, theirs in zip(nll, want["loglikelihoods"], strict=True):
        assert abs(-mine - theirs) < 1e-5 * max(1.0, abs(theirs)), (mine, theirs)
