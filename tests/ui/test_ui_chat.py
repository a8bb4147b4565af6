"""The Chat tab's logic without a server: the conversation (system prompt first) rendered with the chat template as
transformers renders it, replies equal to `neurallayers chat`'s, the Chatbot's value read back, Clear."""

from __future__ import annotations

import copy
import io

import pytest

from neurallayers.generation import GenerationConfig, generate
from neurallayers.generation.config import StreamEvent
from neurallayers.ui import chat as ui_chat
from neurallayers.ui.chat import ChatRecord, chat_history, for_page, shown, stream_chat
from neurallayers.ui.logic import sampling_config

CONTROLS = dict(max_new_tokens=12, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=-1,
                stop="")
# in the characters of the tiny model's vocabulary, so prompts decode back to their text
TEMPLATE = ("{% for m in messages %}{{ m.role }}. {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant.{% endif %}")
JUGS = "{% for m in messages %}{{ m.content }}!{% endfor %}jugs."


def replies(turns) -> list[str]:
    return [m["content"][0]["text"] for m in turns if m["role"] == "assistant"]


def prompts_of(monkeypatch, tok) -> list[str]:
    """Record the prompt text of every reply (each reply then ends at once)."""
    seen: list[str] = []

    def fake_stream(model, tokenizer, ids, config):
        seen.append(tokenizer.decode(ids))
        yield StreamEvent(text="", token_id=None, finish_reason="stop")

    monkeypatch.setattr(ui_chat, "stream", fake_stream)
    return seen


def test_a_reply_is_generate_on_the_rendered_conversation(tiny):
    """No template: `role: content` lines, the system prompt first, the reply cut at the next `user:` line."""
    model, tok = tiny
    history = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps"}]
    config = sampling_config(**CONTROLS)
    steps = list(stream_chat(model, tok, history, "the dog", config, system="be lazy"))
    assert steps[0] == (shown([*history, {"role": "user", "content": "the dog"}]), "generating... 0 tokens")
    prompt = "system: be lazy\nuser: the fox\nassistant: jumps\nuser: the dog\nassistant:"
    (want,) = generate(model, tok, [tok.encode(prompt)], config.replace(stop=["\nuser:"]))
    turns, status = steps[-1]
    assert turns[:-1] == steps[0][0] and replies(turns)[-1] == want.text.strip()
    assert status.startswith(f"{len(want.token_ids)} tokens in")
    texts = [replies(t)[-1] for t, _ in steps[1:-1]]
    assert len(texts) > 3 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))


@pytest.mark.parametrize("system", ["be lazy", "", "  ", None])
def test_the_system_prompt_is_rendered_by_the_template_as_transformers(tiny, monkeypatch, system):
    transformers = pytest.importorskip("transformers")
    model, tok = tiny
    tok = copy.copy(tok)  # the session's tokenizer keeps no template
    tok.chat_template = TEMPLATE
    seen = prompts_of(monkeypatch, tok)
    history = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps"}]
    list(stream_chat(model, tok, history, "the dog", sampling_config(**CONTROLS), system=system))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=TEMPLATE)
    opening = [{"role": "system", "content": system}] if system and system.strip() else []
    want = theirs.apply_chat_template([*opening, *history, {"role": "user", "content": "the dog"}], tokenize=False,
                                      add_generation_prompt=True)
    assert seen == [want]


def test_the_template_control_picks_a_named_template(tiny, monkeypatch):
    model, tok = tiny
    tok = copy.copy(tok)
    tok.chat_template, tok.named_chat_templates = TEMPLATE, {"jugs": JUGS}
    seen = prompts_of(monkeypatch, tok)
    for name in ("jugs", "default", None, ""):
        list(stream_chat(model, tok, [], "the dog", sampling_config(**CONTROLS), system="be", template=name))
    assert seen == ["be!the dog!jugs.", *["system. be\nuser. the dog\nassistant."] * 3]
    with pytest.raises(ValueError, match="Chat template must be one of the tokenizer's templates \\(default, jugs\\), "
                                         "got 'rag'"):
        next(stream_chat(model, tok, [], "the dog", sampling_config(**CONTROLS), template="rag"))


def test_replies_are_those_of_neurallayers_chat(tiny, tmp_path, monkeypatch):
    """The same messages, system prompt and seed give the terminal chat's replies, turn by turn (each turn samples
    with a seed made from the seed and its number)."""
    from neurallayers.__main__ import main
    from neurallayers.cli import chat as cli_chat
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    model, tok = tiny
    RunConfig(model=model.config).to_yaml(tmp_path / "config.yaml")
    tok.save(tmp_path)
    save_model(tmp_path, model.state_dict())
    cli_replies, real = [], cli_chat.reply
    monkeypatch.setattr(cli_chat, "reply", lambda *args: cli_replies.append(real(*args)) or cli_replies[-1])
    monkeypatch.setattr("sys.stdin", io.StringIO("the fox\nthe dog\n"))
    args = ["--system", "be", "--seed", "5", "--temperature", "1", "--max-new-tokens", "10"]
    assert main(["chat", str(tmp_path), *args]) == 0
    config = sampling_config(**{**CONTROLS, "temperature": 1.0, "seed": 5, "max_new_tokens": 10})
    *_, (turns, _) = stream_chat(model, tok, [], "the fox", config, system="be")
    *_, (turns, _) = stream_chat(model, tok, chat_history(turns), "the dog", config, system="be")
    assert replies(turns) == cli_replies and cli_replies[0] != cli_replies[1]


def test_a_conversation_past_the_context_drops_its_oldest_turns_as_neurallayers_chat(tiny, tmp_path, monkeypatch):
    """The third turn of a 96-token model was "The conversation has 100 tokens ...: press Clear", where the terminal
    chat leaves its oldest turns out of the prompt and goes on: the same messages now get the terminal's replies, and
    the status line says which turns the model no longer sees (the chat shows them all)."""
    from neurallayers.__main__ import main
    from neurallayers.cli import chat as cli_chat
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    model, tok = tiny
    RunConfig(model=model.config).to_yaml(tmp_path / "config.yaml")
    tok.save(tmp_path)
    save_model(tmp_path, model.state_dict())
    messages = ["the fox", "the dog", "pack my box", "five jugs"]
    cli_replies, real = [], cli_chat.reply
    monkeypatch.setattr(cli_chat, "reply", lambda *args: cli_replies.append(real(*args)) or cli_replies[-1])
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{m}\n" for m in messages)))
    args = ["--system", "be", "--seed", "5", "--temperature", "1", "--max-new-tokens", "20"]
    assert main(["chat", str(tmp_path), *args]) == 0
    config = sampling_config(**{**CONTROLS, "temperature": 1.0, "seed": 5, "max_new_tokens": 20})
    turns, statuses = [], []
    for message in messages:
        *_, (turns, status) = stream_chat(model, tok, chat_history(turns), message, config, system="be")
        statuses.append(status)
    assert replies(turns) == cli_replies and len(turns) == 8
    assert "left the model's context" not in statuses[0]
    assert statuses[-1].endswith("; the oldest 3 turns left the model's context of 96 tokens")
    with pytest.raises(ValueError, match="The conversation has 106 tokens and the model's context length is 96: "
                                         "shorten the message$"):  # Clear would not help: the message alone fills it
        next(stream_chat(model, tok, chat_history(turns), "the fox " * 11 + "a", config))

def test_the_chatbot_value_reads_back_as_it_was_shown():
    """Gradio hands a plain string through inspect.cleandoc: a reply's indentation and blank edge lines were lost, so
    the next turn's prompt held other text than the model wrote."""
    messages = [{"role": "user", "content": "  x\n\n   y\n"}, {"role": "assistant", "content": "\n  a\n    b  "}]
    assert chat_history(shown(messages)) == messages
    assert chat_history(messages) == messages and chat_history(None) == []  # an API caller's plain strings
    # the page's value holds no markup (the Chatbot put "<b>" into the page as HTML) and reads back exactly
    marked = [{"role": "user", "content": "<b>x</b> &amp; &lt;"}, {"role": "assistant", "content": "<i>a</i>&"}]
    ((page, status),) = for_page([(shown(marked), "12 tokens")])
    assert chat_history(page, page=True) == marked and status == "12 tokens"
    assert page[1]["content"][0]["text"] == "&lt;i&gt;a&lt;/i&gt;&amp;"


@pytest.mark.parametrize(("value", "message"), [
    ("hi", "The chat history must be a list of messages, got str"),
    ([{"role": "system", "content": "x"}], "The chat history's message 0 must be"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], "The chat history's message 1 must be"),
    ([{"role": "user", "content": [{"type": "file", "file": {}}]}], "message 0 must be"),
    (["hi"], "message 0 must be"),
])
def test_a_bad_history_is_named(value, message):
    with pytest.raises(ValueError, match=message):
        chat_history(value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"message": ""}, "The message is empty: type a message first"),
    ({"message": " \n"}, "The message is empty"),
    ({"message": 3}, "The message must be text, got int"),
    ({"system": 3}, "The system prompt must be text, got int"),
    ({"system": "the fox " * 12}, "The conversation has 124 tokens and the model's context length is 96: shorten "
                                  "the message or the system prompt"),
    ({"config": GenerationConfig(max_new_tokens=500)}, "Max new tokens must be at most 96"),
])
def test_bad_input_is_named(tiny, kwargs, message):
    model, tok = tiny
    call = {"message": "hi", "config": sampling_config(**CONTROLS), **kwargs}
    with pytest.raises(ValueError, match=message):
        next(stream_chat(model, tok, [], call.pop("message"), call.pop("config"), **call))


def test_a_template_that_refuses_the_system_prompt_says_so(tiny):
    model, tok = tiny
    tok = copy.copy(tok)
    tok.chat_template = "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}x"
    with pytest.raises(ValueError, match="the model's chat template refused these messages: no system role"):
        next(stream_chat(model, tok, [], "hi", sampling_config(**CONTROLS), system="be"))


def test_clear_during_a_reply_leaves_the_chat_empty(tiny):
    """Clear's reply raced the streaming reply: Gradio's cancel came late (or never), the stream went on and put the
    conversation back. Clear now stops the stream itself before its next update, whose last update is then the empty
    chat (Gradio's message that closes a stream repeats its last update: the conversation came back for a moment
    after the step saying Clear stopped it), and both steps after it give the empty chat, whichever order the
    stream's close and Clear come in."""
    model, tok = tiny
    config = sampling_config(**{**CONTROLS, "max_new_tokens": 30})
    stopped = "stopped (Clear pressed) after 3 tokens"
    for cancel_first in (None, True, False):  # Gradio's cancel: never, before Clear reaches the server, after
        record = ChatRecord()
        updates = record.follow(stream_chat(model, tok, [], "the fox", config))
        assert [next(updates) for _ in range(4)][-1][1] == "generating... 3 tokens"
        if cancel_first:
            updates.close()
        shown = record.clear()
        if cancel_first is None:  # the model is free, the stream's last update the empty chat
            assert list(updates) == [([], stopped)], "the stream went on after Clear"
        elif not cancel_first:
            updates.close()
        assert shown == ([], None)  # the status: left to the step after the stream, which says it stopped
        assert record.after_stop() == ([], stopped) and record.after_clear() == ([], None)
    record = ChatRecord()  # the reply's last update was on its way as Clear came: the chat stays empty all the same
    updates = record.follow(stream_chat(model, tok, [], "the fox", config))
    final = next(u for u in updates if "tokens in" in u[1])
    assert record.clear() == ([], None) and list(updates) == [([], final[1])]
    assert record.after_stop() == ([], final[1]) and record.after_clear() == ([], None)
    record = ChatRecord()  # Stop, without Clear: the conversation so far and a stopped status
    updates = record.follow(stream_chat(model, tok, [], "the fox", config))
    turns, status = [next(updates) for _ in range(4)][-1]
    updates.close()
    assert record.after_stop() == (turns, status.replace("generating...", "stopped (Stop pressed) after"))
    assert record.clear() == ([], "") and record.after_clear() == ([], "")  # Clear with no reply streaming
    updates = record.follow(stream_chat(model, tok, [], "the fox", config))  # the next conversation as usual
    first = next(updates)
    assert record.after_clear() is None  # Clear's late step leaves a turn started after it alone
    *_, last = [first, *updates]
    assert record.after_stop() is None and (record.text, record.status) == last


# Mistral's and Llama 2's templates refuse a conversation whose roles do not alternate
ALTERNATING = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ m.role }}. {{ m.content }}\n{% endfor %}assistant.")


@pytest.mark.parametrize("cut", ["stop", "cancel", "failure"])
def test_a_reply_cut_before_its_first_token_leaves_an_empty_reply(tiny, cut):
    """Stop (or Gradio's cancel, or a failure) before the reply's first token left the user's message without a
    reply: the next message made two user turns in a row, which Mistral's and Llama 2's templates refuse ("roles must
    alternate": no message went through until Clear), where `neurallayers chat` records the reply cut by Ctrl-C, ""."""
    from nl_ui_helpers import failing_copy

    model, tok = tiny
    tok = copy.copy(tok)
    tok.chat_template = ALTERNATING
    record = ChatRecord()
    history = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps"}]
    config = sampling_config(**{**CONTROLS, "max_new_tokens": 30})
    updates = record.follow(stream_chat(failing_copy(model, fail_at=1) if cut == "failure" else model, tok, history,
                                        "the dog", config))
    shown_turns = next(updates)[0]  # the user's message, the reply's first token still to come
    if cut == "stop":
        record.stop()
        (last,) = list(updates)
    elif cut == "cancel":
        updates.close()
        last = record.after_stop()
    else:
        with pytest.raises(RuntimeError):
            last = next(updates)
            next(updates)
    assert last[0] == [*shown_turns, *shown([{"role": "assistant", "content": ""}])]
    assert last[1].endswith("after 0 tokens") or "failed after 0 tokens" in last[1]
    *_, (turns, _) = stream_chat(model, tok, chat_history(last[0]), "the lazy dog", config)  # not refused
    assert [m["role"] for m in chat_history(turns)] == ["user", "assistant"] * 3

def test_the_steps_after_clear_wait_for_the_stream_and_the_next_turn_starts_anew(tiny):
    """The browser runs the step after a cancelled stream as soon as its /cancel returns (or fails), while the server
    may still be sending the stream's update of the moment: it came after the step's empty chat and put the old
    conversation back, and the next turn was sent with it. The steps after Clear now wait for the stream to end
    (it does at its next update), and a turn after Clear starts from no history whatever the page sent."""
    import copy
    import threading

    model, tok = tiny
    config = sampling_config(**{**CONTROLS, "max_new_tokens": 30})
    for step in ("after_stop", "after_clear"):
        record = copy.deepcopy(ChatRecord())  # as gr.State gives it to a session
        updates = record.follow(stream_chat(model, tok, [], "the fox", config))
        old = [next(updates) for _ in range(4)][-1][0]  # this update is on its way to the page
        record.clear()
        shown, ended = [], []
        waiting = threading.Thread(target=lambda: shown.append((getattr(record, step)(), bool(ended))))  # noqa: B023
        waiting.start()
        waiting.join(0.3)  # the step returned at once, before the stream's next update, which ends it
        last = next(updates)  # the stream's last update, the empty chat: the step waits until it has been sent
        waiting.join(0.3)
        assert not shown and last[0] == [], f"{step} returned while the stream's last update was on its way"
        ended.append(next(updates, "ended"))
        waiting.join()
        assert ended == ["ended"] and shown[0][1], f"{step} returned while the stream went on"
        assert shown[0][0][0] == []
        assert record.history(chat_history(old)) == []  # the chat the page may hold again
    updates = record.follow(stream_chat(model, tok, [], "the fox", config))
    turns = next(updates)[0]
    assert record.history(chat_history(turns)) == chat_history(turns)  # a later turn: the page's chat as it is
    updates.close()
    assert record.idle.is_set() and copy.deepcopy(record).idle is not record.idle


def test_an_encoder_does_not_chat():
    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models import build_model

    tok = Tokenizer.train_char(["some text"])
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2,
                                                     n_embd=16)
    with pytest.raises(ValueError, match="encoder model: it does not chat"):
        next(stream_chat(build_model(cfg).eval(), tok, [], "text", sampling_config(**CONTROLS)))
