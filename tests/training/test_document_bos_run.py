"""data.document_bos decides how a run's prompts start too: through the CLI, the run directory's tokenizer and its
Hugging Face export (transformers' AutoTokenizer, the oracle) encode each document as training's token stream holds
it, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from nl_train_helpers import child_env, read_jsonl, write_corpus
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors, trainers

from neurallayers.__main__ import main
from neurallayers.data import Tokenizer, load_corpus
from neurallayers.training import RunConfig
from neurallayers.training.prepare import tokenize_corpus
from neurallayers.weights import read_safetensors

CHANGED = "the run's tokenizer {} a bos before each prompt"

# Runs `neurallayers train` with argv[1:], stopped by a real SIGTERM right after step STOP_AT when it is set.
CHILD = r"""
import os, signal, sys
from neurallayers.__main__ import main
from neurallayers.training import trainer

stop_at, train_step = int(os.environ.get("STOP_AT", "0")), trainer._Fit._train_step

def step(self):
    n = self.step + 1
    out = train_step(self)
    if n == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return out

trainer._Fit._train_step = step
sys.exit(main(["train", *sys.argv[1:], "--no-progress"]))
"""


def _documents(root: Path) -> Path:
    """Eight JSON-lines documents of a few lines each."""
    lines = write_corpus(root / "lines.txt", n_lines=160).read_text().splitlines()
    path = root / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": "\n".join(lines[i:i + 20])}) + "\n" for i in range(0, 160, 20)))
    return path


def _llama_tokenizer(root: Path, corpus: Path) -> Path:
    """A byte-level BPE whose post-processor puts "<s>" first, as Llama's tokenizer.json does."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([corpus.read_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                                      special_tokens=[("<s>", 1)])
    Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>").save(root / "llama-tok")
    return root / "llama-tok"


def _config(root: Path, tokenizer: str, **train) -> Path:
    corpus = _documents(root)
    if tokenizer == "llama":
        tokenizer = str(_llama_tokenizer(root, corpus))
    cfg = {"model": dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1),
           "train": dict(max_steps=8, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=2,
                         eval_batches=2, log_interval=1, save_interval=4, keep_last=3, sample_tokens=0, device="cpu",
                         precision="fp32", seed=7),
           "data": dict(source=str(corpus), tokenizer=tokenizer, vocab_size=300 if tokenizer == "bpe" else None,
                        val_fraction=0.1, split="tail")}
    cfg["train"].update(train)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# (data.tokenizer, --data.document_bos given or None, the bos the documents get, whether the tokenizer changes)
CASES = {
    "char-with-bos": ("char", "true", True, True),
    "char-by-default": ("char", None, False, False),
    "bpe-with-bos": ("bpe", "true", True, True),
    "llama-without-bos": ("llama", "false", False, True),
    "llama-by-default": ("llama", None, True, False),
}


@pytest.mark.parametrize("case", CASES)
def test_the_exported_tokenizer_encodes_documents_as_training_did(case, tmp_path, monkeypatch, caplog):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    kind, given, bos, changed = CASES[case]
    cfg, run, hf_dir = _config(tmp_path, kind, max_steps=2), tmp_path / "run", tmp_path / "hf"
    flags = [] if given is None else ["--data.document_bos", given]
    with caplog.at_level("INFO", logger="neurallayers"):
        assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress", *flags]) == 0
    saved = RunConfig.from_yaml(run / "config.yaml")
    assert saved.data.document_bos is bos
    assert main(["convert", str(run), str(hf_dir)]) == 0

    tok = Tokenizer.load(run)
    tokens = tokenize_corpus(saved.data, load_corpus(saved.data.source), tok, seed=saved.train.seed)
    assert tokens.cached  # the stream training read, not one built here
    stream = [int(t) for t in tokens.train] + [int(t) for t in tokens.val]
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    documents = [json.loads(line)["text"] for line in Path(saved.data.source).read_text().splitlines()]
    assert sum((hf(doc)["input_ids"] + [tok.eos_id] for doc in documents), []) == stream
    assert (hf("hello")["input_ids"][:1] == [tok.bos_id]) is bos
    # generate, serve, chat and eval encode prompts with the run's own tokenizer, as neurallayers.load gives it
    import neurallayers

    _, loaded = neurallayers.load(run)
    assert loaded.encode("hello", add_special_tokens=True) == hf("hello")["input_ids"]
    told = CHANGED.format("now puts" if bos else "no longer puts")  # an explicit choice that changed it, said once
    assert caplog.text.count(told) == (1 if changed else 0), caplog.text


def _train(root: Path, *argv: str, stop_at: int = 0) -> subprocess.CompletedProcess:
    env = {**child_env(root), "STOP_AT": str(stop_at)}
    return subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, timeout=300)


def test_a_resumed_run_with_document_bos_equals_an_uninterrupted_one(tmp_path):
    cfg = _config(tmp_path, "char")
    flags = ["--config", str(cfg), "--data.document_bos", "true"]
    with ThreadPoolExecutor(1) as pool:  # the straight run beside the first session: the two cores
        side = pool.submit(_train, tmp_path, *flags, "--out", str(tmp_path / "straight"))
        first = _train(tmp_path, *flags, "--out", str(tmp_path / "split"), stop_at=4)
        straight = side.result()
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert first.returncode == 143, first.stderr[-3000:]
    resumed = _train(tmp_path, "--out", str(tmp_path / "split"), "--resume")  # config.yaml says document_bos
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert CHANGED.format("now puts") not in resumed.stderr  # its saved tokenizer already does
    assert "data settings differ" not in resumed.stderr

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed")}
                for r in read_jsonl(run / "metrics.jsonl")]

    assert rows(tmp_path / "split") == rows(tmp_path / "straight") and len(rows(tmp_path / "straight")) >= 8
    a, b = (read_safetensors(tmp_path / run / "model.safetensors") for run in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tok = Tokenizer.load(tmp_path / "split")
    assert RunConfig.from_yaml(tmp_path / "split/config.yaml").data.document_bos is True
    assert tok.encode("the fox", add_special_tokens=True)[:1] == [tok.bos_id]
