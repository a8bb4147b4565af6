"""What the playground's Chat tab does, without Gradio: a conversation rendered with the chat template (a system
prompt first, when one is given), the reply streamed, as `neurallayers chat` does it. Bad input raises ValueError with a
message for the user (app.py shows it)."""

from __future__ import annotations

import copy
import html
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from neurallayers.cli.chat import dropped_note, window_conversation
from neurallayers.data.chat import DEFAULT_STOP, chat_template_names, resolve_chat_template
from neurallayers.generation import GenerationConfig, stream
from neurallayers.generation.generate import _row_seed
from neurallayers.ui.logic import StreamRecord, finished_status, stopped_status

ROLES = ("user", "assistant")


def chat_history(value: Any, *, page: bool = False) -> list[dict]:
    """The Chatbot's value as messages {"role", "content": str}: the browser sends each content as a list of text
    parts ({"type": "text", "text": ...}); an API caller may send plain strings. `page`: the value the page holds,
    its text escaped (for_page), read back as it was written.

    Raises:
        ValueError: not a list of user and assistant messages with text content.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"The chat history must be a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(content, str):
            raise ValueError(f"The chat history's message {i} must be {{\"role\": \"user\" or \"assistant\", "
                             f"\"content\": text}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": html.unescape(content) if page else content})
    return out


def shown(messages: list[dict]) -> list[dict]:
    """Messages as the Chatbot is given them: each content as one text part, which it shows as it is (a plain string
    went through inspect.cleandoc: its indentation and blank edge lines were lost, and the next turn's prompt with
    them)."""
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]


def for_page(updates: Iterable[tuple[list[dict], str]]) -> Iterator[tuple[list[dict], str]]:
    """stream_chat's updates with every text's &, < and > as entities, for the page's Chatbot. It puts a message into
    the page as HTML (sanitized, rendered even with render_markdown=False): a model's "<b>x</b>" showed a bold x, its
    "<script>...</script>" nothing at all. The API route keeps the text as it is; chat_history(page=True) reads it
    back exactly."""
    for messages, status in updates:
        yield [{**m, "content": [{**p, "text": html.escape(p["text"], quote=False)} for p in m["content"]]}
               for m in messages], status


def chat_messages(history: list[dict], message: Any, system: Any) -> list[dict]:
    """The conversation the template renders: the system prompt (unless blank), the history, the new message.

    Raises:
        ValueError: a message that is empty or not text, a system prompt that is not text.
    """
    if not isinstance(message, str):
        raise ValueError(f"The message must be text, got {type(message).__name__}")
    if not message.strip():  # `neurallayers chat` skips a blank line too
        raise ValueError("The message is empty: type a message first")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"The system prompt must be text, got {type(system).__name__}")
    opening = [{"role": "system", "content": system}] if system and system.strip() else []
    return [*opening, *history, {"role": "user", "content": message}]


def check_template(tokenizer, template: Any) -> str | None:
    """The Chat template control's value: one of the tokenizer's template names, or None (its default; also "",
    the control's value where the tokenizer has none to choose from).

    Raises:
        ValueError: another value, listing the names.
    """
    names = chat_template_names(tokenizer)
    if template is None or template == "":
        return None
    if template in names:
        return template
    listed = ", ".join(names) if names else "none: leave it empty"
    raise ValueError(f"Chat template must be one of the tokenizer's templates ({listed}), got {template!r:.80}")


def stream_chat(model: nn.Module, tokenizer, history: list[dict], message: str, config: GenerationConfig, *,
                system: str | None = None, template: str | None = None) -> Iterator[tuple[list[dict], str]]:
    """(the Chatbot's messages, status line): the history with the new message first, then with the reply so far
    after every token that adds text, and once more at the end with the count of tokens, the finish reason and the
    speed. The reply is what `neurallayers chat` gives for the same messages and settings: leading blanks dropped,
    trimmed at the end, a seed made from the seed and the turn (the number of replies before it), the default
    template's replies ending at the next `user:` line, the oldest turns left out of a conversation that outgrows
    the context (the status lines say so).

    Raises:
        ValueError: a bad message, system prompt or template name; a conversation the template refuses; a message
            that alone (with the system prompt) fills the model's context.
    """
    if not model.config.causal:
        raise ValueError("This is an encoder model: it does not chat (the Attention tab works)")
    template = check_template(tokenizer, template)
    messages = chat_messages(history, message, system)
    block = model.config.block_size
    if config.max_new_tokens > block:
        raise ValueError(f"Max new tokens must be at most {block} (the model's context length), "
                         f"got {config.max_new_tokens}")
    ids, dropped = _prompt(tokenizer, messages, block, config.max_new_tokens, template)
    if resolve_chat_template(tokenizer, template) is None:  # the plain lines: the model goes on with the user's turn
        config = config.replace(stop=[*config.stop, DEFAULT_STOP])
    if config.seed is not None:
        config = config.replace(seed=_row_seed(config.seed, sum(m["role"] == "assistant" for m in history)))
    turns = [*history, messages[-1]]
    note = f"; {dropped_note(dropped, block)}" if dropped else ""  # the chat shows them all, the model does not
    yield shown(turns), f"generating... 0 tokens{note}"
    text, n, start = "", 0, time.perf_counter()
    for event in stream(model, tokenizer, ids, config):
        text += event.text
        n += event.token_id is not None
        if event.finish_reason is not None:
            status = finished_status(n, time.perf_counter() - start, event.finish_reason, config.max_new_tokens,
                                     block)
            yield shown([*turns, {"role": "assistant", "content": text.strip()}]), status + note
        elif event.text:
            yield shown([*turns, {"role": "assistant", "content": text.lstrip()}]), f"generating... {n} tokens{note}"


def _prompt(tokenizer, messages: list[dict], block: int, max_new_tokens: int, template: str | None):
    """(prompt ids, turns dropped): the conversation's oldest turns (after the system prompt) are left out until a
    reply has room, as `neurallayers chat` leaves them (a small model's chat said "press Clear" after a few turns).

    Raises:
        ValueError: the newest message (with the system prompt) alone fills the context.
    """
    keep = int(messages[0]["role"] == "system")
    ids, _, dropped = window_conversation(tokenizer, messages, block, max_new_tokens, keep=keep,
                                          chat_template=template)
    if len(ids) >= block:
        raise ValueError(f"The conversation has {len(ids)} tokens and the model's context length is {block}: shorten "
                         "the message" + (" or the system prompt" if keep else ""))
    return ids, dropped


@dataclass
class ChatRecord(StreamRecord):
    """The Chat tab's StreamRecord, with Clear. Clear's reply raced the streaming reply: Gradio's cancel of the
    stream is a separate request, late on a loaded machine (or lost), and the updates sent meanwhile, or the whole
    reply when it ended first, put the conversation back after Clear's empty chat. So Clear stops the stream itself
    before its next update, whose last update is then the empty chat (Gradio's message that closes the stream
    repeats it, and the page applies it after the steps that followed Clear: the conversation came back for a
    moment), and the steps after the stream and after Clear give the empty chat again: each comes after the
    updates sent before it, on the session's one message stream.

    The browser runs the step after a cancelled stream as soon as its /cancel request returns, failed or not, while
    the server may still be sending the stream's update of the moment; and it takes the next message at once, with
    the chat it holds then. So the steps after Clear wait for the stream to end (its last update sent first), and
    the first turn after Clear starts from the system prompt alone whatever chat the page sent (history)."""

    CLEAR_WAIT_S = 30.0  # the longest a step after Clear waits for the stream's next update, where it ends

    cleared: bool = False  # Clear came during the latest turn
    turn: int = 0  # turns started: Clear's later step leaves a turn started after it alone
    cleared_turn: int = -1
    cut_by_clear: bool = False  # Clear came while the latest turn streamed

    def __post_init__(self):
        self.idle = threading.Event()  # set while no turn streams; not a field: Gradio deep-copies the fields
        self.idle.set()

    def __deepcopy__(self, memo):  # gr.State copies the first value for each session: a new Event (a lock) each
        return replace(self, **{f.name: copy.deepcopy(getattr(self, f.name), memo) for f in fields(self)})

    @property
    def streaming(self) -> bool:
        return not self.idle.is_set()

    @property
    def _cleared_latest(self) -> bool:
        """Clear came during the latest turn, and no turn has started since."""
        return self.cleared and self.turn == self.cleared_turn

    def history(self, history: list[dict]) -> list[dict]:
        """The history a new turn from the page starts from: none after Clear, whatever the page sent (an update of
        the stream cut by Clear may have put the old chat back there after Clear's reply)."""
        return [] if self._cleared_latest else history

    def follow(self, updates):
        self.cleared, self.cut_by_clear = False, False
        self.turn += 1
        self.idle.clear()
        try:
            yield from super().follow(updates)
        finally:  # a Clear, Stop or Gradio's cancel: the model's stream closed now (StreamRecord.follow)
            self.idle.set()

    @property
    def _halted(self) -> bool:
        return self.cleared or self.stop_pressed

    def _last_update(self) -> tuple[Any, str]:
        if self.cleared:  # the empty chat, and a stopped status where Clear cut a reply
            return [], stopped_status(self.status, "Clear") if self.cut_by_clear else ""
        return super()._last_update()

    def _cut_text(self) -> Any:
        """A reply cut before its first token ends the chat all the same, empty, as `neurallayers chat` records a
        reply cut by Ctrl-C: the user's message left alone made the next one a second user turn in a row, which
        templates whose roles alternate (Mistral's, Llama 2's) refused until Clear."""
        chat = self.text
        if chat and chat[-1]["role"] == "user":
            return [*chat, *shown([{"role": "assistant", "content": ""}])]
        return chat

    def clear(self) -> tuple[list, str | None]:
        """Clear pressed: the empty chat and its status, None (left as it is) while a reply streams: the step
        after the stream says it stopped, once it has."""
        # a reply streams, or Gradio's cancel has just cut it (the step after it is still to come)
        self.cleared, self.cleared_turn, self.cut_by_clear = True, self.turn, self.streaming or self.cut
        return self._cleared()

    def after_clear(self) -> tuple[list, str | None] | None:
        """Clear's step after its reply: the empty chat again (an update of the stream sent before Clear may have
        come after its reply), unless a new turn has started since. Once the stream cut by Clear has ended."""
        self._wait_for_clear()
        return self._cleared() if self._cleared_latest else None

    def _wait_for_clear(self) -> None:
        """Until a stream that Clear stops has ended: it does at its next update, sent before the step's reply."""
        if self._cleared_latest:
            self.idle.wait(self.CLEAR_WAIT_S)

    def _cleared(self) -> tuple[list, str | None]:
        return [], None if self.cut_by_clear else ""

    def after_stop(self) -> tuple[Any, str] | None:
        self._wait_for_clear()
        if self.cleared:  # Clear ended the stream, or Gradio's cancel did, or it ended by itself meanwhile
            self.cut = False
            return self._last_update()
        return super().after_stop()
