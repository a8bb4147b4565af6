"""Chat messages of the OpenAI routes -> prompt text, through neurallayers.data.chat (the tokenizer's template, or
`role: content` lines then `assistant:`, where a reply ends at the next `user:` line, as in `neurallayers chat`).
A `content` given as a list of text parts reaches a template that loops over content as that list, and any other as
the texts joined by newlines (as vLLM does).
"""

from __future__ import annotations

from neurallayers.data.chat import DEFAULT_STOP, render_chat
from neurallayers.serve.errors import bad_request
from neurallayers.serve.schemas import ChatMessage


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """The messages as plain dicts (role, content: a string or a list of text parts, name when given). A null content
    stays None, which the renderer drops as transformers does: a template that tests for the key sees it missing."""
    out = []
    for m in messages:
        content = [p.model_dump() for p in m.content] if isinstance(m.content, list) else m.content
        d = {"role": m.role, "content": content}
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def render(tokenizer, messages: list[ChatMessage]) -> str:
    """The prompt text for `messages`, ending with the assistant's turn cue.

    Raises:
        APIError: 400 (param "messages") when the template refuses the conversation (e.g. roles must alternate).
    """
    try:
        return render_chat(tokenizer, message_dicts(messages))
    except ValueError as e:
        raise bad_request(str(e), "messages") from None


def echo_text(messages: list[ChatMessage]) -> str:
    """What vLLM's chat `echo` puts before the reply: the last message's content when that message is the
    assistant's (the role of the reply), its text parts joined by newlines; else nothing."""
    last = messages[-1]
    if last.role != "assistant" or last.content is None:
        return ""
    return "\n".join(p.text for p in last.content) if isinstance(last.content, list) else last.content


def reply_stops(tokenizer) -> list[str]:
    """Stop strings the template implies: the default template's next `user:` line (a model that learnt that format
    goes on to write the user's turn; `neurallayers chat` stops there too); none for a tokenizer's own template,
    whose turns end with a token the model emits (eos)."""
    return [] if getattr(tokenizer, "chat_template", None) else [DEFAULT_STOP]
