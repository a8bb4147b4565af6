"""convert --overwrite never deletes a run's training checkpoints: not through their checkpoints/ folder, nor through
a folder of runs."""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop import convert  # noqa: E402


@pytest.mark.parametrize(("dst", "needle"), [
    ("run/checkpoints/step-2", "is a training checkpoint"), ("run/checkpoints", "holds training checkpoints or runs"),
    ("run/checkpoints/step-2/..", "holds training checkpoints or runs"), (".", "holds training checkpoints or runs")])
def test_overwrite_refuses_a_folder_holding_checkpoints_or_runs(tmp_path, dst, needle):
    """`convert run run/checkpoints/step-2 --overwrite` replaced the checkpoint (weights and training state) by an HF
    folder, `convert run run/checkpoints --overwrite` every checkpoint of the run, `convert hf runs --overwrite` every
    run in runs/."""
    torch.manual_seed(0)
    src, runs = tmp_path / "hf", tmp_path / "runs"
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(src)
    tok = Tokenizer.train_char(["some text for a char tokenizer"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token=tok.eos_token).save_pretrained(src)
    run = convert(src, runs / "run")
    step = run / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(b"training state")
    with pytest.raises(ValueError, match=needle):
        convert(src, runs / dst, to="hf", overwrite=True)
    assert os.listdir(run / "checkpoints") == ["step-2"] and os.listdir(step) == ["state.pt"]
