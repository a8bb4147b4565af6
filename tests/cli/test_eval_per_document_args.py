"""`neurallayers eval --per-document`: what it refuses, in one line and before a corpus is read (a masked LM, --stride,
--max-batches, a run's val/train split, a tokenizer with no bos or eos); what it takes (--block-size, any batch size,
a corpus of files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from nl_cli_helpers import assert_user_error, in_process
from test_eval_stride import scores, tiny_char_run

from neurallayers import ModelConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_char_run(tmp_path_factory.mktemp("per_document"))


@pytest.mark.parametrize(("args", "needles"), [
    (["--stride", "8"], ["--per-document scores each document in disjoint windows of --block-size", "--stride"]),
    (["--max-batches", "2"], ["--max-batches keeps the first windows of one stream", "leave it out"]),
    (["--split", "all", "--stride", "4"], ["--stride slides windows over one stream"]),
])
def test_what_does_not_compose_is_refused_before_the_corpus_is_read(run_dir, tmp_path, monkeypatch, args, needles):
    # the corpus does not exist: the flag is named first, as it would be before reading a large corpus
    proc = in_process("eval", str(run_dir), "--data", "missing.txt", "--per-document", *args, cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert_user_error(proc, *needles)


def test_the_runs_own_split_is_refused_naming_what_to_use(run_dir, tmp_path, monkeypatch):
    """The run's val split holds pieces of documents in a stream (a long document is cut, and may be split between
    train and val): not documents lm-eval would score from their start."""
    for args, split in (([], "val"), (["--split", "train"], "train")):
        proc = in_process("eval", str(run_dir), "--per-document", *args, cwd=tmp_path, monkeypatch=monkeypatch)
        assert_user_error(proc, f"the run's {split} split holds pieces of them", "--split all", "--data")
    got = scores(in_process("eval", str(run_dir), "--per-document", "--split", "all", "--no-progress", cwd=tmp_path,
                            monkeypatch=monkeypatch))
    text = (run_dir.parent / "corpus.txt").read_text()
    assert got["documents"] == "1" and got["bytes"] == f"{len(text.encode()):,}"
    assert got["tokens scored"] == f"{len(text):,}"  # a char tokenizer: every character is scored, the first too


def test_the_runs_own_corpus_named_with_data_is_told_to_add_split_all(run_dir, tmp_path, monkeypatch):
    """--data naming the run's own corpus scores its val split by default: the refusal told the user to "name the
    corpus with --data", which they had just done, and doing it again gave the same line."""
    corpus = str(run_dir.parent / "corpus.txt")
    proc = in_process("eval", str(run_dir), "--data", corpus, "--per-document", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "the run's val split holds pieces of them", "use --split all",
                      f"--data {corpus} is the run's own corpus")
    assert "name the corpus with --data" not in proc.stderr
    got = scores(in_process("eval", str(run_dir), "--data", corpus, "--per-document", "--split", "all",
                            "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch))
    assert got["documents"] == "1"


def test_a_masked_lm_refuses_per_document_in_one_line(tmp_path: Path, monkeypatch):
    from neurallayers import Tokenizer, build_model
    from neurallayers.interop.hf import save_hf

    tokenizer = Tokenizer.load("gpt2").with_mask_token()
    cfg = ModelConfig.from_name("bert-tiny").replace(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1,
                                                     n_embd=8, n_head=2, intermediate_size=16, head="mlm",
                                                     pad_token_id=None)
    save_hf(build_model(cfg), tokenizer, tmp_path / "mlm")
    proc = in_process("eval", "mlm", "--data", "missing.txt", "--per-document", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert_user_error(proc, "--per-document applies to a decoder's next-token loss", "masked LM")


def test_a_tokenizer_without_bos_or_eos_is_refused(tmp_path: Path, monkeypatch):
    """lm-eval's first context is the bos, else the eos: with neither, there is nothing to start a document after."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from neurallayers import Tokenizer, build_model
    from neurallayers.interop.hf import save_hf

    hf = HFTokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = Tokenizer.from_hf(hf)
    assert tokenizer.bos_id is None and tokenizer.eos_id is None
    save_hf(build_model(ModelConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=8)), tokenizer,
            tmp_path / "lm")
    (tmp_path / "text.txt").write_text("a b a")
    proc = in_process("eval", "lm", "--data", "text.txt", "--per-document", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "--per-document starts each document after the tokenizer's bos (else its eos)")


def test_block_size_and_batch_size_compose(run_dir, tmp_path, monkeypatch):
    """Each document scored whole whatever the window (a shorter --block-size: more windows, the same tokens) and the
    batch size (the same sums); a folder of files is a corpus of documents, one a file."""
    docs = {"a.txt": "the lazy dog jumps", "b.txt": "over the quick brown fox " * 6, "c.txt": "a"}
    (tmp_path / "docs").mkdir()
    for name, text in docs.items():
        (tmp_path / "docs" / name).write_text(text)
    outs = [scores(in_process("eval", str(run_dir), "--data", "docs", "--per-document", *args, "--no-progress",
                              cwd=tmp_path, monkeypatch=monkeypatch))
            for args in ([], ["--batch-size", "1"], ["--block-size", "7", "--batch-size", "3"])]
    assert outs[0] == outs[1]
    assert outs[0]["documents"] == "3" and outs[0]["tokens scored"] == str(sum(map(len, docs.values())))
    assert outs[2]["tokens scored"] == outs[0]["tokens scored"] and outs[2]["window"] == "7"
    assert outs[0]["bytes"] == str(sum(len(t) for t in docs.values()))
    assert outs[0]["words"] == str(sum(len(re.split(r"\s+", t)) for t in docs.values()))


def test_a_jsonl_corpus_with_an_empty_document_counts_its_word(run_dir, tmp_path, monkeypatch):
    """lm-eval scores an empty document as log-likelihood 0 and counts len(re.split(r"\\s+", "")) = 1 word."""
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["the dog", "", "a fox"]))
    got = scores(in_process("eval", str(run_dir), "--data", "docs.jsonl", "--per-document", "--no-progress",
                            cwd=tmp_path, monkeypatch=monkeypatch))
    assert (got["documents"], got["tokens scored"], got["words"], got["bytes"]) == ("3", "12", "5", "12")
