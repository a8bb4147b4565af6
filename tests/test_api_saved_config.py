"""nl.load reads what a model needs from a run: its model section and tokenizer. A train value a later version
refuses (an empty sample prompt, refused since runs were saved with one) only warns: the weights are fine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import neurallayers as nl
from neurallayers.api import folder_model_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny character-level run, trained two steps."""
    root = tmp_path_factory.mktemp("saved")
    (root / "text.txt").write_text("To be, or not to be, that is the question:\n" * 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEURALLAYERS_CACHE", str(root / "cache"))
        nl.train({"model": {"preset": "tiny", "block_size": 16, "n_layer": 1},
                  "train": {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_batches": 1,
                            "warmup_steps": 0, "sample_tokens": 0},
                  "data": {"source": str(root / "text.txt"), "tokenizer": "char"}}, root / "run", progress=False)
    return root / "run"


def with_empty_prompt(run: Path, to: Path) -> Path:
    """A copy of `run` whose config.yaml holds the sample prompt '' that an older version saved."""
    shutil.copytree(run, to)
    text = (to / "config.yaml").read_text()
    start = text.index("  sample_prompts:\n")
    end = text.index("  sample_tokens:")
    (to / "config.yaml").write_text(text[:start] + "  sample_prompts:\n  - ''\n" + text[end:])
    return to


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4]])).logits


def test_a_run_with_a_value_refused_since_loads_as_the_same_model(trained, tmp_path):
    old = with_empty_prompt(trained, tmp_path / "old")
    with pytest.warns(UserWarning, match=r"config.yaml: train.sample_prompts\[0\]=''"):
        model, tokenizer = nl.load(old)
    oracle, oracle_tokenizer = nl.load(trained)  # the run as saved before the edit
    assert tokenizer.encode("To be") == oracle_tokenizer.encode("To be")
    assert torch.equal(logits(model), logits(oracle))
    step = sorted((old / "checkpoints").iterdir())[-1]
    assert torch.equal(logits(nl.load(step)[0]), logits(nl.load(trained / "checkpoints" / step.name)[0]))
    assert folder_model_config(old) == oracle.config  # what info and --init-from read


def test_generation_is_the_unedited_runs(trained, tmp_path):
    old = with_empty_prompt(trained, tmp_path / "old")
    with pytest.warns(UserWarning):
        model, tokenizer = nl.load(old)
    expected = nl.generate(*nl.load(trained), "To", max_new_tokens=8, temperature=0)[0].text
    assert nl.generate(model, tokenizer, "To", max_new_tokens=8, temperature=0)[0].text == expected
