"""`neurallayers generate`'s flags become the GenerationConfig they name, and a search says which sampling flags it
does not use."""

from __future__ import annotations

import argparse

import pytest

from neurallayers.cli.generate import add_arguments, generation_config


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["run", "hi", *argv])


@pytest.mark.parametrize(
    ("argv", "note"),
    [
        (["--num-beams", "2", "--top-p", "0.5"], "deterministic: --top-p is not used"),
        (["--num-beams", "2", "--top-k", "5", "--temperature", "0.7"], "deterministic: --temperature and --top-k are"),
        (["--num-beams", "2", "--min-p", "0.1", "--top-k", "5", "--top-p", "0.5"], "--top-k, --top-p and --min-p are"),
        (["--penalty-alpha", "0.5", "--top-k", "4", "--min-p", "0.2"], "deterministic: --min-p is not used"),
        (["--penalty-alpha", "0.5", "--top-k", "4"], None),  # contrastive search's top-k is its candidate count
        (["--num-beams", "2", "--top-p", "1", "--temperature", "0"], None),  # off values are no request
        (["--top-p", "0.5"], None),
        (["--amateur", "a", "--top-p", "0.5", "--top-k", "3"], "own score: --top-k and --top-p are not used"),
        (["--amateur", "a", "--temperature", "0.7"], None),  # contrastive decoding's temperature scales its score
    ],
)
def test_a_search_names_every_sampling_flag_it_does_not_use(argv: list[str], note: str | None, capsys) -> None:
    """--num-beams 2 --top-p 0.5 ignored the top-p without a word: the note named only --temperature."""
    config = generation_config(_parse(*argv))
    err = capsys.readouterr().err
    if note is None:
        assert err == ""
    else:
        assert note in err and err.count("\n") == 1
    top_p = argv[argv.index("--top-p") + 1] if "--top-p" in argv else "1"
    assert config.top_p == float(top_p)  # kept as given: generate() leaves it out for a search


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--num-speculative-tokens", "3"], "--num-speculative-tokens tunes --draft, which is not given"),
        (["--contrastive-alpha", "0.5", "--draft", "d"], "--contrastive-alpha tunes --amateur, which is not given"),
        (["--draft", "d", "--amateur", "a"], "--draft and --amateur each choose a decoding method: give one of them"),
        (["--num-beams", "2", "--draft", "d"], "--num-beams and --draft each choose a decoding method"),
    ],
)
def test_a_flag_of_a_decoding_method_not_chosen_is_refused(argv: list[str], error: str, tmp_path, capsys) -> None:
    """--num-speculative-tokens without --draft (or --contrastive-alpha without --amateur) did nothing, silently; two
    methods were refused naming generate()'s arguments ("amateur_model and draft_model"), not the flags."""
    from neurallayers.__main__ import main

    assert main(["generate", str(tmp_path / "nosuch"), "hi", *argv]) == 2
    err = capsys.readouterr().err
    assert error in err and err.count("\n") == 1


def test_an_amateur_with_a_shorter_context_is_named_when_it_ends_the_output(tmp_path, capsys) -> None:
    """Contrastive decoding stops where the amateur's context is full: the note named the model's context instead."""
    import torch

    from neurallayers.__main__ import main
    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models.decoder import DecoderLM
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    tok = Tokenizer.train_char(["the quick brown fox jumps over the lazy dog"])
    for name, block in (("model", 64), ("amateur", 16)):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block, n_layer=1, n_head=2, n_embd=16)
        (tmp_path / name).mkdir()
        RunConfig(model=cfg).to_yaml(tmp_path / name / "config.yaml")
        tok.save(tmp_path / name)
        save_model(tmp_path / name, DecoderLM(cfg).state_dict())
    args = [
        "generate",
        str(tmp_path / "model"),
        "the fox",
        "--amateur",
        str(tmp_path / "amateur"),
        "--ignore-eos",
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err  # 7 + 10 tokens fill the amateur's 16 positions (the last is not fed)
    assert "stopped at the amateur's context length (16 tokens, prompt included) after 10 of 20 new tokens" in err


@pytest.mark.parametrize("flag", ["--draft", "--amateur"])
def test_an_encoder_as_draft_or_amateur_is_named_by_its_flag(tmp_path, capsys, flag) -> None:
    """An encoder run given to --draft was refused naming generate()'s `draft_model` argument, not the flag."""
    import torch

    from neurallayers.__main__ import main
    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models import build_model
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    tok = Tokenizer.train_char(["the quick brown fox jumps over the lazy dog"])
    for name, causal in (("model", True), ("encoder", False)):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, causal=causal)
        (tmp_path / name).mkdir()
        RunConfig(model=cfg).to_yaml(tmp_path / name / "config.yaml")
        tok.save(tmp_path / name)
        save_model(tmp_path / name, build_model(cfg).state_dict())
    assert main(["generate", str(tmp_path / "model"), "the fox", flag, str(tmp_path / "encoder")]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {tmp_path / 'encoder'} is an encoder" in err and err.count("\n") == 1
