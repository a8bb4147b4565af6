"""A request that asks for no tools (`tools: []`, `tool_choice: "none"`, and the older `functions` / `function_call`
spellings), as some clients send on every call and vLLM takes, is what this server does anyway: it answers as without
them, through the real `openai` client; a tool it would have to offer is still refused naming the field."""

from __future__ import annotations

import pytest
from nl_serve_helpers import write_run_dir

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("no-tools") / "tiny-char")


@pytest.mark.parametrize("extra", [{"tools": []}, {"tool_choice": "none"}, {"tools": [], "tool_choice": "none"},
                                   {"functions": [], "function_call": "none"}])
def test_no_tools_is_the_plain_chat(client, extra):
    kw = dict(model="tiny-char", messages=MESSAGES, max_tokens=6, temperature=0)
    plain = client.chat.completions.create(**kw)
    got = client.chat.completions.create(**kw, extra_body=extra)
    assert got.choices[0].message.content == plain.choices[0].message.content
    assert got.usage == plain.usage


# a tool without tool_choice is vLLM's "auto", which needs the tool-call parsing this server lacks (tool_choice "none"
# shows it to the template: tests/serve/test_serve_chat_template_choice.py)
@pytest.mark.parametrize(("extra", "param"), [({"tools": [{"type": "function", "function": {"name": "f"}}]},
                                               "tool_choice"),
                                              ({"tool_choice": "auto"}, "tool_choice"),
                                              ({"tool_choice": "required"}, "tool_choice"),
                                              ({"function_call": "auto"}, "function_call")])
def test_a_tool_is_still_refused(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-char", messages=MESSAGES, max_tokens=2, extra_body=extra)
    assert e.value.body["param"] == param and "not supported" in e.value.body["message"]
