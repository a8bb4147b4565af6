"""Chat messages -> prompt text: the tokenizer's Jinja chat template (the `chat_template` of tokenizer_config.json,
rendered as transformers' apply_chat_template does), or a plain default for tokenizers that have none.

The default template writes one line per message, then the cue for the reply:

    system: You are terse.
    user: Hello!
    assistant:

Used by the server's chat routes and by `neurallayers chat`; messages are dicts with role and content, a string or
a list of OpenAI's text parts ({"type": "text", "text": ...}). A template that loops over a message's content
(Gemma 3's, Qwen2-VL's ...) gets the parts as they are, as transformers passes them; any other gets their texts
joined by newlines, as vLLM does (transformers would render the list's Python repr).
"""

from __future__ import annotations

import functools
from datetime import datetime

# where the default template's reply ends: the model starting the next user line
DEFAULT_STOP = "\nuser:"


def default_render(messages: list[dict]) -> str:
    return "".join(f"{m['role']}: {m.get('content', '')}\n" for m in messages) + "assistant:"


# the names a message's reasoning goes by: transformers copies it under the first (which templates read) and "thinking"
# (which gpt-oss's reads)
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def template_messages(messages: list[dict], *, parts: bool = True) -> list[dict]:
    """The messages as transformers' apply_chat_template hands them to a template: keys whose value is None dropped
    (an API's content=None rendered as "None", where templates test for a missing key), and a reasoning given under
    any of its names also under reasoning_content and thinking. parts=False: a content of text parts becomes their
    texts joined by newlines (for a template that reads content as a string)."""
    out = []
    for m in messages:
        if isinstance(m, dict):
            m = {k: v for k, v in m.items() if v is not None}
            if not parts and _text_parts(m.get("content")):
                m["content"] = "\n".join(p["text"] for p in m["content"])
            reasoning = next((m[k] for k in REASONING_FIELDS if k in m), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _text_parts(content) -> bool:
    return isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content)


class _Refused(Exception):
    """raise_exception() in a template: it refuses the conversation."""


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    return _environment().from_string(template)


@functools.lru_cache(maxsize=8)
def _takes_content_parts(template: str) -> bool:
    """Whether the template loops over a message's content (`for item in message['content']`), so reads a list of
    parts: how vLLM tells such templates from those that read content as a string."""
    from jinja2 import nodes

    def is_content(node) -> bool:  # x['content'] or x.content, filtered too: Llama 3.2 Vision's and Llama 4's loop
        # over `message['content'] | selectattr(...)` or `| sort(...)`
        while isinstance(node, nodes.Filter):
            node = node.node
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        return isinstance(node, nodes.Getattr) and node.attr == "content"

    return any(is_content(loop.iter) for loop in _environment().parse(template).find_all(nodes.For))


@functools.cache
def _environment():
    from jinja2 import nodes  # jinja2 comes with torch
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise _Refused(message)

    class Generation(Extension):
        """transformers' {% generation %}...{% endgeneration %} (it marks the assistant's tokens for training
        masks): renders its body as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        import json  # transformers' options: templates pass separators=(",", ":") or sort_keys=true

        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # the settings transformers uses, so templates written for it render the same here
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def special_tokens(tokenizer) -> dict[str, str]:
    """The special tokens a template sees by name, as transformers passes its special_tokens_map: bos_token and
    eos_token always (empty when there is none), pad_token, unk_token, sep_token, cls_token and mask_token where the
    tokenizer has them (the unk of its model where tokenizer_config.json names none)."""
    out = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    named = getattr(tokenizer, "named_tokens", {})
    unk = named.get("unk_token") or getattr(getattr(getattr(tokenizer, "hf", None), "model", None), "unk_token", None)
    for name, token in (("pad_token", getattr(tokenizer, "pad_token", None)), ("unk_token", unk),
                        ("sep_token", named.get("sep_token")), ("cls_token", named.get("cls_token")),
                        ("mask_token", getattr(tokenizer, "mask_token", None))):
        if token:
            out[name] = token
    return out


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The prompt text for `messages` (dicts with "role" and "content"), ending with the assistant's turn cue,
    rendered with the variables transformers' apply_chat_template passes (no tools, no documents).

    Raises:
        ValueError: the template refuses the conversation (e.g. roles must alternate), or fails (a template that
            does not parse or breaks while rendering: the model's, not the messages').
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return default_render(template_messages(messages, parts=False))
    try:
        messages = template_messages(messages, parts=_takes_content_parts(template))
        return _compile(template).render(messages=messages, add_generation_prompt=True, tools=None, documents=None,
                                         **special_tokens(tokenizer))
    except _Refused as e:
        raise ValueError(f"the model's chat template refused these messages: {e}") from None
    except Exception as e:  # a template error of its own (syntax, a type error while rendering)
        raise ValueError(f"the model's chat template failed ({type(e).__name__}: {e})") from None
