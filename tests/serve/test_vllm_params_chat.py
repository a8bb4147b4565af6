"""vLLM's extra chat parameters and OpenAI-shaped messages through the real `openai` client against a real uvicorn
server on 127.0.0.1: `echo` as vLLM gives it, truncate_prompt_tokens on the rendered prompt, a message with
`content: null` rendered as transformers' apply_chat_template renders it (the key dropped), and the template options
this server does not have refused naming the field."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import write_run_dir

import neurallayers
from neurallayers.data.chat import render_chat

openai = pytest.importorskip("openai")

# tells a missing content from an empty one, as templates for tool calls do
TEMPLATE = ("{% for m in messages %}{{ m['role'] }},{% if m.content is defined %} {{ m['content'] }}{% else %} ok"
            "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant,{% endif %}")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("vllm-chat") / "tiny-char", chat_template=TEMPLATE)


def chat(client, messages=HI, **extra):
    return client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=6, temperature=0,
                                          extra_body=extra)


def streamed(client, messages, **extra) -> str:
    chunks = client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=6, temperature=0,
                                            stream=True, extra_body=extra)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_echo_starts_the_reply_with_the_last_assistant_message_as_vllm_does(client):
    history = [*HI, {"role": "assistant", "content": "the quick"}]
    plain = chat(client, history).choices[0].message.content
    assert chat(client, history, echo=True).choices[0].message.content == "the quick" + plain
    assert streamed(client, history, echo=True) == "the quick" + plain
    parts = [*HI, {"role": "assistant", "content": [{"type": "text", "text": "the"}, {"type": "text", "text": "ok"}]}]
    assert chat(client, parts, echo=True).choices[0].message.content == "the\nok" + chat(client, parts).choices[
        0].message.content
    # the last message is the user's, not the reply's role: nothing to echo
    assert chat(client, echo=True).choices[0].message.content == chat(client).choices[0].message.content


def test_a_null_content_is_rendered_as_transformers_renders_it(client, server, loaded):
    """An assistant turn as OpenAI's API returns it beside tool calls has content null: transformers drops the key
    (templates test whether it is defined); rendering it as "" gave the template an empty content instead."""
    transformers = pytest.importorskip("transformers")
    tok = loaded[1]
    messages = [*HI, {"role": "assistant", "content": None}, {"role": "user", "content": "yo"}]
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=TEMPLATE)
    want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "assistant, ok" in want
    ids = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()["tokens"]
    assert ids == tok.encode(want)
    got = chat(client, messages)
    assert got.usage.prompt_tokens == len(ids)
    assert got.choices[0].message.content == client.completions.create(
        model="tiny-char", prompt=want, max_tokens=6, temperature=0).choices[0].text


def test_truncate_prompt_tokens_cuts_the_rendered_prompt(client, loaded):
    model, tok = loaded
    rendered = tok.encode(render_chat(tok, HI))
    out = chat(client, truncate_prompt_tokens=4)
    assert out.usage.prompt_tokens == 4
    assert out.choices[0].message.content == neurallayers.generate(model, tok, [rendered[-4:]], max_new_tokens=6,
                                                                   temperature=0)[0].text


@pytest.mark.parametrize("name, default", [
    ("add_generation_prompt", True), ("continue_final_message", False), ("chat_template_kwargs", {})])
def test_template_options_at_their_default_change_nothing(client, name, default):
    """(Their other values: tests/serve/test_chat_template_options.py.)"""
    assert chat(client, **{name: default}).choices[0].message.content == chat(client).choices[0].message.content


@pytest.mark.parametrize("name, value", [  # a request's chat_template: tests/serve/test_serve_chat_template_choice.py
    ("guided_choice", ["yes", "no"]),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})])
def test_a_chat_field_that_would_change_the_output_unseen_is_refused(client, name, value):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, **{name: value})
    assert e.value.body["param"] == name and "not supported" in e.value.body["message"]


def test_openais_newer_chat_fields_are_taken_as_labels_or_refused_as_unsupported(client, server):
    """The `openai` client's own keyword arguments: safety_identifier and prompt_cache_key, OpenAI's replacements of
    `user`, label the caller and change no output, so they are taken as `user` is; the fields that ask for what this
    server does not do are refused as not supported (the newer ones were called misspellings), and taken at the value
    that asks for what it does (store false, text only, stream_options' include_obfuscation false)."""
    kw = dict(model="tiny-char", messages=HI, max_tokens=6, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    labelled = client.chat.completions.create(**kw, user="u", safety_identifier="u-hash", prompt_cache_key="k",
                                              store=False, modalities=["text"])  # what this server does anyway
    assert labelled.choices[0].message.content == plain
    for name, value in (("verbosity", "low"), ("moderation", {"input": {"mode": "score"}}), ("store", True),
                        ("modalities", ["text", "audio"]),
                        ("prompt_cache_retention", "24h"), ("prompt_cache_options", {"mode": "explicit"})):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kw, **{name: value})
        assert e.value.body["param"] == name and "not supported" in e.value.body["message"], e.value.body
    chunks = client.chat.completions.create(**kw, stream=True, stream_options={"include_obfuscation": False})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kw, stream=True, stream_options={"include_obfuscation": True})
    assert e.value.body["param"] == "stream_options.include_obfuscation", e.value.body
    assert "not supported" in e.value.body["message"]
    assert httpx.post(f"{server.url}/v1/chat/completions", json={"messages": HI, "max_tokens": 1}).status_code == 200
