"""`neurallayers eval --stride`: what it refuses (a masked LM, a stride over the window), in one line and before a
corpus is read; what it takes (a split shorter than the window, any batch size, bf16 weights)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch
from nl_cli_helpers import assert_user_error, in_process

from neurallayers import ModelConfig
from neurallayers.training import DataConfig, RunConfig, TrainConfig, fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_char_run(tmp_path_factory.mktemp("stride"))


def tiny_char_run(tmp: Path) -> Path:
    """A tiny char-level decoder run (context 32) on its own corpus, with a val split."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog".split()
    (tmp / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)))
    run = RunConfig(
        model=ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16),
        train=TrainConfig(max_steps=2, batch_size=4, warmup_steps=0, eval_interval=0, save_interval=2, sample_tokens=0,
                          device="cpu", precision="fp32"),
        data=DataConfig(source=str(tmp / "corpus.txt"), tokenizer="char", val_fraction=0.1,
                        cache_dir=str(tmp / "cache")),
    )
    fit(run, tmp / "run", progress=False)
    return tmp / "run"


def scores(proc) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return dict(re.findall(r"([a-z][a-z ]*): (\S+)", proc.stdout))


def test_a_masked_lm_refuses_stride_in_one_line(tmp_path: Path, monkeypatch):
    from neurallayers import ModelConfig, Tokenizer, build_model
    from neurallayers.interop.hf import save_hf

    tokenizer = Tokenizer.load("gpt2").with_mask_token()
    cfg = ModelConfig.from_name("bert-tiny").replace(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1,
                                                     n_embd=8, n_head=2, intermediate_size=16, head="mlm",
                                                     pad_token_id=None)
    save_hf(build_model(cfg), tokenizer, tmp_path / "mlm")
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question.")
    proc = in_process("eval", "mlm", "--data", "text.txt", "--stride", "8", "--no-progress", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert_user_error(proc, "--stride applies to a decoder's next-token loss", "masked LM")
    # its own eval is as it was
    proc = in_process("eval", "mlm", "--data", "text.txt", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0 and "masked tokens scored" in proc.stdout and "bits per byte" not in proc.stdout


def test_a_stride_over_the_window_is_refused_before_the_corpus_is_read(run_dir: Path, tmp_path: Path, monkeypatch):
    # the corpus does not exist: the stride is named first, as it would be before a long tokenization
    for args, needle in ((["--stride", "33"], "--stride 33 is over the window length 32"),
                         (["--block-size", "16", "--stride", "17"], "--stride 17 is over the window length 16")):
        proc = in_process("eval", str(run_dir), "--data", "missing.txt", *args, cwd=tmp_path, monkeypatch=monkeypatch)
        assert_user_error(proc, needle)
    assert_user_error(in_process("eval", str(run_dir), "--stride", "0", cwd=tmp_path, monkeypatch=monkeypatch),
                      "--stride", "must be >= 1, got 0")


def test_a_block_size_over_the_context_is_refused_before_the_corpus_is_read(run_dir: Path, tmp_path: Path,
                                                                            monkeypatch):
    """It was checked after the corpus had been read and tokenized (minutes for a large one): with a corpus that is
    not there, the line named the corpus, not the --block-size."""
    proc = in_process("eval", str(run_dir), "--data", "missing.txt", "--block-size", "40", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert_user_error(proc, "--block-size 40 is over the model's context length 32")


def test_a_text_shorter_than_the_window_is_scored_whole(run_dir: Path, tmp_path: Path, monkeypatch):
    (tmp_path / "short.txt").write_text("the lazy dog")  # 12 characters and an eos: 12 targets, the window is 32
    got = scores(in_process("eval", str(run_dir), "--data", "short.txt", "--stride", "16", "--no-progress",
                            cwd=tmp_path, monkeypatch=monkeypatch))
    assert got["tokens scored"] == "12" and got["bytes"] == "11"  # the first character has no prediction
    assert got["words"] == "3"


def test_an_explicit_block_size_over_a_short_text_names_what_fits(run_dir: Path, tmp_path: Path, monkeypatch):
    """Non-overlapping windows of an explicit --block-size over a shorter text: the line said "(try --block-size)",
    the flag the user had just set, and not which size fits."""
    (tmp_path / "short.txt").write_text("the lazy dog")  # 13 tokens
    proc = in_process("eval", str(run_dir), "--data", "short.txt", "--block-size", "20", "--no-progress",
                      cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "the all split has 13 tokens; a window needs 21",
                      "--block-size): 12 or less", "--stride")
    ok = in_process("eval", str(run_dir), "--data", "short.txt", "--block-size", "12", "--no-progress", cwd=tmp_path,
                    monkeypatch=monkeypatch)
    assert scores(ok)["tokens scored"] == "12"


def test_the_batch_size_changes_nothing_and_bf16_stays_close(run_dir: Path, tmp_path: Path, monkeypatch):
    """The run's own val split in windows of 32 every 5 tokens: one window a batch, or 7 (the last window, shorter,
    goes alone), print the same; bf16 weights score within bf16's precision of fp32 (logits cast to fp32)."""
    procs = [in_process("eval", str(run_dir), "--stride", "5", "--batch-size", b, cwd=tmp_path,
                        monkeypatch=monkeypatch) for b in ("1", "7")]
    outs = [scores(proc) for proc in procs]
    assert_same_scores(outs[0], outs[1])
    assert outs[0]["split"] == "val"
    for proc in procs:  # a progress bar that reaches its total (the short last window is a batch of its own)
        assert re.search(r"eval: 100%.*\| (\d+)/\1 ", proc.stderr), proc.stderr
    bf16 = scores(in_process("eval", str(run_dir), "--stride", "5", "--dtype", "bf16", "--no-progress", cwd=tmp_path,
                             monkeypatch=monkeypatch))
    assert bf16["tokens scored"] == outs[0]["tokens scored"] and bf16["bytes"] == outs[0]["bytes"]
    assert abs(float(bf16["loss"]) - float(outs[0]["loss"])) < 0.02
    assert torch.isfinite(torch.tensor(float(bf16["bits per byte"])))
    # auto: the dtype the run stores, float32 master weights
    assert_same_scores(scores(in_process("eval", str(run_dir), "--stride", "5", "--dtype", "auto", "--no-progress",
                                         cwd=tmp_path, monkeypatch=monkeypatch)), outs[0])


def assert_same_scores(got: dict[str, str], want: dict[str, str]) -> None:
    """Equal as printed, but for float32's last bits: batches of other sizes sum in another order where torch uses
    more than one thread (a word perplexity of 4e6 printed to 2 decimals shows 5e-9 of it)."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if re.fullmatch(r"-?[\d.]+", value):
            assert float(got[key]) == pytest.approx(float(value), rel=1e-6), key
        else:
            assert got[key] == value, key


def test_a_stride_of_the_window_names_why_bits_per_byte_is_missing(run_dir: Path, tmp_path: Path, monkeypatch):
    proc = in_process("eval", str(run_dir), "--stride", "32", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0 and "bits per byte: not scored" in proc.stdout and "bytes:" not in proc.stdout
    assert "a stride below the window scores every token, and so do --per-document's" in proc.stdout


def test_an_unknown_token_is_text_in_bits_per_byte(run_dir: Path, tmp_path: Path, monkeypatch):
    """A character the char-level vocabulary never saw encodes to <unk>, a special token: it was taken for a document
    boundary, so "Zoë." split the text (words 6, not lm-evaluation-harness's 5), its loss was left out and its bytes
    went uncounted. lm-eval scores every token of a document over the document's own bytes and words."""
    import math

    import torch.nn.functional as F

    import neurallayers as nl

    text = "the lazy dog saw Zoë."  # Z, ë and . are unknown: the run's corpus is lower-case words
    (tmp_path / "zoe.txt").write_text(text)
    got = scores(in_process("eval", str(run_dir), "--data", "zoe.txt", "--stride", "16", "--no-progress",
                            cwd=tmp_path, monkeypatch=monkeypatch))
    model, tokenizer = nl.load(run_dir)
    ids = tokenizer.encode(text) + [tokenizer.eos_id]
    assert ids.count(tokenizer.token_to_id("<unk>")) == 3
    with torch.no_grad():  # one window holds it all: every target after the first, the eos context, not text
        nll = F.cross_entropy(model(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]), reduction="none")
    text_nll = float(nll[:-1].sum())
    scored = text[1:]  # the first character has no prediction
    assert got["bytes"] == str(len(scored.encode())) and got["words"] == str(len(re.split(r"\s+", scored)))
    assert float(got["bits per byte"]) == pytest.approx(text_nll / (len(scored.encode()) * math.log(2)), abs=1e-4)


def test_a_window_of_one_token_is_refused_in_one_line(run_dir: Path, tmp_path: Path, monkeypatch):
    """--block-size 1 --stride 1: each window's one token has no prediction, so nothing was scored and the mean raised
    ZeroDivisionError with a traceback (after reading the corpus)."""
    proc = in_process("eval", str(run_dir), "--data", "missing.txt", "--block-size", "1", "--stride", "1",
                      cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "--stride needs windows of at least 2 tokens", "--block-size 1")
    from neurallayers.training.evaluate import stride_windows

    with pytest.raises(ValueError, match="max_length 1 must be at least 2"):
        stride_windows(10, max_length=1, stride=1)


def test_a_text_whose_only_character_has_no_prediction_says_why_bits_per_byte_is_missing(run_dir: Path,
                                                                                        tmp_path: Path, monkeypatch):
    """A one-character text: its one target is the eos, context and not text, so there are no bytes to score; the
    bits per byte line was left out without a word, as if --stride gave none."""
    (tmp_path / "a.txt").write_text("a")
    proc = in_process("eval", str(run_dir), "--data", "a.txt", "--stride", "16", "--no-progress", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert scores(proc)["tokens scored"] == "1"
    assert "bits per byte: not scored: no text token was scored" in proc.stdout and "bytes:" not in proc.stdout
