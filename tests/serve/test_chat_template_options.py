"""vLLM's chat template options through the real `openai` client (extra_body) against a real uvicorn server on
127.0.0.1, with transformers' apply_chat_template as the oracle of the prompt: add_generation_prompt false (the reply's
role is then the last message's, as vLLM names it), continue_final_message (the reply continues the assistant's last
message; with echo it starts with that message's content), chat_template_kwargs reaching the template (a Qwen3-style
`enable_thinking: false`), and the combinations vLLM refuses as 400s naming the field."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import assert_ok_after, serving, write_run_dir

import neurallayers

openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}"
            "assistant: {% if enable_thinking is defined and enable_thinking is false %}ok! {% endif %}{% endif %}")
PREFILL = [{"role": "user", "content": "the quick"}, {"role": "assistant", "content": "brown fox"}]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("chat30") / "tiny-char", chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def hf(run_dir):
    tok = neurallayers.load(run_dir)[1]
    return tok, transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=TEMPLATE)


def chat(client, messages, **extra):
    return client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=6, temperature=0,
                                          extra_body=extra)


def streamed(client, messages, **extra) -> tuple[str, str]:
    chunks = list(client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, extra_body=extra))
    return chunks[0].choices[0].delta.role, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def completion(client, prompt: str) -> str:
    return client.completions.create(model="tiny-char", prompt=prompt, max_tokens=6, temperature=0,
                                     extra_body={"add_special_tokens": False}).choices[0].text


@pytest.mark.parametrize("extra", [{"add_generation_prompt": False, "continue_final_message": True},
                                   {"continue_final_message": True}])
def test_continue_final_message_continues_the_assistants_message(client, hf, extra):
    tok, oracle = hf
    want = oracle.apply_chat_template(PREFILL, add_generation_prompt=False, continue_final_message=True,
                                      tokenize=False)
    assert want.endswith("assistant: brown fox")
    out = chat(client, PREFILL, **extra)
    assert out.usage.prompt_tokens == len(tok.encode(want))
    reply = completion(client, want)
    assert out.choices[0].message.content == reply and out.choices[0].message.role == "assistant"
    # echo: the reply starts with the message it continues, as vLLM gives it, streamed or not
    assert chat(client, PREFILL, echo=True, **extra).choices[0].message.content == "brown fox" + reply
    assert streamed(client, PREFILL, echo=True, **extra) == ("assistant", "brown fox" + reply)


def test_without_a_generation_prompt_the_reply_has_the_last_messages_role(client, hf):
    tok, oracle = hf
    want = oracle.apply_chat_template(HI, add_generation_prompt=False, tokenize=False)
    out = chat(client, HI, add_generation_prompt=False)
    assert out.usage.prompt_tokens == len(tok.encode(want))
    assert out.choices[0].message.content == completion(client, want) and out.choices[0].message.role == "user"
    assert chat(client, HI, add_generation_prompt=False, echo=True).choices[0].message.content == "hi" + \
        out.choices[0].message.content
    assert streamed(client, HI, add_generation_prompt=False) == ("user", out.choices[0].message.content)


@pytest.mark.parametrize("kwargs", [{"enable_thinking": False}, {"enable_thinking": True}, {}])
def test_chat_template_kwargs_reach_the_template(client, hf, kwargs):
    tok, oracle = hf
    want = oracle.apply_chat_template(HI, add_generation_prompt=True, tokenize=False, **kwargs)
    assert want.endswith("ok! ") == (kwargs == {"enable_thinking": False})
    out = chat(client, HI, chat_template_kwargs=kwargs)
    assert out.usage.prompt_tokens == len(tok.encode(want))
    assert out.choices[0].message.content == completion(client, want)


@pytest.mark.parametrize("messages, extra, param, message", [
    (PREFILL, {"add_generation_prompt": True, "continue_final_message": True}, "continue_final_message",
     "cannot both be true"),
    (HI, {"add_generation_prompt": False, "continue_final_message": True}, "continue_final_message",
     "last message to be the assistant's, not the user's"),
    ([*HI, {"role": "assistant", "content": None}], {"continue_final_message": True}, "messages",
     "no content to continue"),
    (HI, {"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs", "may not set messages"),
    (HI, {"chat_template_kwargs": {"eos_token": "x", "bos_token": "y"}}, "chat_template_kwargs",
     "may not set bos_token, eos_token"),
    (HI, {"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs", ""),
])
def test_what_vllm_refuses_is_a_400_naming_the_field(client, server, messages, extra, param, message):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages, **extra)
    assert e.value.body["param"] == param and message in e.value.body["message"]
    assert_ok_after(server.url)


def test_a_template_that_changes_the_final_message_cannot_continue_it(tmp_path):
    run = write_run_dir(tmp_path / "upper", chat_template="{% for m in messages %}{{ m.content | upper }}{% endfor %}")
    with serving(run) as srv:
        r = httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": PREFILL, "continue_final_message": True,
                                                               "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert "does not render the final message as it is" in r.json()["error"]["message"]
        assert_ok_after(srv.url)
