"""Bytes and words of `neurallayers eval --stride` / `--per-document` with a SentencePiece-style tokenizer (Llama's
non-legacy tokenizer.json: Metaspace prepending "▁" to the text, a decoder that strips the text's first space),
against lm-evaluation-harness's counts on the documents' own text. Such a tokenizer encodes " x" and "x" alike
("▁x"), so the decoded tokens of a document that starts with a space lost a byte (and a word); and the text scored
after the stream's first token, decoded alone, lost the space of its own first token."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from nl_train_helpers import tiny_run
from test_eval_sliding_window import LLAMA, cli_scores
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from neurallayers.data import Tokenizer
from neurallayers.training import fit

DOCS = ["the quick document, ünïcödé and all.\nIts second line.", "  short one  ", " = Title = \n text",
        "Ein drittes Dokument über Straßen 🚲 und Wege.\n", "last\n\nwith a blank line and more words at its end"]


def metaspace_tokenizer(texts: list[str], folder):
    """Llama's tokenizer.json as transformers converts it (legacy=False): byte fallback, "▁" prepended to the text's
    first split, the decoder's Strip of the first space; <s> and </s>."""
    hf = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False))
    Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>").save(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs with that tokenizer: documents after a bos, and without one."""
    tmp = tmp_path_factory.mktemp("spm")
    run = tiny_run(tmp, model=LLAMA, max_steps=1, save_interval=1, eval_interval=0, warmup_steps=0)
    tok_dir = metaspace_tokenizer([(tmp / "corpus.txt").read_text(), *DOCS], tmp / "tok")
    out = {}
    for bos in (True, False):
        cfg = dataclasses.replace(run, data=dataclasses.replace(run.data, tokenizer=str(tok_dir), document_bos=bos))
        fit(cfg, tmp / f"run-{bos}", progress=False)
        out[bos] = tmp / f"run-{bos}"
    (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    return out, tmp / "docs.jsonl"


N_BYTES = sum(len(d.encode("utf-8")) for d in DOCS)
N_WORDS = sum(len(re.split(r"\s+", d)) for d in DOCS)


@pytest.mark.parametrize("bos", [True, False])
def test_stride_counts_the_documents_own_bytes_and_words(runs, capsys, monkeypatch, tmp_path, bos):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    run_dirs, docs = runs
    tok = Tokenizer.load(run_dirs[bos])
    assert tok.encode(" short") == tok.encode("short") and tok.decode(tok.encode(DOCS[2])) != DOCS[2]
    got, _ = cli_scores(str(run_dirs[bos]), "--data", str(docs), "--block-size", "16", "--stride", "5",
                        capsys=capsys)
    if bos:  # every document's text is scored whole
        assert (got["bytes"], got["words"]) == (N_BYTES, N_WORDS)
    else:  # the first token has no prediction; the text after it is scored, from the space its next token holds
        ids = tok.encode(DOCS[0])
        assert tok.id_to_token(ids[1]).startswith("▁")
        rest = DOCS[0][len(tok.decode(ids[:1])) :]
        assert rest.startswith(" ")
        words = N_WORDS - len(re.split(r"\s+", DOCS[0])) + len(re.split(r"\s+", rest))
        assert (got["bytes"], got["words"]) == (N_BYTES - len(DOCS[0].encode()) + len(rest.encode()), words)


@pytest.mark.parametrize("bos", [True, False])
def test_per_document_counts_the_documents_own_bytes_and_words(runs, capsys, monkeypatch, tmp_path, bos):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    run_dirs, docs = runs
    got, out = cli_scores(str(run_dirs[bos]), "--data", str(docs), "--block-size", "16", "--per-document",
                          capsys=capsys)
    assert (got["bytes"], got["words"]) == (N_BYTES, N_WORDS) and f"documents: {len(DOCS)}" in out
