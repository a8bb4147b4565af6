"""A JSONL line's bad setting is named as the line wrote it ("line 2: temperature=-1: ..."), not by GenerationConfig's
field; the run's own setting, in the CLI, by its flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from neurallayers.batch import LINE_PARAMS, run_batch
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig
from neurallayers.models.decoder import DecoderLM
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

TEXT = "the quick brown fox jumps over the lazy dog.\n"

# a bad value of every field a line may set, and what GenerationConfig says of it
BAD_VALUES = {
    "max_new_tokens": (0, "must be >= 1"),
    "min_new_tokens": (-1, "must be in [0, GenerationConfig.max_new_tokens=12]"),
    "temperature": (-1, "must be >= 0 (0 means greedy)"),
    "top_k": (-2, "must be >= 0 (0 disables it)"),  # -1 is the server's (and vLLM's) "every token"
    "top_p": (2, "must be in (0, 1]"),
    "min_p": ("high", "must be a finite number"),
    "repetition_penalty": (0, "must be > 0 (1 disables it)"),
    "presence_penalty": (3, "must be in [-2, 2]"),
    "frequency_penalty": (-2.5, "must be in [-2, 2]"),
    "no_repeat_ngram_size": (1.5, "must be an integer"),
    "stop": ([""], "must be a list of non-empty strings"),
    "seed": ("x", "must be None or an integer in [-2**63, 2**64)"),
    "ignore_eos": ("yes", "must be True or False"),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with a random char-level GPT."""
    out = tmp_path_factory.mktemp("run")
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    RunConfig(model=cfg).to_yaml(out / "config.yaml")
    tok.save(out)
    save_model(out, DecoderLM(cfg).state_dict())
    return out


def lines(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps({"prompt": "the", **r}) + "\n" for r in records))
    return path


def test_every_line_field_is_named_as_the_line_writes_it(run_dir, tmp_path):
    assert set(BAD_VALUES) == set(LINE_PARAMS)  # a field lines may set gets a case here
    from neurallayers.api import load

    model, tok = load(run_dir)
    config = GenerationConfig(temperature=0, max_new_tokens=12)
    for field, (value, what) in BAD_VALUES.items():
        inp = lines(tmp_path / "in.jsonl", {}, {field: value})
        with pytest.raises(ValueError) as caught:
            run_batch(model, tok, inp, tmp_path / "out.jsonl", config=config, progress=False)
        assert str(caught.value) == f"{inp} line 2: {field}={value!r}: {what}"
        assert not (tmp_path / "out.jsonl").exists()


def test_a_bound_names_who_set_it(run_dir, tmp_path):
    """min_new_tokens over max_new_tokens: the line's field by its key, the run's config by GenerationConfig's."""
    from neurallayers.api import load

    model, tok = load(run_dir)
    inp = lines(tmp_path / "in.jsonl", {"max_new_tokens": 4})
    with pytest.raises(ValueError, match=re.escape(f"{inp} line 1: GenerationConfig.min_new_tokens=6: must be in "
                                                   "[0, max_new_tokens=4]")):
        run_batch(model, tok, inp, tmp_path / "o.jsonl", config=GenerationConfig(min_new_tokens=6), progress=False)
    inp = lines(tmp_path / "in.jsonl", {"min_new_tokens": 6, "max_new_tokens": 4})
    said = f"{inp} line 1: min_new_tokens=6: must be in [0, max_new_tokens=4]"
    with pytest.raises(ValueError, match=re.escape(said)):
        run_batch(model, tok, inp, tmp_path / "o.jsonl", progress=False)


@pytest.mark.parametrize(("record", "flags", "said"), [
    ({"temperature": -1}, [], "in.jsonl line 3: temperature=-1: must be >= 0 (0 means greedy)"),
    ({"stop": 5}, [], "in.jsonl line 3: stop=5: must be a list of non-empty strings"),
    ({"min_new_tokens": 300}, [], "in.jsonl line 3: min_new_tokens=300: must be in [0, --max-new-tokens 200]"),
    ({"max_new_tokens": 2}, ["--min-new-tokens", "5"],
     "in.jsonl line 3: --min-new-tokens 5: must be in [0, max_new_tokens=2]"),
])
def test_the_cli_names_the_lines_field_and_the_runs_flag(run_dir, tmp_path, monkeypatch, capsys, record, flags, said):
    from neurallayers.__main__ import main

    monkeypatch.chdir(tmp_path)
    lines(tmp_path / "in.jsonl", {}, {"id": "b"}, record, {})
    assert main(["batch", str(run_dir), "--input", "in.jsonl", "--output", "out.jsonl", *flags]) == 2
    assert capsys.readouterr().err == f"neurallayers batch: error: {said}\n"
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("text", "said"), [
    ('{"prompt": "the"}\n{"prompt": "a", "temprature": 1}\n', "in.jsonl line 2"),
    ('{"prompt": "the"}\nnot json\n', "in.jsonl line 2"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n{"custom_id": "a"}\n',
     "in.jsonl line 2"),
])
def test_a_bad_line_is_named_before_the_model_loads(run_dir, tmp_path, monkeypatch, capsys, text, said):
    """A large model's load took its minute, then line 2 was refused."""
    from neurallayers.__main__ import main

    def loaded(*_, **__):
        raise AssertionError("the model loaded before the lines were read")

    monkeypatch.setattr("neurallayers.cli.batch.load_model", loaded)
    monkeypatch.setattr("neurallayers.serve.app.create_app", loaded)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(text)
    assert main(["batch", str(run_dir), "--input", "in.jsonl", "--output", "out.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"neurallayers batch: error: {said}") and err.count("\n") == 1, err
