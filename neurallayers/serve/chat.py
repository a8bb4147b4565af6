"""Chat messages -> prompt text: the tokenizer's Jinja chat template (the `chat_template` of tokenizer_config.json,
rendered as transformers' apply_chat_template does), or a plain default for tokenizers that have none.

The default template writes one line per message, then the cue for the reply:

    system: You are terse.
    user: Hello!
    assistant:

Messages with `content` as a list of parts keep only the text parts, joined by newlines.
"""

from __future__ import annotations

import functools
from datetime import datetime

from neurallayers.serve.errors import bad_request
from neurallayers.serve.schemas import ChatMessage


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """The messages as plain dicts (role, content as one string, name when given), as templates expect them."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content or [])
        d = {"role": m.role, "content": content}
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def default_render(messages: list[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    try:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("chat templates need jinja2: pip install 'neurallayers[serve]'") from e

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value, indent=None, ensure_ascii=False):
        import json

        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

    # the settings transformers uses, so templates written for it render the same here
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render(tokenizer, messages: list[ChatMessage]) -> str:
    """The prompt text for `messages`, ending with the assistant's turn cue.

    Raises:
        APIError: 400 (param "messages") when the template refuses the conversation (e.g. roles must alternate).
    """
    dicts = message_dicts(messages)
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return default_render(dicts)
    from jinja2 import TemplateError

    try:
        return _compile(template).render(messages=dicts, add_generation_prompt=True,
                                         bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    except TemplateError as e:
        raise bad_request(f"the model's chat template refused these messages: {e}", "messages") from None
