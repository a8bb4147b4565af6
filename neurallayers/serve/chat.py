"""Chat messages of the OpenAI routes -> prompt text, through neurallayers.data.chat (the tokenizer's template, or
`role: content` lines then `assistant:`, where a reply ends at the next `user:` line, as in `neurallayers chat`).
A `content` given as a list of text parts reaches a template that loops over content as that list, and any other as
the texts joined by newlines (as vLLM does). vLLM's add_generation_prompt, continue_final_message,
chat_template_kwargs, chat_template, documents and tools reach the renderer as its options (template_options); a tool
conversation's messages (tool_calls, tool_call_id, reasoning) reach the template as vLLM hands them (message_dicts).

The template is the request's (chat_template, else chat_template_kwargs' "chat_template", as vLLM reads them), else
the server's (`serve --chat-template`), else the tokenizer's. As in vLLM, a request's own template is refused unless the
server trusts them (--trust-request-chat-template); every template renders in the bounded sandbox
(data.template_sandbox: sizes checked before they are allocated) and within RENDER_SECONDS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from neurallayers.data.chat import (
    DEFAULT_STOP,
    TemplateTooLarge,
    TemplateTooSlow,
    check_template_kwargs,
    render_chat,
    resolve_chat_template,
)
from neurallayers.serve.errors import bad_request
from neurallayers.serve.schemas import ChatMessage, ChatRequest, TokenizeRequest

# a template may loop for ever (nested range()s): its rendering is cut off after this long
RENDER_SECONDS = 2.0
TRUST_FLAG = "--trust-request-chat-template"


@dataclass(frozen=True)
class ChatTemplates:
    """The server's template settings: `default` (a name of the tokenizer's templates or Jinja text; None: the
    tokenizer's own) and whether requests may bring their own (`trust_request`)."""

    default: str | None = None
    trust_request: bool = False

    def check(self, tokenizer) -> None:
        """Raises ValueError (one line, naming --chat-template: the server's flag, at start and on /reload) where
        `default` is neither a template name of `tokenizer` nor Jinja."""
        if self.default is not None:
            try:
                resolve_chat_template(tokenizer, self.default)
            except ValueError as e:
                raise ValueError(str(e).replace("chat_template", "--chat-template", 1)) from None


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """The messages as vLLM hands them to the template: role, content (a string or a list of text parts, a refusal
    part among them as one; a tool message's parts joined by newlines), and name, tool_calls (their arguments parsed
    from JSON), tool_call_id and reasoning where given (a refusal field is not shown, as in vLLM). A null content
    stays None, which the renderer drops as transformers does: a template that tests for the key sees it missing.

    Raises:
        APIError: 400 naming the field: a tool call's arguments that are not JSON.
    """
    out = []
    for i, m in enumerate(messages):
        content = [{"type": "text", "text": p.text} for p in m.content] if isinstance(m.content, list) else m.content
        if m.role == "tool" and isinstance(content, list):  # vLLM's: tool templates read a string
            content = "\n".join(p["text"] for p in content)
        d = {"role": m.role, "content": content}
        for field in ("name", "tool_call_id"):
            if getattr(m, field) is not None:
                d[field] = getattr(m, field)
        if (reasoning := m.reasoning if m.reasoning is not None else m.reasoning_content) is not None:
            d["reasoning"] = d["reasoning_content"] = reasoning  # vLLM's name and the older one templates read
        if m.tool_calls:  # an empty list is none, as vLLM drops it (templates then take the plain assistant path)
            d["tool_calls"] = [{"id": c.id, "type": c.type, "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments, f"messages[{i}].tool_calls[{j}]")
            }} for j, c in enumerate(m.tool_calls)]
        out.append(d)
    return out


def _arguments(text: str, where: str):
    """A tool call's arguments as the template reads them: the JSON text parsed (vLLM's and transformers' convention);
    empty or blank is {} (no arguments), as vLLM reads it."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # vLLM puts {} for malformed JSON, which would show the model no call
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise bad_request(f"{where}.function.arguments is not valid JSON ({reason}): send the arguments as a JSON "
                          f"text, e.g. '{{\"city\": \"Paris\"}}'", f"{where}.function.arguments") from None


def template_options(req: ChatRequest | TokenizeRequest, tokenizer, templates: ChatTemplates) -> dict:
    """render()'s options from a chat request (or a /tokenize of messages), checked as vLLM checks them.

    Raises:
        APIError: 400 naming the field: continue_final_message with add_generation_prompt sent true, or with a last
            message that is not the assistant's; chat_template_kwargs setting a name the renderer passes itself; a
            request template on a server that does not trust them, or one that is neither a name nor Jinja; tools
            with a tool_choice other than "none".
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
    kwargs = dict(req.chat_template_kwargs) if isinstance(req.chat_template_kwargs, dict) else req.chat_template_kwargs
    # vLLM passes chat_template_kwargs to apply_chat_template, so a "chat_template" there is the template (its
    # renderer lets the request's own chat_template field win over it)
    own, param = req.chat_template, "chat_template"
    theirs = kwargs.pop("chat_template", None) if isinstance(kwargs, dict) else None
    if own is None and theirs is not None:
        own, param = theirs, "chat_template_kwargs"
    try:
        kwargs = check_template_kwargs(kwargs, name="chat_template_kwargs")
    except ValueError as e:
        raise bad_request(str(e), "chat_template_kwargs") from None
    if own is not None and not templates.trust_request:
        raise bad_request(f"{param}: a request's own chat template is refused: the server must be started with "
                          f"{TRUST_FLAG} to take one", param)
    tools = _tools(req)
    chosen = own if own is not None else templates.default
    try:
        plain = resolve_chat_template(tokenizer, chosen, tools=tools) is None
    except ValueError as e:
        raise bad_request(str(e), param) from None
    for field, value in (("tools", tools), ("documents", req.documents)):
        if plain and value is not None:  # the plain lines would drop them without a word
            how = "send chat_template" if templates.trust_request else "start the server with --chat-template"
            raise bad_request(f"{field} need a chat template that reads them; this model's tokenizer has none ({how})",
                              field)
    return {"add_generation_prompt": add, "continue_final_message": cont, "template_kwargs": kwargs,
            "chat_template": chosen, "tools": tools, "documents": req.documents, "plain": plain,
            "own_template": own is not None}


def _tools(req: ChatRequest | TokenizeRequest) -> list[dict] | None:
    """The tools for the template, as sent; an empty list is none (clients send [] with every request). As vLLM
    without a tool-call parser: tool_choice left out means "auto", which needs one, so only "none" is taken."""
    choice = getattr(req, "tool_choice", "none")
    if choice is None and not req.tools:
        choice = "none"
    if choice != "none":  # also without tools, where vLLM refuses any other choice too
        shown = "left out (vLLM's \"auto\")" if choice is None else f"{choice!r:.60}"
        raise bad_request(f"tool_choice {shown} is not supported by this server: it does not parse replies into "
                          "tool_calls; send tool_choice \"none\" to show the tools to the template and get the reply "
                          "as plain text", "tool_choice")
    return [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None


def render(tokenizer, messages: list[ChatMessage], *, plain: bool = False, own_template: bool = False,
           **options) -> str:
    """The prompt text for `messages`; `options` are render_chat's (by default: ending with the assistant's cue).
    own_template: the request's own template (its size or time limit names chat_template); plain: template_options' (no
    Jinja template). Every template renders bounded in size (data.template_sandbox) and within RENDER_SECONDS.

    Raises:
        APIError: 400 (param "messages") when the template refuses the conversation (e.g. roles must alternate) or
            cannot continue its final message; (param messages[i]...) tool calls with the plain lines, or arguments
            that are not JSON; (param "chat_template") a request's template past RENDER_SECONDS or the size limits.
    """
    if plain and (i := next((i for i, m in enumerate(messages) if m.tool_calls), None)) is not None:
        # the plain `role: content` lines have no place for a call: dropping it would show the model a turn it skipped
        raise bad_request(f"messages[{i}].tool_calls need a chat template that reads them; this model has none (give "
                          "chat_template)", f"messages[{i}].tool_calls")
    try:
        return render_chat(tokenizer, message_dicts(messages), max_seconds=RENDER_SECONDS, **options)
    except (TemplateTooSlow, TemplateTooLarge) as e:  # the request's own template, or the model's
        raise bad_request(str(e), "chat_template" if own_template else "messages") from None
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


def reply_stops(options: dict) -> list[str]:
    """Stop strings the template used (template_options' `plain`) implies: the plain `role: content` lines' next
    `user:` line (a model that learnt that format goes on to write the user's turn; `neurallayers chat` stops there
    too); none for a Jinja template, whose turns end with a token the model emits (eos)."""
    return [DEFAULT_STOP] if options["plain"] else []
