"""Chat messages of the OpenAI routes -> prompt text, through neurallayers.data.chat (the tokenizer's template, or
`role: content` lines then `assistant:`, where a reply ends at the next `user:` line, as in `neurallayers chat`).
A `content` given as a list of text parts reaches a template that loops over content as that list, and any other as
the texts joined by newlines (as vLLM does). vLLM's add_generation_prompt, continue_final_message and
chat_template_kwargs reach the renderer as its options (template_options).
"""

from __future__ import annotations

from neurallayers.data.chat import DEFAULT_STOP, check_template_kwargs, render_chat
from neurallayers.serve.errors import bad_request
from neurallayers.serve.schemas import ChatMessage, ChatRequest, TokenizeRequest


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


def template_options(req: ChatRequest | TokenizeRequest) -> dict:
    """render()'s options from a chat request (or a /tokenize of messages), checked as vLLM checks them.

    Raises:
        APIError: 400 naming the field: continue_final_message with add_generation_prompt sent true, or with a last
            message that is not the assistant's; chat_template_kwargs setting a name the renderer passes itself.
    """
    cont = req.continue_final_message
    # vLLM refuses the two together only when both are sent; continue_final_message alone means no generation prompt
    add = req.add_generation_prompt if "add_generation_prompt" in req.model_fields_set else not cont
    if cont and add:
        raise bad_request("continue_final_message and add_generation_prompt cannot both be true: send "
                          "add_generation_prompt false to continue the final message", "continue_final_message")
    if cont and req.messages[-1].role != "assistant":
        raise bad_request(f"continue_final_message needs the last message to be the assistant's, not the "
                          f"{req.messages[-1].role}'s", "continue_final_message")
    try:
        kwargs = check_template_kwargs(req.chat_template_kwargs, name="chat_template_kwargs")
    except ValueError as e:
        raise bad_request(str(e), "chat_template_kwargs") from None
    return {"add_generation_prompt": add, "continue_final_message": cont, "template_kwargs": kwargs}


def render(tokenizer, messages: list[ChatMessage], **options) -> str:
    """The prompt text for `messages`; `options` are render_chat's (by default: ending with the assistant's cue).

    Raises:
        APIError: 400 (param "messages") when the template refuses the conversation (e.g. roles must alternate) or
            cannot continue its final message.
    """
    try:
        return render_chat(tokenizer, message_dicts(messages), **options)
    except ValueError as e:
        raise bad_request(str(e), "messages") from None


def reply_role(messages: list[ChatMessage], *, add_generation_prompt: bool) -> str:
    """The role vLLM gives the reply: the assistant's after a generation prompt, else the last message's (the
    reply goes on with it)."""
    return "assistant" if add_generation_prompt else messages[-1].role


def echo_text(messages: list[ChatMessage], role: str = "assistant") -> str:
    """What vLLM's chat `echo` puts before the reply: the last message's content when that message has the reply's
    `role` (with continue_final_message: the text the reply continues), its text parts joined by newlines; else
    nothing."""
    last = messages[-1]
    if last.role != role or last.content is None:
        return ""
    return "\n".join(p.text for p in last.content) if isinstance(last.content, list) else last.content


def reply_stops(tokenizer) -> list[str]:
    """Stop strings the template implies: the default template's next `user:` line (a model that learnt that format
    goes on to write the user's turn; `neurallayers chat` stops there too); none for a tokenizer's own template,
    whose turns end with a token the model emits (eos)."""
    return [] if getattr(tokenizer, "chat_template", None) else [DEFAULT_STOP]
