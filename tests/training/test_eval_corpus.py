"""`neurallayers eval RUN` on corpora: another corpus is tokenized as the run's own was (a bos before each document
or none, as its config.yaml says) and scored as a plain PyTorch loop scores the same windows; a run's own corpus
that has gone, or a val split it does not have, is one line that says what to pass instead."""

import dataclasses
import json
import re

import numpy as np
import torch
import torch.nn.functional as F
from nl_train_helpers import tiny_run, write_corpus
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors, trainers

from neurallayers.__main__ import main
from neurallayers.data import Tokenizer
from neurallayers.training import fit, load_run


def llama_style_tokenizer(corpus, folder):
    """A BPE whose own encoding starts a text with bos (a Llama tokenizer.json's post-processor)."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(
        [corpus.read_text()],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>").save(folder)
    return folder


def test_another_corpus_is_tokenized_as_the_run_was_and_scored_as_a_plain_loop(tmp_path, capsys, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.txt")
    run = tiny_run(tmp_path, corpus=corpus, max_steps=2, save_interval=2, eval_interval=2, warmup_steps=0)
    data = dataclasses.replace(
        run.data, tokenizer=str(llama_style_tokenizer(corpus, tmp_path / "tok")), document_bos=False
    )  # the run trained without a bos before its documents
    fit(dataclasses.replace(run, data=data), tmp_path / "run", progress=False)
    other = write_corpus(tmp_path / "other.txt", n_lines=40, seed=3)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    assert main(["eval", str(tmp_path / "run"), "--data", str(other), "--batch-size", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    scored, loss = re.search(r"tokens scored: ([\d,]+)  loss: ([\d.]+)", out).groups()

    model, tok, _ = load_run(tmp_path / "run")
    ids = np.array(tok.encode(other.read_text()) + [tok.eos_id])  # one document: its tokens, then eos; no bos
    block = model.config.block_size
    starts = np.linspace(0, len(ids) - block - 1, num=(len(ids) - 1) // block).round().astype(int)
    x = torch.tensor(np.stack([ids[s : s + block] for s in starts]))
    y = torch.tensor(np.stack([ids[s + 1 : s + block + 1] for s in starts]))
    with torch.no_grad():
        logits = model(x).logits
    expect = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).item()
    assert int(scored.replace(",", "")) == y.numel()
    assert abs(float(loss) - expect) < 1e-4, (loss, expect)


def test_a_run_whose_corpus_is_gone_says_so_and_names_data(tmp_path, capsys, monkeypatch):
    """Without --data, eval reads the run's own corpus: when it has moved, the line said "no corpus '/abs/path':
    expected a built-in corpus ..., a text file ...", as if the user had named it wrongly."""
    run = tiny_run(tmp_path, max_steps=1, save_interval=1, eval_interval=0, warmup_steps=0)
    fit(run, tmp_path / "run", progress=False)
    (tmp_path / "corpus.txt").rename(tmp_path / "moved.txt")
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    assert main(["eval", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run's corpus" in err[0] and "corpus.txt" in err[0] and "--data" in err[0], err
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "moved.txt"), "--no-progress"]) == 0


def test_a_run_without_a_validation_split_points_to_the_train_split(tmp_path, capsys, monkeypatch):
    """eval's default is the run's val split: a run trained with data.val_fraction 0 has none, and the line said only
    "the val split has 0 tokens; a window needs 33"."""
    run = tiny_run(tmp_path, max_steps=1, save_interval=1, eval_interval=0, warmup_steps=0)
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, val_fraction=0.0))
    fit(run, tmp_path / "run", progress=False)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    for stride in ([], ["--stride", "8"]):
        assert main(["eval", str(tmp_path / "run"), "--no-progress", *stride]) == 2
        assert "val_fraction is 0.0: try --split train" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "run"), "--split", "train", "--max-batches", "1", "--no-progress"]) == 0


def test_a_checkpoint_folder_scores_its_step_as_training_logged_it(tmp_path, capsys, monkeypatch):
    """`eval RUN/checkpoints/step-N` scores that step's weights on the run's own val split: with training's batches
    (batch_size x eval_batches windows) it prints the val loss step N logged; --stride scores the same split."""
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, eval_batches=2, warmup_steps=0)
    fit(run, tmp_path / "run", progress=False)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    logged = {r["step"]: r["val_loss"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").open())
              if "val_loss" in r}
    assert len(logged) == 2 and logged[2] != logged[4]
    for step, loss in logged.items():
        folder = tmp_path / f"run/checkpoints/step-{step}"
        assert main(["eval", str(folder), "--batch-size", "4", "--max-batches", "2", "--no-progress"]) == 0
        assert f"split: val  tokens scored: 256  loss: {loss:.4f}" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "run/checkpoints/step-2"), "--stride", "16", "--no-progress"]) == 0
    val_tokens = json.loads(next((tmp_path / "cache/tokens").glob("*/meta.json")).read_text())["val_tokens"]
    assert f"split: val  stride: 16  window: 32  tokens scored: {val_tokens - 1:,}" in capsys.readouterr().out
