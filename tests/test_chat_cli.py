"""`neurallayers chat` keeps the conversation: a refused message loses no earlier turn, and a --max-new-tokens as
long as the context does not drop every earlier turn."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models.decoder import DecoderLM
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!\nuser: assistant:\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A random char-level GPT with a 128-token context."""
    out = tmp_path_factory.mktemp("run")
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)
    RunConfig(model=cfg).to_yaml(out / "config.yaml")
    tok.save(out)
    save_model(out, DecoderLM(cfg).state_dict())
    return out


def chat_prompts(run_dir: Path, monkeypatch, lines: list[str], *args: str) -> list[str]:
    """The prompt text of every reply of a chat fed `lines` (each reply is "ok")."""
    from neurallayers.__main__ import main
    from neurallayers.cli import chat

    prompts: list[str] = []
    monkeypatch.setattr(chat, "reply", lambda model, tok, prompt, config: prompts.append(tok.decode(prompt)) or "ok")
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", str(run_dir), "--temperature", "0", *args]) == 0
    return prompts


def test_a_message_too_long_for_the_context_loses_no_earlier_turn(run_dir, monkeypatch, capsys):
    """The over-long message used to drop every earlier turn while the chat made room for it, then was refused:
    the next message started a conversation without the earlier ones."""
    prompts = chat_prompts(run_dir, monkeypatch, ["the fox", "x" * 130, "the dog"], "--max-new-tokens", "4")
    assert prompts == ["user: the fox\nassistant:", "user: the fox\nassistant: ok\nuser: the dog\nassistant:"]
    err = capsys.readouterr().err
    assert "too long for the model's context of 128 tokens" in err and "left the model's context" not in err


def test_a_max_new_tokens_as_long_as_the_context_keeps_earlier_turns(run_dir, monkeypatch, capsys):
    """With --max-new-tokens 200 (the default) and a 128-token context, every earlier turn was dropped to leave room
    for 200 new tokens: a chat without memory, saying the turns had left the context."""
    prompts = chat_prompts(run_dir, monkeypatch, ["the fox", "the dog"], "--max-new-tokens", "200")
    assert prompts[1] == "user: the fox\nassistant: ok\nuser: the dog\nassistant:"
    assert "left the model's context" not in capsys.readouterr().err
    # a conversation that outgrows the context still drops its oldest turns, half the context left for the reply
    prompts = chat_prompts(run_dir, monkeypatch, ["the quick", "over the lazy", "dog"])
    assert prompts[2] == "user: over the lazy\nassistant: ok\nuser: dog\nassistant:"
    assert "(the oldest 1 turn left the model's context of 128 tokens)" in capsys.readouterr().err


def test_a_system_message_that_fills_the_context_is_named_once(run_dir, monkeypatch):
    """Every message was refused as "too long" while the system message alone filled the context."""
    from neurallayers.__main__ import main

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(run_dir), "--system", "the fox " * 20]) == 2
    prompts = chat_prompts(run_dir, monkeypatch, ["hi"], "--system", "the fox")
    assert prompts == ["system: the fox\nuser: hi\nassistant:"]


def test_a_reply_left_no_token_to_choose_loses_no_turn(run_dir, monkeypatch, capsys):
    """--no-repeat-ngram-size on a small vocabulary can leave a reply no token at all, which generation now names in
    a ValueError: that ended the chat (exit 2) and lost the conversation. The turn is refused and the chat goes on."""
    from neurallayers.__main__ import main
    from neurallayers.cli import chat

    prompts: list[str] = []
    real = chat.reply
    monkeypatch.setattr(
        chat,
        "reply",
        lambda model, tok, prompt, config: prompts.append(tok.decode(prompt)) or real(model, tok, prompt, config),
    )
    every = "".join(sorted(set(TEXT) - {"\n"})) + "Z"  # every character, and one outside the vocabulary (<unk>)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"hi\n{every}\nthe dog\n"))
    args = ["--temperature", "0", "--no-repeat-ngram-size", "1", "--min-new-tokens", "3", "--max-new-tokens", "4"]
    assert main(["chat", str(run_dir), *args]) == 0
    assert len(prompts) == 3 and prompts[2].startswith("user: hi\nassistant:")
    assert prompts[2].endswith("\nuser: the dog\nassistant:") and every not in prompts[2]
    assert "no_repeat_ngram_size=1 bans every token" in capsys.readouterr().err
