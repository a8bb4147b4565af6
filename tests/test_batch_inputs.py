"""Batch outputs named in capitals and embedding settings checked before any file is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurallayers.batch import run_batch
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import embed
from neurallayers.models import build_model

SENTENCES = ["A man is eating food.", "Rain.", "Cats sleep a lot."]


@pytest.fixture(scope="module")
def encoder():
    tok = Tokenizer.train_char(SENTENCES)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("bert-mini").replace(
        vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16
    )
    return build_model(cfg).eval(), tok


def write_texts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    return path


@pytest.mark.parametrize("name", ["VECTORS.NPY", "vectors.Npz"])
def test_a_vector_output_named_in_capitals_is_that_format(encoder, tmp_path, name):
    """Output "results.JSONL" ran but "vectors.NPY" was refused with a message naming .npy as allowed."""
    model, tok = encoder
    out = tmp_path / name
    run_batch(model, tok, write_texts(tmp_path / "in.jsonl"), out, batch_size=2, progress=False)
    want = embed(model, tok, SENTENCES).numpy()
    if name.lower().endswith(".npy"):
        np.testing.assert_allclose(np.load(out), want, atol=1e-6)
    else:
        with np.load(out) as z:
            assert z["ids"].tolist() == [1, 2, 3]
            np.testing.assert_allclose(z["embeddings"], want, atol=1e-6)


def test_a_max_length_that_is_not_a_whole_number_is_refused_before_any_file(encoder, tmp_path):
    """max_length=2.5 passed the range check, wrote the progress record and part folder, then failed in embed()."""
    model, tok = encoder
    inp = write_texts(tmp_path / "in.jsonl")
    for bad in (2.5, True):
        with pytest.raises(ValueError, match=rf"^max_length={bad!r}: must be in \[2, 64\]"):
            run_batch(model, tok, inp, tmp_path / "out" / "v.npy", max_length=bad, progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_plain_text_prompt_file_is_told_what_a_line_is(encoder, tmp_path):
    """A file of plain prompts got only "line 1: not valid JSON (Expecting value at column 1)"."""
    model, tok = encoder
    inp = tmp_path / "prompts.txt"
    inp.write_text("Rain.\nCats sleep a lot.\n")
    with pytest.raises(
        ValueError,
        match=r"prompts.txt line 1: not valid JSON .*each line is a JSON object such as "
        r'\{"prompt": "..."\}$',
    ):
        run_batch(model, tok, inp, tmp_path / "v.jsonl", progress=False)


def test_a_model_given_without_its_files_is_fingerprinted_by_its_weights(tmp_path):
    """run_batch from Python (no model_files): a model trained further in the same session resumed into the output
    of its earlier weights, one file holding two models' results."""
    from neurallayers.generation import GenerationConfig
    from neurallayers.models.decoder import DecoderLM

    tok = Tokenizer.train_char(SENTENCES)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": s}) + "\n" for s in SENTENCES))
    out, greedy = tmp_path / "out.jsonl", GenerationConfig(temperature=0, max_new_tokens=4)
    progress = out.with_name(out.name + ".progress.json")
    run_batch(model, tok, inp, out, config=greedy, progress=False)
    record = json.loads(progress.read_text())
    record.update(complete=False)  # as if stopped before its end
    progress.write_text(json.dumps(record))
    assert run_batch(model, tok, inp, out, config=greedy, progress=False).resumed == 3  # the same weights go on
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    with pytest.raises(ValueError, match="changed since that run started: the model's weights"):
        run_batch(model, tok, inp, out, config=greedy, progress=False)


def test_an_output_that_is_a_folder_is_named_so(encoder, tmp_path):
    """A folder named like the output was "not the output of an interrupted batch run; pass --overwrite", and
    --overwrite then failed with "Is a directory"."""
    model, tok = encoder
    folder = tmp_path / "out.jsonl"
    folder.mkdir()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"out.jsonl is a folder; name a file, e.g. .*out.jsonl/results.jsonl$"):
            run_batch(model, tok, write_texts(tmp_path / "in.jsonl"), folder, overwrite=overwrite, progress=False)
    assert folder.is_dir() and not any(folder.iterdir())
