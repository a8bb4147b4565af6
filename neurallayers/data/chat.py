"""Chat messages -> prompt text: the tokenizer's Jinja chat template (the `chat_template` of tokenizer_config.json,
rendered as transformers' apply_chat_template does), or a plain default for tokenizers that have none.

The default template writes one line per message, then the cue for the reply:

    system: You are terse.
    user: Hello!
    assistant:

Without the generation prompt it stops after the last message's line (newline included); continuing the final message
it stops right after that message's content (`assistant: Once upon`), as transformers cuts a rendered template there.

A tokenizer may hold named templates besides its default (tool_use, rag ...: transformers' additional_chat_templates/);
render_chat's chat_template picks one by name, or is a template's text, and tools and documents reach the template as
transformers passes them (the "tool_use" template is the default when tools are given and the tokenizer has one).

Used by the server's chat routes, `neurallayers chat` and the playground's Chat tab; messages are dicts with role and
content, a string or a list of OpenAI's text parts ({"type": "text", "text": ...}). A template that loops over a
message's content (Gemma 3's, Qwen2-VL's ...) gets the parts as they are, as transformers passes them; any other gets
their texts joined by newlines, as vLLM does (transformers would render the list's Python repr). A template sees plain
JSON values only (plain_data: an enum as its value, any other object as "<TypeName>"), as transformers hands them.
"""

from __future__ import annotations

import functools
import re

from neurallayers.data.template_sandbox import (  # noqa: F401 (the limits and errors are chat's public names too)
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_INT_DIGITS,
    MAX_TEMPLATE_TOTAL,
    TemplateRefused,
    TemplateTooLarge,
    TemplateTooSlow,
    budget,
    compile_template,
    parse_template,
)

# where the default template's reply ends: the model starting the next user line
DEFAULT_STOP = "\nuser:"


# transformers' marker for continue_final_message: appended to the final content, rendered, then cut off
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# what the renderer passes a template itself, so template_kwargs may not replace it: the messages, the switches and
# inputs the request sets by their own names, and the special tokens (transformers' special_tokens_map)
RESERVED_TEMPLATE_NAMES = frozenset({
    "messages", "add_generation_prompt", "continue_final_message", "tools", "documents", "bos_token", "eos_token",
    "pad_token", "unk_token", "sep_token", "cls_token", "mask_token", "additional_special_tokens"})


def default_render(messages: list[dict], *, add_generation_prompt: bool = True,
                   continue_final_message: bool = False) -> str:
    text = "".join(f"{m['role']}: {m.get('content', '')}\n" for m in messages)
    if continue_final_message:
        return text.removesuffix("\n")  # the reply goes on with the final message's own line
    return text + "assistant:" if add_generation_prompt else text


def check_template_kwargs(template_kwargs, *, name: str = "template_kwargs") -> dict:
    """The extra template variables as a dict (None: none).

    Raises:
        ValueError: not a dict with string keys, or a key the renderer passes itself (messages, a special token ...).
    """
    if template_kwargs is None:
        return {}
    if not isinstance(template_kwargs, dict) or not all(isinstance(k, str) for k in template_kwargs):
        raise ValueError(f"{name} must be a dict of template variable names to values, got {template_kwargs!r:.80}")
    if clash := sorted(RESERVED_TEMPLATE_NAMES.intersection(template_kwargs)):
        raise ValueError(f"{name} may not set {', '.join(clash)}: the renderer passes "
                         f"{'it' if len(clash) == 1 else 'them'} to the template itself")
    return template_kwargs


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


def plain_data(value):
    """`value` rebuilt from plain JSON types, as transformers hands a template everything it sees: str, int and float
    subclasses (enums ...) and numpy scalars as the plain value, dicts, lists and tuples rebuilt, dataclasses and
    pydantic models as dicts, anything else as "<TypeName>". The sandbox cannot tell which methods of an arbitrary
    object are unsafe (a Path's write_text, an image's save): a template never gets one."""
    import dataclasses
    from collections.abc import Mapping

    import numpy as np

    def plain(v):
        if v is None or type(v) in (str, int, float, bool):
            return v
        for kind in (str, int, float):  # bool is an int subclass, but only `True`/`False` are bools
            if isinstance(v, kind):
                return kind.__str__(v) if kind is str else kind(v)
        if isinstance(v, Mapping):
            return {plain(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return tuple(map(plain, v)) if isinstance(v, tuple) else list(map(plain, v))
        if isinstance(v, np.generic):
            return plain(v.item())
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if callable(getattr(v, "model_dump", None)):
            return plain(v.model_dump())
        return f"<{type(v).__name__}>"

    return plain(value)


def _text_parts(content) -> bool:
    return isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content)


class _CannotContinue(ValueError):
    """continue_final_message on a conversation or template that gives no final content to continue."""


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

    return any(is_content(loop.iter) for loop in parse_template(template).find_all(nodes.For))


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


def chat_template_names(tokenizer) -> list[str]:
    """The names render_chat's chat_template takes for this tokenizer: "default" where it has a template of its own,
    then its named ones (tool_use, rag ...), sorted."""
    named = sorted(getattr(tokenizer, "named_chat_templates", None) or {})
    return (["default"] if getattr(tokenizer, "chat_template", None) else []) + named


class ChatTemplateSyntaxError(ValueError):
    """A chat template given by the caller (not the tokenizer's own) that does not parse as Jinja."""


# Jinja's delimiters: a text holding none is no template, so it is read as a (misspelt) name
_JINJA = re.compile(r"\{\{|\{%|\{#")


def resolve_chat_template(tokenizer, chat_template: str | None = None, *, tools: list | None = None) -> str | None:
    """The template text render_chat uses, picked as transformers' get_chat_template picks it: `chat_template` as a
    name of the tokenizer's templates ("default", "tool_use", "rag" ...), else as a Jinja template itself; unset, the
    "tool_use" template when tools are given and the tokenizer has one, else its default. None: the plain
    `role: content` lines (a tokenizer without a default template, no chat_template given).

    Raises:
        ValueError: chat_template is not text, or is neither a name of the tokenizer's templates nor Jinja (a text
            without {{, {% or {#: transformers would render a misspelt name as the prompt itself; the line lists
            the names there are), or is Jinja that does not parse.
    """
    named = dict(getattr(tokenizer, "named_chat_templates", None) or {})
    default = getattr(tokenizer, "chat_template", None)
    if default:
        named["default"] = default
    if chat_template is None:
        return named["tool_use"] if tools is not None and "tool_use" in named else default
    if not isinstance(chat_template, str):
        raise ValueError(f"chat_template must be a template name or a Jinja template, got "
                         f"{type(chat_template).__name__}")
    if chat_template in named:
        return named[chat_template]
    if _JINJA.search(chat_template):
        from jinja2 import TemplateSyntaxError

        try:  # a template given here is the caller's (a flag, a request): its syntax error is theirs, named now
            compile_template(chat_template)
        except TemplateSyntaxError as e:
            raise ChatTemplateSyntaxError(f"chat_template does not parse as a Jinja template (line {e.lineno}: "
                                          f"{e.message})") from None
        return chat_template
    names = chat_template_names(tokenizer)
    have = f"its templates are {', '.join(names)}" if names else "it has none; it renders `role: content` lines"
    raise ValueError(f"chat_template {chat_template!r:.80} is neither a chat template of this tokenizer ({have}) nor "
                     "a Jinja template")


def _check_list_of_dicts(value, name: str, what: str) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{name} must be a list of {what} (dicts), got {value!r:.80}")
    return list(value)


def _check_messages(messages) -> None:
    """A conversation is a list of dicts, each with a string role: a message without one was a KeyError from the plain
    lines, a string a TypeError ("string indices must be integers"), far from the caller's mistake."""
    if not isinstance(messages, list | tuple):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string 'role' (and a 'content'), got {m!r:.80}")


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, template_kwargs: dict | None = None,
                chat_template: str | None = None, tools: list[dict] | None = None,
                documents: list[dict] | None = None, max_seconds: float | None = None) -> str:
    """The prompt text for `messages` (dicts with "role" and "content"), rendered with the variables transformers'
    apply_chat_template passes.

    Args:
        add_generation_prompt: end with the cue for the assistant's reply (the template's, or "assistant:").
        continue_final_message: end right after the final message's content instead, so the model continues that
            message (a prefilled reply); not with add_generation_prompt, as in transformers.
        template_kwargs: extra variables for the template (Qwen3's `enable_thinking`, ...); the default template
            reads none. They may not replace the messages, the switches above or the special tokens.
        chat_template: a name of the tokenizer's templates ("default", "tool_use", "rag" ...: chat_template_names)
            or a Jinja template's text, as transformers' apply_chat_template(chat_template=...) reads it; None: the
            tokenizer's default (the "tool_use" one when tools are given and it has one).
        tools: the tools the model may call, as JSON schemas (the template's `tools`; transformers also converts
            Python functions, which this does not).
        documents: documents for retrieval-augmented generation, dicts such as {"title": ..., "text": ...} (the
            template's `documents`).
        max_seconds: stop a template that renders longer (TemplateTooSlow); None: no deadline. Every template is
            bounded in size (MAX_TEMPLATE_CHARS, MAX_TEMPLATE_TOTAL: TemplateTooLarge) either way.

    Raises:
        ValueError: messages is not a list of dicts with a string role; the template refuses the conversation (e.g.
            roles must alternate), or fails (a template that does not parse or breaks while rendering: the model's,
            not the messages'); bad options; an unknown
            template name; tools or documents without a template to read them; the final message has no content to
            continue, or the template does not render it as it is; max_seconds not a positive number.
        TemplateTooLarge: (a ValueError) the template makes a value or a text past MAX_TEMPLATE_CHARS, or values past
            MAX_TEMPLATE_TOTAL, or a number past MAX_TEMPLATE_INT_DIGITS digits.
        TemplateTooSlow: (a ValueError) the template renders longer than max_seconds.
    """
    if max_seconds is not None and not (isinstance(max_seconds, int | float) and 0 < max_seconds < float("inf")):
        raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r:.40}")
    _check_messages(messages)
    extra = check_template_kwargs(template_kwargs)
    tools = _check_list_of_dicts(tools, "tools", "JSON schemas")
    documents = _check_list_of_dicts(documents, "documents", "documents")
    template = resolve_chat_template(tokenizer, chat_template, tools=tools)
    if continue_final_message:
        if add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true: the first "
                             "continues the final message, the second starts a new assistant message")
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("content") is None:
            raise ValueError("continue_final_message: the final message has no content to continue")
    if not template:
        if tools is not None or documents is not None:  # the plain lines would drop them without a word
            raise ValueError(f"{'tools' if tools is not None else 'documents'} need a chat template that reads them; "
                             "this tokenizer has none (give chat_template)")
        return default_render(template_messages(plain_data(messages), parts=False),
                              add_generation_prompt=add_generation_prompt,
                              continue_final_message=continue_final_message)
    try:
        messages = template_messages(plain_data(messages), parts=_takes_content_parts(template))
        tools, documents, extra = plain_data(tools), plain_data(documents), plain_data(extra)
        final = _tag_final_content(template, messages) if continue_final_message else None
        with budget(max_seconds):
            text = compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             tools=tools, documents=documents, **special_tokens(tokenizer), **extra)
    except TemplateRefused as e:
        raise ValueError(f"the model's chat template refused these messages: {e}") from None
    except _CannotContinue:
        raise
    except (TemplateTooLarge, TemplateTooSlow) as e:  # the same class (the server tells whose template by it)
        raise type(e)(f"{e}{_on_line(_template_line(e))}") from None
    except Exception as e:  # a template error of its own (syntax, a type error while rendering)
        raise ValueError(_template_failure(e)) from None
    return text if final is None else _cut_after_final(text, final)


def _template_failure(error: Exception) -> str:
    """One line for a template's own error, naming the template line it broke on (a published template runs to
    hundreds of lines)."""
    from jinja2 import TemplateSyntaxError

    detail = error.message if isinstance(error, TemplateSyntaxError) else error
    return f"the model's chat template failed ({type(error).__name__}: {detail}){_on_line(_template_line(error))}"


def _template_line(error: Exception) -> int | None:
    """The template line `error` arose on: a syntax error's own, else the innermost frame jinja maps back to the
    template (inside a macro, not at its call)."""
    import traceback

    from jinja2 import TemplateSyntaxError

    if isinstance(error, TemplateSyntaxError):
        return error.lineno
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<template>"]
    return frames[-1].lineno if frames else None


def _on_line(line: int | None) -> str:
    return f" on its line {line}" if line else ""


def _tag_final_content(template: str, messages: list[dict]) -> str:
    """Appends transformers' marker to the final message's content (its last text part, for a list) in place, so
    the rendered text can be cut there; returns that text as it was."""
    if "content" not in template:
        raise _CannotContinue("continue_final_message: the model's chat template never reads a message's content")
    last = messages[-1] = dict(messages[-1])
    found = extend_content(last["content"], _CONTINUE_TAG)
    if found is None:
        raise _CannotContinue("continue_final_message: the final message holds no text to continue")
    last["content"], final = found
    return final


def extend_content(content, text: str) -> tuple[str | list, str] | None:
    """A message's content with `text` appended where continue_final_message continues it (a string: at its end; a
    list of parts: to its last text part), and the text it extended; None where it holds no text."""
    if isinstance(content, str):
        return content + text, content
    if isinstance(content, list):
        for i in reversed(range(len(content))):
            if isinstance(content[i], dict) and "text" in content[i]:
                final = content[i]["text"]
                return [*content[:i], {**content[i], "text": final + text}, *content[i + 1:]], final
    return None


def _cut_after_final(text: str, final: str) -> str:
    """The rendered text up to the final message's content, as transformers cuts it: at the marker, and without the
    blanks before it where the template trimmed the marker's own trailing space (so it strips the content's too)."""
    marker = _CONTINUE_TAG.strip()
    if final.strip() not in text or marker not in text:
        raise ValueError("continue_final_message: the model's chat template does not render the final message as it "
                         "is (it drops or changes part of it), so it cannot be continued")
    at = text.rindex(marker)
    return text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
