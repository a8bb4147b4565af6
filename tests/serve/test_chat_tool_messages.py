"""A multi-turn tool conversation (an assistant message with tool_calls, then the tool's reply with tool_call_id),
sent as OpenAI's API shapes it through the real `openai` client on 127.0.0.1, reaches the chat template as vLLM hands
it over: the calls' JSON `arguments` parsed into objects, tool_call_id, name and reasoning kept. Oracle: transformers'
apply_chat_template on the same tokenizer with Qwen2.5's tool-use template (the shape Hermes-style templates share),
compared through /tokenize's ids and chat's usage. Also the refusals these fields bring, each naming its field."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from nl_serve_helpers import assert_ok_after, serving

from neurallayers import ModelConfig, build_model
from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

# Qwen2.5-Instruct's template, as its tokenizer_config.json holds it (tools, tool_calls, tool replies grouped)
QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}"
    "{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}"
    "{%- endif %}{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# every field a message brings, written out (a template that reads ids, names and reasoning)
FIELDS = ("{% for m in messages %}<{{ m.role }}{% if m.name is defined %} name={{ m.name }}{% endif %}"
          "{% if m.tool_call_id is defined %} id={{ m.tool_call_id }}{% endif %}>"
          "{% if m.reasoning_content is defined %}({{ m.reasoning_content }}){% endif %}"
          "{% if m.reasoning is defined %}(r: {{ m.reasoning }}){% endif %}"
          "{% if m.content is defined %}{{ m.content }}{% endif %}"
          "{% for c in m.tool_calls or [] %}[{{ c.id }} {{ c.type }} {{ c.function.name }} "
          "{{ c.function.arguments | tojson }}]{% endfor %}\n{% endfor %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def call(cid: str, city: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


# as the openai client sends them back: the reply's message with content null, then each call's result
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [call("call_1", "Paris"), call("call_2", "Zürich")]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12 C"},
                                                           {"type": "text", "text": "rain"}]},
]


def as_vllm_hands_them(messages: list[dict]) -> list[dict]:
    """The oracle's input: vLLM's conversation (arguments parsed, a tool's text parts joined, null keys left out)."""
    out = []
    for m in json.loads(json.dumps(messages)):
        m = {k: v for k, v in m.items() if v is not None}
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.loads(c["function"]["arguments"] or "{}")
        if m["role"] == "tool" and isinstance(m["content"], list):
            m["content"] = "\n".join(p["text"] for p in m["content"])
        out.append(m)
    return out


@pytest.fixture(scope="module")
def tok():
    tok = Tokenizer.train_char(["".join(map(chr, range(32, 127))) + "\nüéö"])
    tok.chat_template = QWEN25
    tok.named_chat_templates = {"fields": FIELDS}
    return tok


@pytest.fixture(scope="module")
def oracle(tok):
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf,
                                                chat_template={"default": QWEN25, "fields": FIELDS})


@pytest.fixture(scope="module")
def srv(tok):
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=2048, n_layer=1, n_head=2, n_embd=16)
    with serving((build_model(cfg).eval(), tok)) as srv:
        yield srv


def prompt_of(srv, tok, messages, **extra) -> str:
    """The prompt both chat routes read: /tokenize's ids decoded, whose count chat's usage reports."""
    r = httpx.post(f"{srv.url}/tokenize", json={"messages": messages, **extra}, timeout=30)
    assert r.status_code == 200, r.text
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model="model", messages=messages, max_tokens=1, temperature=0,
                                         extra_body=extra)
    assert out.usage.prompt_tokens == r.json()["count"]
    return tok.decode(r.json()["tokens"])


@pytest.mark.parametrize("tools", [None, [WEATHER]])
@pytest.mark.parametrize("upto", [3, 4, 5])  # the call alone, one result, both (grouped in one user turn)
def test_a_tool_conversation_renders_as_transformers(srv, tok, oracle, tools, upto):
    messages = CONVERSATION[:upto]
    extra = {"tools": tools, "tool_choice": "none"} if tools else {}
    want = oracle.apply_chat_template(as_vllm_hands_them(messages), tools=tools, tokenize=False,
                                      add_generation_prompt=True)
    assert '"arguments": {"city": "Paris"}}' in want  # an object, not the JSON text quoted again
    assert prompt_of(srv, tok, messages, **extra) == want


@pytest.fixture(scope="module")
def fields_srv(tok):
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=1, n_head=2, n_embd=16)
    with serving((build_model(cfg).eval(), tok), chat_template="fields") as srv:
        yield srv


@pytest.mark.parametrize("assistant", [
    {"role": "assistant", "name": "bot", "content": "let me see", "reasoning": "needs the tool",
     "tool_calls": [call("c9", "Oslo")], "refusal": None},
    {"role": "assistant", "content": None, "reasoning_content": "older name", "refusal": "no",
     "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "now", "arguments": ""}}]},
    {"role": "assistant", "content": "plain", "tool_calls": []},  # an empty list is no call (vLLM drops it)
    {"role": "assistant", "content": [{"type": "text", "text": "I"}, {"type": "refusal", "refusal": "won't"}]},
])
def test_ids_names_and_reasoning_reach_the_template(fields_srv, tok, oracle, assistant):
    messages = [{"role": "user", "name": "ann", "content": "hi"}, assistant,
                {"role": "tool", "tool_call_id": "c9", "content": "ok"}]
    want_in = as_vllm_hands_them(messages)
    for m in want_in:  # vLLM shows the template reasoning under both names, a refusal never, an empty call list not
        if reasoning := m.pop("reasoning", None) or m.get("reasoning_content"):
            m["reasoning"] = m["reasoning_content"] = reasoning
        m.pop("refusal", None)
        if m.get("tool_calls") == []:
            del m["tool_calls"]
        if isinstance(m.get("content"), list):  # a refusal part is its text (vLLM), joined for a string template
            m["content"] = "\n".join(p.get("text", p.get("refusal")) for p in m["content"])
    want = oracle.apply_chat_template(want_in, chat_template="fields", tokenize=False, add_generation_prompt=False)
    assert "<user name=ann>hi" in want and "<tool id=c9>ok" in want
    assert ("(r: " in want) == ("reasoning" in assistant or "reasoning_content" in assistant)
    assert prompt_of(fields_srv, tok, messages, add_generation_prompt=False) == want


BAD = [
    ({"role": "user", "content": "x", "tool_calls": [call("c", "Rome")]}, "messages[0]",
     'tool_calls belongs to a message of role "assistant", not "user"'),
    ({"role": "assistant", "content": "x", "tool_call_id": "c"}, "messages[0]",
     'tool_call_id belongs to a message of role "tool", not "assistant"'),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                           "function": {"name": "f", "arguments": "{city: Rome}"}}]},
     "messages[0].tool_calls[0].function.arguments", "is not valid JSON"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                           "function": {"name": "f", "arguments": {"city": "Rome"}}}]},
     "messages[0].tool_calls[0].function.arguments", "string"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "function": {"name": "f", "arguments": ""}}]},
     "messages[0].tool_calls[0].type", "function"),
    ({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     "messages[0].tool_calls[0].id", "field required"),
]


@pytest.mark.parametrize(("message", "param", "says"), BAD)
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
def test_bad_tool_fields_are_a_400_naming_the_field(srv, message, param, says, route):
    extra = {"max_tokens": 1} if route.startswith("/v1") else {}
    r = httpx.post(f"{srv.url}{route}", json={"model": "model", "messages": [message], **extra}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == param and says in err["message"], r.text
    assert_ok_after(srv.url)


def test_tool_calls_need_a_template_that_reads_them():
    plain = Tokenizer.train_char(["".join(map(chr, range(32, 127))) + "\nü"])
    cfg = ModelConfig(vocab_size=plain.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=16)
    with serving((build_model(cfg).eval(), plain)) as s:
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": CONVERSATION[1:4], "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].tool_calls", r.text
        # a tool's reply alone is a line like any other
        r = httpx.post(f"{s.url}/tokenize", json={"messages": [CONVERSATION[1], CONVERSATION[3]]})
        assert r.status_code == 200 and plain.decode(r.json()["tokens"]).endswith("tool: 18 C\nassistant:")
