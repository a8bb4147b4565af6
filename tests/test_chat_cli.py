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


def test_a_min_new_tokens_past_the_room_left_is_cut_as_generate_cuts_it(run_dir, monkeypatch, capsys):
    """--min-new-tokens 150 in a 128-token context: each reply's max_new_tokens was cut to the room the prompt left,
    its min_new_tokens was not, and every message was refused as "(GenerationConfig.min_new_tokens=150: must be in [0,
    max_new_tokens=104])". generate ends such an output where the context is full; so does each reply."""
    from neurallayers.__main__ import main
    from neurallayers.cli import chat

    seen = []
    monkeypatch.setattr(chat, "reply", lambda model, tok, prompt, config: seen.append((len(prompt), config)) or "ok")
    monkeypatch.setattr("sys.stdin", io.StringIO("the fox\nthe dog\n"))
    assert main(["chat", str(run_dir), "--temperature", "0", "--max-new-tokens", "200", "--min-new-tokens", "150"]) == 0
    assert "GenerationConfig" not in capsys.readouterr().err
    assert len(seen) == 2
    for length, config in seen:  # the whole room left, none of it free to end early
        assert config.min_new_tokens == config.max_new_tokens == 128 - length


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


NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def with_template(run_dir: Path, folder: Path, template: str) -> Path:
    """A copy of the run at `folder` whose tokenizer has the chat template `template`."""
    import shutil

    shutil.copytree(run_dir, folder)
    tok = Tokenizer.load(folder)
    tok.chat_template = template
    tok.save(folder)
    return folder


def test_a_system_message_the_template_refuses_is_named_once(run_dir, tmp_path, monkeypatch, capsys):
    """A template without a system role refused every message of a --system chat, one "(... refused ...)" line each,
    and the chat exited 0 having answered nothing."""
    from neurallayers.__main__ import main

    folder = with_template(run_dir, tmp_path / "run", NO_SYSTEM)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nthe dog\n"))
    assert main(["chat", str(folder), "--system", "be terse"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "neurallayers chat: error: --system: the model's chat template refused these messages: "
        "System role not supported; leave --system out for this model"
    )
    prompts = chat_prompts(folder, monkeypatch, ["hi"])  # without --system the template renders the chat
    assert prompts == ["user: hi\nassistant: "]


def _terminal_chat(run_dir: Path, keys: bytes, *args: str) -> str:
    """What a terminal shows of a chat that is typed `keys`, then Ctrl-D."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    leader, follower = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "neurallayers", "chat", str(run_dir), *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    shown = b""

    def read_until(text: bytes, seconds: float) -> None:
        nonlocal shown
        start, deadline = len(shown), time.monotonic() + seconds
        while text not in shown[start:] and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    shown += os.read(leader, 4096)
                except OSError:  # the chat ended
                    return

    try:
        read_until(b"> ", 120)
        os.write(leader, keys)
        read_until(b"\n> ", 60)  # the next prompt: the message was answered or refused
        os.write(leader, b"\x04")
        read_until(b"no such text: read until the chat ends", 60)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(leader)
    return shown.decode(errors="replace")


def test_a_terminal_line_is_edited_with_the_arrow_keys(run_dir):
    """Without readline, a left arrow typed to fix a word went into the message as the bytes of "^[[D": here 3 more
    tokens, which made a message that fits the 128-token context "too long". Then Ctrl-D leaves on a new line."""
    # "user: " + 110 characters + "\nassistant:" is 127 tokens; with the arrow's 3 bytes it would be 130
    shown = _terminal_chat(run_dir, b"a" * 109 + b"\x1b[Db\r", "--temperature", "0", "--max-new-tokens", "1")
    assert shown.count("> ") == 2 and "too long" not in shown and "^[[D" not in shown
    assert shown.endswith("> \r\n")  # Ctrl-D: the shell's prompt came after "> " on the same line


def test_a_mistyped_command_is_not_sent_to_the_model(run_dir, monkeypatch, capsys):
    """A mistyped "/rest" (for /reset) went to the model as the user's message and stayed in the conversation."""
    prompts = chat_prompts(run_dir, monkeypatch, ["the fox", "/rest", "/help", "/usr/bin"])
    assert len(prompts) == 2 and "rest" not in prompts[1] and "help" not in prompts[1]
    assert prompts[1].endswith("usrbin\nassistant:")  # a path is a message ("/" is <unk> to this vocabulary, skipped)
    err = capsys.readouterr().err
    assert "(unknown command /rest: /reset starts over, /exit leaves)" in err and "unknown command /help" in err


NO_EMPTY_TURN = (
    "{% for m in messages %}{% if m['role'] == 'user' and not m['content'] %}{{ raise_exception('empty message') }}"
    "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def test_a_long_system_message_is_named_once_under_a_template_that_refuses_an_empty_turn(
    run_dir, tmp_path, monkeypatch, capsys
):
    """Such a template skipped the length check of --system: one that fills the context made every message "too
    long", one refusal a message, and the chat exited 0 having answered nothing."""
    from neurallayers.__main__ import main

    folder = with_template(run_dir, tmp_path / "run", NO_EMPTY_TURN)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nthe dog\n"))
    assert main(["chat", str(folder), "--system", "the fox " * 20]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too long" not in err
    assert "--system: the system message with a user message 'Hello' takes " in err and "context of 128" in err
    prompts = chat_prompts(folder, monkeypatch, ["hi"], "--system", "the fox")  # a short one still opens the chat
    assert prompts == ["system: the fox\nuser: hi\nassistant: "]


def test_reset_starts_the_seeds_over(run_dir, monkeypatch):
    """With --seed, reply k samples with a seed made from the seed and k; /reset cleared the history but kept counting,
    so the same messages after /reset got other replies than at the start (--help: the same messages, the same
    replies)."""
    from neurallayers.__main__ import main
    from neurallayers.cli import chat

    replies, real = [], chat.reply
    monkeypatch.setattr(chat, "reply", lambda *args: replies.append(real(*args)) or replies[-1])
    lines = ["the fox", "the dog", "/reset", "the fox", "the dog"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", str(run_dir), "--seed", "7", "--temperature", "1", "--max-new-tokens", "12"]) == 0
    assert len(replies) == 4 and replies[:2] == replies[2:], replies
    assert replies[0] != replies[1]  # each turn still draws its own numbers


# written in the characters of the run's char-level vocabulary, so the prompts decode back to their text
NAMED = {"default": "{% for m in messages %}{{ m.role }}. {{ m.content }}\n{% endfor %}assistant.",
         "rag": "{% for m in messages %}{{ m.role }}!{{ m.content }}!{% endfor %}{% if add_generation_prompt %}answer:"
                "{% endif %}"}


@pytest.fixture(scope="module")
def named_run(run_dir, tmp_path_factory) -> Path:
    """The run with a default and a "rag" chat template (transformers' additional_chat_templates/ layout)."""
    import shutil

    folder = tmp_path_factory.mktemp("named") / "run"
    shutil.copytree(run_dir, folder)
    tok = Tokenizer.load(folder)
    tok.chat_template, tok.named_chat_templates = NAMED["default"], {"rag": NAMED["rag"]}
    tok.save(folder)
    return folder


@pytest.mark.parametrize("choice", [None, "default", "rag", "jinja", "file"])
def test_chat_template_picks_the_template_as_transformers(named_run, tmp_path, monkeypatch, choice):
    """--chat-template did not exist: only the default template could be used; transformers' apply_chat_template on
    the same tokenizer folder is the oracle (a name, a Jinja text, a .jinja file as vLLM's --chat-template takes)."""
    transformers = pytest.importorskip("transformers")
    inline = ("{% for m in messages %}{{ m.role }}: {{ m.content }}.{% endfor %}"
              "{% if add_generation_prompt %}go!{% endif %}")
    (tmp_path / "t.jinja").write_text(inline, encoding="utf-8")
    given = {"jinja": inline, "file": str(tmp_path / "t.jinja")}.get(choice, choice)
    args = ["--system", "be terse", "--max-new-tokens", "4"] + (["--chat-template", given] if given else [])
    prompts = chat_prompts(named_run, monkeypatch, ["the fox", "the dog"], *args)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(named_run / "tokenizer.json"))
    theirs.chat_template = NAMED
    template = inline if choice in ("jinja", "file") else choice
    chat = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "the fox"}]
    want = [theirs.apply_chat_template(chat, chat_template=template, add_generation_prompt=True, tokenize=False)]
    chat += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "the dog"}]
    want.append(theirs.apply_chat_template(chat, chat_template=template, add_generation_prompt=True, tokenize=False))
    assert prompts == want


def test_a_template_given_to_a_tokenizer_without_one_ends_no_reply_at_user_lines(run_dir, monkeypatch):
    """The plain `role: content` format stops a reply at the next "\\nuser:"; a template given by --chat-template
    writes its own turn ends, so that stop string must not cut its replies."""
    from neurallayers.cli import chat

    stops = []
    monkeypatch.setattr(chat, "reply", lambda model, tok, prompt, config: stops.append(config.stop) or "ok")
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    from neurallayers.__main__ import main

    assert main(["chat", str(run_dir), "--temperature", "0", "--chat-template", "{{ messages[0].content }}:"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(run_dir), "--temperature", "0"]) == 0
    assert stops == [[], ["\nuser:"]]


@pytest.mark.parametrize(("given", "message"), [
    ("rga", "--chat-template 'rga' is not a template name of this tokenizer (its templates: default, rag), a file or "
            "a Jinja template"),
    ("", "--chat-template '' is not a template name"),
    ("{% for m in messages %}{{ m.content }", "--chat-template does not parse as a Jinja template (line 1: "
                                             "unexpected '}')"),
])
def test_an_unknown_template_name_is_one_line_before_the_model_loads(named_run, monkeypatch, capsys, given, message):
    from neurallayers.__main__ import main
    from neurallayers.cli import chat

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before --chat-template was checked")

    monkeypatch.setattr(chat, "load_model", no_model)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(named_run), "--chat-template", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"neurallayers chat: error: {message}") and err.count("\n") == 1


def test_an_unknown_template_name_names_none_where_the_tokenizer_has_none(run_dir, monkeypatch, capsys):
    from neurallayers.__main__ import main

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(run_dir), "--chat-template", "rag"]) == 2
    assert "--chat-template 'rag' is not a template name of this tokenizer (it has no templates)" in (
        capsys.readouterr().err)


def test_help_names_the_chat_template_option(capsys):
    from neurallayers.__main__ import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--chat-template NAME|FILE|JINJA" in out and "tool_use, rag" in out
