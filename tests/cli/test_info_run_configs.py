"""`neurallayers info` on a run config: the model `train` builds from it, whose vocabulary the tokenizer sets."""

from pathlib import Path

import pytest

from neurallayers.__main__ import main


@pytest.mark.parametrize(("data", "vocab", "params"), [
    ("tokenizer: gpt2", "vocab 50,257", "3,324,736"),  # train: "model.vocab_size set to 50257 from the tokenizer"
    ("vocab_size: 2048", "vocab 2,048", ""),
])
def test_info_on_a_run_config_describes_the_vocabulary_train_gives_the_model(tmp_path: Path, capsys, data, vocab,
                                                                               params):
    """`info my.yaml` (preset tiny, gpt2 tokenizer) described the preset's 512-token model, 0.14 M parameters: train
    builds it with the tokenizer's 50,257, 3.32 M."""
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  preset: tiny\ndata:\n  {data}\n")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert vocab in out and params in out


def test_info_on_a_saved_runs_config_keeps_its_model(tmp_path: Path, capsys):
    """A saved run's config.yaml holds the vocabulary the run trained with (a BPE may hold fewer tokens than its
    data.vocab_size asked for, on a small corpus)."""
    import yaml

    from neurallayers import ModelConfig

    model = ModelConfig.from_name("tiny").replace(vocab_size=300)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": model.to_dict(), "data": {"tokenizer": "bpe", "vocab_size": 1024}}))
    assert main(["info", str(path)]) == 0
    assert "vocab 300," in capsys.readouterr().out


def test_info_on_an_encoder_run_config_describes_the_masked_lm_train_builds(tmp_path: Path, capsys):
    """train gives an encoder its masked-LM head (prepare_data: head "none" becomes "mlm", which has no pooler): info
    described the bare encoder with a pooler, and without the head's FLOPs (1.31 of 1.87 MFLOP here)."""
    import torch

    from neurallayers import ModelConfig
    from neurallayers.cli.info import _flops
    from neurallayers.models import build_model

    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: bert-tiny\ndata:\n  tokenizer: bpe\n  vocab_size: 2048\n")
    trained = ModelConfig.from_name("bert-tiny").replace(vocab_size=2048, head="mlm")
    with torch.device("meta"):
        model = build_model(trained)
    n = sum(p.numel() for p in model.parameters())  # the head's projection is the word embedding: counted once
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"parameters       {n:,} (" in out and n == 743_552
    assert f"forward {_flops(trained.flops_per_token())}, " in out


def test_info_counts_a_masked_lms_training_head_at_its_mask_prob(tmp_path: Path, capsys):
    """Training runs the masked-LM head only at the masked positions (logits_at_labels): info counted it at every
    one, 4.8x MiniLM's training FLOPs. A run config's train.mask_prob is the share it counts."""
    from neurallayers import ModelConfig
    from neurallayers.cli.info import _flops

    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: bert-tiny\ndata:\n  tokenizer: bpe\n  vocab_size: 2048\n"
                    "train:\n  mask_prob: 0.3\n")
    trained = ModelConfig.from_name("bert-tiny").replace(vocab_size=2048, head="mlm")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    body = trained.replace(head="none").flops_per_token()
    head = trained.flops_per_token() - body
    expected = 3 * (body + 0.3 * head)
    assert f"training {_flops(expected)} (context 512; the masked-LM head at 30% of the tokens)" in out
    assert _flops(expected) != _flops(3 * trained.flops_per_token())
