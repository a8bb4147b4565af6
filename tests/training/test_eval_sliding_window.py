"""`neurallayers eval --stride` against transformers' own sliding-window loop ("Perplexity of fixed-length models")
run on GPT2LMHeadModel / LlamaForCausalLM holding the same weights (exported with save_hf): the same tokens scored
and the same loss; bits per byte, byte and word perplexity against a plain sum of per-token losses over the
documents' UTF-8 bytes and words. A run with a bos before each document is scored on the stream it trained on."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from nl_train_helpers import tiny_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.__main__ import main  # noqa: E402
from neurallayers.data import Tokenizer  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402
from neurallayers.training import fit, load_run  # noqa: E402
from neurallayers.training.evaluate import sliding_window_score  # noqa: E402

TEXT = ("Ceci est un café naïve: the quick brown fox jumps over the lazy dog. Zürich, Köln and 東京 are cities.\n"
        "Numbers 3.14159 and 2.71828; emoji 🙂 too.\n\n") * 3
DOCS = ["The first document, ünïcödé and all.\nIts second line.", "  short one  ",
        "Ein drittes Dokument über Straßen 🚲 und Wege.\n", "last\n\nwith a blank line and more words at its end"]


def docs_loop(ref: torch.nn.Module, ids: torch.Tensor, *, max_length: int, stride: int,
              max_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The guide's loop as written, on transformers' model; (per-token losses, their target ids) of what it scores.
    Its count of a window's tokens, num_valid_tokens - batch_size, is one short when trg_len < the window: the
    count here is of the shifted labels the loss averages (the model's own loss is checked to be their mean)."""
    seq_len = ids.size(1)
    nlls, targets = [], []
    prev_end_loc = 0
    for n, begin_loc in enumerate(range(0, seq_len, stride)):
        if n == max_windows:
            break
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = ref(input_ids, labels=target_ids)
        labels = target_ids[0, 1:]
        per_token = F.cross_entropy(outputs.logits[0, :-1].double(), labels, ignore_index=-100, reduction="none")
        keep = labels != -100
        assert int(keep.sum()) == trg_len - (trg_len == input_ids.size(1))  # the guide counts trg_len - 1 each time
        torch.testing.assert_close(outputs.loss.double(), per_token[keep].mean(), atol=1e-5, rtol=0)
        nlls.append(per_token[keep])
        targets.append(labels[keep])
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return torch.cat(nlls), torch.cat(targets)


def cli_scores(*args: str, capsys) -> tuple[dict[str, float], str]:
    """The numbers `neurallayers eval ARGS` prints, by name, and its output."""
    assert main(["eval", *args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    pairs = re.findall(r"([a-z][a-z ]*): ([\d,.]+)", out)
    return {k.strip(): float(v.replace(",", "")) for k, v in pairs}, out


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return small_gpt2_folder(tmp_path_factory, block_size=32)


def small_gpt2_folder(tmp_path_factory, *, block_size: int):
    """A small GPT-2 with GPT-2's own tokenizer, saved as a Hugging Face folder."""
    tok = Tokenizer.load("gpt2")
    cfg = ModelConfig.from_name("gpt2").replace(n_layer=2, n_head=2, n_embd=16, block_size=block_size,
                                                vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # random norms and biases, so a dropped one cannot pass
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("gpt2") / "hf"
    save_hf(model, tok, folder)
    return folder


# (window, stride, batch size, --max-batches): non-overlapping, half, a stride that does not divide, every token a
# window of its own (its first 35), a prefix of the windows
CASES = [(16, 16, 3, None), (16, 8, 3, None), (16, 5, 2, None), (12, 1, 7, 5), (16, 6, 2, 3)]


@pytest.mark.parametrize(("window", "stride", "batch", "max_batches"), CASES)
def test_gpt2_equals_the_transformers_guide_loop(gpt2_folder, tmp_path, capsys, monkeypatch, window, stride, batch,
                                                 max_batches):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    extra = ["--max-batches", str(max_batches)] if max_batches else []
    got, out = cli_scores(str(gpt2_folder), "--data", str(tmp_path / "text.txt"), "--block-size", str(window),
                          "--stride", str(stride), "--batch-size", str(batch), *extra, capsys=capsys)

    tok = Tokenizer.load("gpt2")
    ids = tok.encode(TEXT) + [tok.eos_id]  # GPT-2 puts no bos before a document; its eos ends it
    ref = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    nll, targets = docs_loop(ref, torch.tensor([ids]), max_length=window, stride=stride,
                             max_windows=max_batches and max_batches * batch)
    assert got["tokens scored"] == len(nll)
    assert abs(got["loss"] - nll.mean().item()) < 1e-4, (got["loss"], nll.mean().item())
    # the function itself, to the last digit
    from neurallayers.api import load

    ours, _ = load(gpt2_folder)
    score = sliding_window_score(ours.eval(), torch.tensor(ids).numpy(), max_length=window, stride=stride,
                                 batch_size=batch, max_batches=max_batches, special_ids=tok.special_ids,
                                 device=torch.device("cpu"))
    assert score.tokens == len(nll)
    assert math.isclose(score.nll, nll.sum().item(), rel_tol=1e-6)

    if stride == window:  # each window's first token has no prediction: the text's bytes are not all scored
        assert "bytes" not in got and "bits per byte: not scored" in out
        return
    # bits per byte: the text's tokens (not the eos) over the bytes of the text they spell; the first token has no
    # prediction, and with --max-batches only the prefix the windows covered counts
    text_nll = nll[targets != tok.eos_id].sum().item()
    scored = tok.decode(ids[1 : 1 + len(nll)], clean_up_tokenization_spaces=False)
    n_bytes = len(scored.encode("utf-8"))
    if not max_batches:
        assert n_bytes == len(TEXT.encode("utf-8")) - len(tok.decode(ids[:1]).encode("utf-8"))
    assert got["bytes"] == n_bytes
    assert abs(got["bits per byte"] - text_nll / n_bytes / math.log(2)) < 1e-4
    assert math.isclose(got["byte perplexity"], math.exp(text_nll / n_bytes), abs_tol=1e-4)


def test_a_corpus_shorter_than_the_window_is_one_window(gpt2_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "short.txt").write_text("A short café text.", encoding="utf-8")
    tok = Tokenizer.load("gpt2")
    ids = tok.encode("A short café text.") + [tok.eos_id]
    assert len(ids) < 32
    got, _ = cli_scores(str(gpt2_folder), "--data", str(tmp_path / "short.txt"), "--stride", "16", capsys=capsys)
    ref = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    nll, _ = docs_loop(ref, torch.tensor([ids]), max_length=32, stride=16)
    assert got["tokens scored"] == len(ids) - 1 == len(nll)
    assert abs(got["loss"] - nll.mean().item()) < 1e-4


def llama_tokenizer(texts: list[str], folder):
    """A byte-level BPE with Llama's specials: runs trained with it put a bos before each document."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>").save(folder)
    return folder


LLAMA = dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, n_kv_head=1, tie_embeddings=False,
             intermediate_size=48)


def bos_llama_run(tmp_path, monkeypatch, docs: list[str]):
    """A one-step Llama run with a bos before each document (its own SentencePiece-style tokenizer, trained on the
    corpus and `docs`) at tmp_path/run, exported to tmp_path/hf: (model, tokenizer)."""
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    run = tiny_run(tmp_path, model=LLAMA, max_steps=1, save_interval=1, eval_interval=0, warmup_steps=0)
    tok_dir = llama_tokenizer([(tmp_path / "corpus.txt").read_text(), *docs], tmp_path / "tok")
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, tokenizer=str(tok_dir), document_bos=True))
    fit(run, tmp_path / "run", progress=False)
    model, tok, _ = load_run(tmp_path / "run")
    save_hf(model, tok, tmp_path / "hf")
    return model, tok


@pytest.mark.parametrize("stride", [12, 5])
def test_llama_run_with_a_bos_per_document_equals_the_guide_loop(tmp_path, capsys, monkeypatch, stride):
    model, tok = bos_llama_run(tmp_path, monkeypatch, DOCS)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    got, _ = cli_scores(str(tmp_path / "run"), "--data", str(tmp_path / "docs.jsonl"), "--block-size", "24",
                        "--stride", str(stride), "--batch-size", "4", capsys=capsys)

    ids = [i for d in DOCS for i in [tok.bos_id, *tok.encode(d), tok.eos_id]]  # as the run trained: bos doc eos
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    nll, targets = docs_loop(ref, torch.tensor([ids]), max_length=24, stride=stride)
    assert got["tokens scored"] == len(ids) - 1 == len(nll)
    assert abs(got["loss"] - nll.mean().item()) < 1e-4, (got["loss"], nll.mean().item())
    # every document's text is scored whole (the stream starts with a bos): its bytes and words as lm-eval counts
    text_nll = nll[(targets != tok.bos_id) & (targets != tok.eos_id)].sum().item()
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    n_words = sum(len(re.split(r"\s+", d)) for d in DOCS)
    assert (got["bytes"], got["words"]) == (n_bytes, n_words)
    assert abs(got["bits per byte"] - text_nll / n_bytes / math.log(2)) < 1e-4
    assert math.isclose(got["word perplexity"], math.exp(text_nll / n_words), rel_tol=1e-4)


def test_windows_refuse_what_would_leave_tokens_unscored():
    from neurallayers.training.evaluate import stride_windows

    for n, stride, match in ((100, 0, "stride 0 must be in"), (100, 17, r"stride 17 must be in \[1, max_length 16\]"),
                             (1, 4, "a stream of 1 token")):
        with pytest.raises(ValueError, match=match):
            stride_windows(n, max_length=16, stride=stride)
    # the guide's windows: every 8 tokens, the last one ends at the stream's end and starts where the loop stops
    assert [(w.begin, w.end, w.first) for w in stride_windows(30, max_length=16, stride=8)] == [
        (0, 16, 1), (8, 24, 16), (16, 30, 24)]


def test_documents_bytes_are_their_own_text_where_a_normalizer_changes_it():
    """A tokenizer.json with an NFC normalizer (Qwen2's has one) decodes "e" + U+0301 as "é": one byte short of the
    document's own text, which lm-eval counts, so bits per byte over a whole corpus was too high."""
    from tokenizers import normalizers

    from neurallayers.training.evaluate import text_size

    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer.from_hf(hf, eos_token="</s>")
    docs = ["un cafe\u0301 noir", "the lazy dog", "Ko\u0308ln"]  # decomposed accents
    stream = [i for ids in tok.encode_batch(docs) for i in [*ids, tok.eos_id]]
    assert tok.decode(tok.encode(docs[0])) == "un café noir"  # NFC: one byte shorter
    own = (sum(len(d.encode()) for d in docs), sum(len(re.split(r"\s+", d)) for d in docs))
    assert text_size(tok, stream, before=[tok.eos_id], documents=docs) == own


def test_an_unknown_token_is_text_unless_it_frames_documents(tmp_path):
    """The unknown token is text (a character a char-level vocabulary never saw); transformers' GPT-2
    tokenizer_config.json names its eos "<|endoftext|>" as unk_token too, and that one stays a document boundary."""
    from neurallayers.training.evaluate import boundary_ids

    char = Tokenizer.train_char(["abc"])
    unk = char.token_to_id("<unk>")
    assert unk in char.special_ids and unk not in boundary_ids(char) and char.eos_id in boundary_ids(char)
    Tokenizer.load("gpt2").save(tmp_path / "gpt2")
    config = json.loads((tmp_path / "gpt2" / "tokenizer_config.json").read_text())
    (tmp_path / "gpt2" / "tokenizer_config.json").write_text(json.dumps({**config, "unk_token": "<|endoftext|>"}))
    gpt2 = Tokenizer.load(tmp_path / "gpt2")
    assert gpt2.named_tokens["unk_token"] == "<|endoftext|>" and boundary_ids(gpt2) == [gpt2.eos_id]
