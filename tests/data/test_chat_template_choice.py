"""render_chat(chat_template=...) picks a named template ("tool_use", "rag" ...) or takes a Jinja text, with tools and
documents, as transformers' apply_chat_template does on the same saved tokenizer folder."""

from __future__ import annotations

import os

import pytest
from test_chat_template_files import byte_level

from neurallayers.data.chat import chat_template_names, render_chat, resolve_chat_template
from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

DEFAULT = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>\n{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# Hermes-style: the tools' schemas up front, tool calls and tool results in the turns
TOOL_USE = ("{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n{% endif %}"
            "{% for m in messages %}<|{{ m.role }}|>{% if m.content is defined %}{{ m.content }}{% endif %}"
            "{% if m.tool_calls is defined %}<call>{{ m.tool_calls | tojson }}</call>{% endif %}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
RAG = ("{% if documents %}{% for d in documents %}[{{ loop.index }}] {{ d.title }}: {{ d.text }}\n{% endfor %}"
       "{% else %}(no documents)\n{% endif %}{% for m in messages %}{{ m.role | upper }}: {{ m.content }}\n{% endfor %}"
       "{% if add_generation_prompt %}ANSWER:{% endif %}")
INLINE = "{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}{{ eos_token }}"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. Zürich"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {
    "type": "object", "properties": {}}}}
DOCS = [{"title": "Alps", "text": "Zürich lies north of them."}, {"title": "Sea", "text": "Far away."}]
CHATS = {
    "plain": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}],
    "tool-turns": [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "name": "get_weather", "content": "12 °C"}],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tokenizer folder transformers saved with a default, a tool_use and a rag template."""
    out = tmp_path_factory.mktemp("tok")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level(), eos_token="</s>", bos_token="</s>")
    theirs.chat_template = {"default": DEFAULT, "tool_use": TOOL_USE, "rag": RAG}
    theirs.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pair(folder):
    return Tokenizer.load(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("template", [None, "default", "tool_use", "rag", INLINE, TOOL_USE])
@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("inputs", [{}, {"tools": [WEATHER, CLOCK]}, {"tools": []}, {"documents": DOCS},
                                    {"tools": [WEATHER], "documents": DOCS}], ids=["none", "tools", "no-tools",
                                                                                   "docs", "tools+docs"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_renders_as_apply_chat_template(pair, template, chat, inputs, add_generation_prompt):
    ours, theirs = pair
    want = theirs.apply_chat_template(CHATS[chat], chat_template=template, add_generation_prompt=add_generation_prompt,
                                      tokenize=False, **inputs)
    got = render_chat(ours, CHATS[chat], chat_template=template, add_generation_prompt=add_generation_prompt,
                      **inputs)
    assert got == want


def test_tools_without_a_name_pick_the_tool_use_template(pair):
    ours, _ = pair
    assert render_chat(ours, CHATS["plain"], tools=[WEATHER]).startswith("<tools>{")
    assert render_chat(ours, CHATS["plain"], documents=DOCS).startswith("<|system|>")  # no rag by default
    assert resolve_chat_template(ours) == DEFAULT and resolve_chat_template(ours, tools=[]) == TOOL_USE


def test_a_named_template_continues_the_final_message_as_transformers(pair):
    ours, theirs = pair
    chat = [*CHATS["plain"], {"role": "assistant", "content": "Once upon "}]
    want = theirs.apply_chat_template(chat, chat_template="rag", continue_final_message=True, tokenize=False,
                                      documents=DOCS)
    got = render_chat(ours, chat, chat_template="rag", continue_final_message=True, add_generation_prompt=False,
                      documents=DOCS)
    assert got == want and got.endswith("ASSISTANT: Once upon ")


def test_names_are_the_default_then_the_named_ones(pair):
    assert chat_template_names(pair[0]) == ["default", "rag", "tool_use"]


@pytest.mark.parametrize(("template", "message"), [
    ("tool-use", "chat_template 'tool-use' is neither a chat template of this tokenizer \\(its templates are "
                 "default, rag, tool_use\\) nor a Jinja template"),
    ("", "chat_template '' is neither"),
    (3, "chat_template must be a template name or a Jinja template, got int"),
])
def test_an_unknown_name_lists_the_names_there_are(pair, template, message):
    """transformers renders a misspelt name as the template's text: the prompt would be the word "tool-use"."""
    with pytest.raises(ValueError, match=message):
        render_chat(pair[0], CHATS["plain"], chat_template=template)


def test_a_tokenizer_without_templates_takes_a_jinja_text_and_names_none():
    tok = Tokenizer.from_hf(byte_level(), eos_token="</s>")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level(), eos_token="</s>")
    want = theirs.apply_chat_template(CHATS["plain"], chat_template=TOOL_USE, tools=[WEATHER], tokenize=False,
                                      add_generation_prompt=True)
    assert render_chat(tok, CHATS["plain"], chat_template=TOOL_USE, tools=[WEATHER]) == want
    assert render_chat(tok, CHATS["plain"]) == "system: Be brief.\nuser: héllo\nassistant:"
    with pytest.raises(ValueError, match="is neither a chat template of this tokenizer \\(it has none"):
        render_chat(tok, CHATS["plain"], chat_template="default")


@pytest.mark.parametrize(("inputs", "message"), [
    ({"tools": [WEATHER]}, "tools need a chat template that reads them; this tokenizer has none"),
    ({"documents": DOCS}, "documents need a chat template that reads them"),
    ({"tools": WEATHER, "chat_template": INLINE}, "tools must be a list of JSON schemas \\(dicts\\)"),
    ({"documents": ["text"], "chat_template": INLINE}, "documents must be a list of documents \\(dicts\\)"),
])
def test_tools_and_documents_are_never_dropped_silently(inputs, message):
    tok = Tokenizer.from_hf(byte_level(), eos_token="</s>")
    with pytest.raises(ValueError, match=message):
        render_chat(tok, CHATS["plain"], **inputs)
