"""The launched playground's Chat tab through gradio_client: /chat streams the conversation with the system prompt,
its value goes back in for the next turn, bad input gets a clear message; the template control lists the tokenizer's
templates."""

from __future__ import annotations

import copy

import pytest

from neurallayers.ui.chat import chat_history, stream_chat
from neurallayers.ui.logic import sampling_config

# message, history, system prompt, template, max new tokens, temperature, top-k, top-p, min-p, repetition penalty,
# seed, stop strings
GREEDY = ("the fox", [], "be lazy", "", 12, 0.0, 0, 1.0, 0.0, 1.0, -1, "")
CONFIG = sampling_config(max_new_tokens=12, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                         seed=-1, stop="")


@pytest.fixture(scope="module")
def client(playground):
    from gradio_client import Client

    return Client(playground, verbose=False)


def test_chat_streams_the_conversation_and_takes_it_back(client, tiny):
    model, tok = tiny
    job = client.submit(*GREEDY, api_name="/chat")
    turns, status = job.result(timeout=60)
    *_, (want, _) = stream_chat(model, tok, [], "the fox", CONFIG, system="be lazy")
    assert chat_history(turns) == chat_history(want) and status.startswith("12 tokens in")
    updates = [chat_history(t) for t, _ in job.outputs()]
    assert updates[0] == [{"role": "user", "content": "the fox"}] and len(updates) > 3
    # the next turn: the value sent back is the one shown, indentation, blank lines and markup too (the API's text
    # is not escaped as the page's is)
    turns[-1]["content"][0]["text"] = "  <b>jumps</b> &\n\n    over"
    again, _ = client.predict("the dog", turns, "be lazy", *GREEDY[3:], api_name="/chat")
    *_, (want, _) = stream_chat(model, tok, chat_history(turns), "the dog", CONFIG, system="be lazy")
    assert chat_history(again) == chat_history(want)
    assert chat_history(again)[1]["content"] == "  <b>jumps</b> &\n\n    over"
    # every input after the message has a default
    assert chat_history(client.predict("the dog", api_name="/chat")[0])[0] == {"role": "user", "content": "the dog"}


@pytest.mark.parametrize(("change", "message"), [
    ({0: ""}, "The message is empty: type a message first"),
    ({1: [{"role": "system", "content": [{"type": "text", "text": "x"}]}]}, "The chat history's message 0 must be"),
    ({3: "rag"}, "Chat template must be one of the tokenizer's templates \\(none: leave it empty\\), got 'rag'"),
    ({2: "the fox " * 12}, "The conversation has 129 tokens and the model's context length is 96"),
    ({5: "hot"}, "Temperature must be a number, got 'hot'"),
])
def test_bad_input_is_named_without_a_server_traceback(client, capfd, change, message):
    from gradio_client.exceptions import AppError

    capfd.readouterr()
    with pytest.raises(AppError, match=message):
        client.predict(*[change.get(i, v) for i, v in enumerate(GREEDY)], api_name="/chat")
    assert "Traceback" not in capfd.readouterr().err
    assert client.predict(*GREEDY, api_name="/chat")[1].startswith("12 tokens in")  # and the app keeps working


def test_a_history_of_another_shape_is_refused_by_gradio(client):
    """Gradio checks the Chatbot value's shape before the app sees it (and logs its traceback): a content given as a
    plain string is refused there; the browser always sends text parts."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="validation error for ChatbotDataMessages"):
        client.predict("the dog", [{"role": "user", "content": "the fox"}], api_name="/chat")
    assert client.predict(*GREEDY, api_name="/chat")[1].startswith("12 tokens in")


def components(app, kind) -> dict:
    return {b.label: b for b in app.blocks.values() if isinstance(b, kind)}


def test_the_tab_has_a_system_prompt_a_clear_button_and_the_templates_to_choose(tiny):
    gr = pytest.importorskip("gradio", reason="the web playground needs the ui extra (gradio)")
    from neurallayers.ui import build_app

    model, tok = tiny
    app = build_app(model, tok)
    assert "System prompt" in components(app, gr.Textbox) and "Conversation" in components(app, gr.Chatbot)
    assert {b.value for b in app.blocks.values() if isinstance(b, gr.Button)} >= {"Send", "Stop", "Clear"}
    assert not components(app, gr.Dropdown)["Chat template"].visible  # nothing to choose
    named = copy.copy(tok)
    named.chat_template, named.named_chat_templates = "{{ messages[0].content }}", {"rag": "x{{ messages }}"}
    picker = components(build_app(model, named), gr.Dropdown)["Chat template"]
    assert picker.visible and picker.value == "default" and [c[1] for c in picker.choices] == ["default", "rag"]
