"""`neurallayers chat`: a conversation with a model in the terminal, through its chat template, replies streamed.

Each turn renders the whole conversation with the tokenizer's chat template (or `role: content` lines then
`assistant:` when it has none, the reply ending where the model starts the next `user:` line). When the conversation
outgrows the model's context, the oldest turns are dropped (the system message stays). --chat-template picks another
of the tokenizer's templates by name (tool_use, rag ...), or gives one (a .jinja file or the Jinja text), as
transformers' apply_chat_template(chat_template=...) and vLLM's --chat-template do. --chat-template-kwargs gives the
template extra variables, as transformers' apply_chat_template and vLLM's chat_template_kwargs do (Qwen3's
'{"enable_thinking": false}').
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from neurallayers.cli.common import add_device_dtype, add_model_path, load_model
from neurallayers.cli.generate import add_sampling_arguments, check_vocab, generation_config, use_model_defaults

HINT = "type a message and press Enter; /reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops a reply"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_path(parser)
    parser.add_argument("--system", help="a system message that opens the conversation")
    parser.add_argument("--chat-template", metavar="NAME|FILE|JINJA",
                        help="the chat template: one of the tokenizer's by name (tool_use, rag ...), a "
                        ".jinja file, or the template's text (default: the tokenizer's own)")
    parser.add_argument("--chat-template-kwargs", type=_json_object, default=None, metavar="JSON",
                        help='extra variables for the chat template, a JSON object: \'{"enable_thinking": false}\'')
    parser.add_argument("--compile", action="store_true",
                        help="compile the one-token decode step first (15-60 s): faster replies on CPU")
    add_device_dtype(parser, compiles=True)
    add_sampling_arguments(parser, search=False, seed_help="sampling seed: each reply of a conversation samples "
                           "with a seed made from this one and its turn, so the same messages get the same replies; "
                           "/reset starts the turns over (unset: new draws)")


def _json_object(text: str) -> dict:
    from neurallayers.data.chat import check_template_kwargs

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    try:
        return check_template_kwargs(value, name="--chat-template-kwargs")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from neurallayers.data.chat import DEFAULT_STOP, resolve_chat_template
    from neurallayers.generation.generate import _row_seed

    use_model_defaults(args, args.path)
    config = generation_config(args)
    if args.chat_template is not None:  # a mistyped name fails before a large model loads
        _template_choice(args.chat_template, _tokenizer_before_model(args.path))
    model, tokenizer = load_model(args.path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    if not model.config.causal:
        raise ValueError(f"{args.path} is an encoder model: chat needs a decoder (encoders embed: neurallayers serve "
                         "... /v1/embeddings, or neurallayers.embed)")
    check_vocab(config, model)
    chosen = _template_choice(args.chat_template, tokenizer)
    if not resolve_chat_template(tokenizer, chosen):
        config = config.replace(stop=[*config.stop, DEFAULT_STOP])
    if args.compile:
        from neurallayers.generation.fast import prepare_for_decode

        prepare_for_decode(model)
        # the first step compiles: without a line the command sat silent for up to a minute (more on a busy machine)
        print("neurallayers chat: the first token compiles the decode step (15-60 s; a later run reads torch's "
              "cache)", file=sys.stderr, flush=True)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    extra = args.chat_template_kwargs
    _check_opening(tokenizer, opening, model.config.block_size, template_kwargs=extra, chat_template=chosen)
    interactive = sys.stdin.isatty()
    if interactive:
        _line_editing()
        print(HINT, file=sys.stderr)
    history = list(opening)
    replies = 0
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt) as e:
            if interactive:  # the shell's prompt on a line of its own, not after "> "
                print(file=sys.stderr)
            if isinstance(e, KeyboardInterrupt):  # as any interrupted command: status 130, not a finished chat's 0
                raise
            break
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = list(opening)
            replies = 0  # the seeds start over too: the same messages then get the first conversation's replies
            print("(a new conversation)", file=sys.stderr)
            continue
        if re.fullmatch(r"/\w+", line.strip()):  # a mistyped command ("/rest") went to the model as a message
            print(f"(unknown command {line.strip()}: /reset starts over, /exit leaves)", file=sys.stderr)
            continue
        before = list(history)
        history.append({"role": "user", "content": line})
        try:
            prompt, turn_config = fit_context(tokenizer, history, model.config.block_size, config, keep=len(opening),
                                              template_kwargs=extra, chat_template=chosen)
        except ValueError as e:  # the chat template refused the conversation: say so, keep talking
            history.pop()
            print(f"({e})", file=sys.stderr)
            continue
        if prompt is None:
            history.pop()
            print(f"(that message is too long for the model's context of {model.config.block_size} tokens)",
                  file=sys.stderr)
            continue
        if config.seed is not None:  # reproducible session, yet each reply draws its own random numbers
            turn_config = turn_config.replace(seed=_row_seed(config.seed, replies))
        replies += 1
        try:
            answer = reply(model, tokenizer, prompt, turn_config)
        except ValueError as e:  # decoding found no token it may choose (no_repeat_ngram_size): say so, keep talking
            history[:] = before  # with the turns fit_context dropped for this message's room
            sys.stdout.write("\n")
            print(f"({e})", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": answer})
    return 0


def _tokenizer_before_model(path: str):
    """The folder's tokenizer, read alone so that a mistyped --chat-template name fails before a large model loads;
    None where it is not there (a run's checkpoint folder): the name is checked once the model has loaded."""
    from neurallayers.api import resolve_model_path
    from neurallayers.data.tokenizers import Tokenizer

    try:
        return Tokenizer.load(resolve_model_path(path))
    except (OSError, ValueError):  # load_model names the folder's problem
        return None


def _template_choice(value: str | None, tokenizer) -> str | None:
    """--chat-template as render_chat takes it: a name of the tokenizer's templates or a template's text (a file's,
    for a path to a file). Where `tokenizer` is None only a file is read.

    Raises:
        ValueError: (one line) a file that cannot be read, or neither a name, a file nor Jinja text.
    """
    from neurallayers.data.chat import ChatTemplateSyntaxError, chat_template_names, resolve_chat_template

    if value is None:
        return None
    names = chat_template_names(tokenizer) if tokenizer is not None else []
    # vLLM's --chat-template takes a file; os.path.isfile, not Path.is_file: a long template's text raised
    # "File name too long"
    if value not in names and os.path.isfile(value):
        try:
            value = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--chat-template {value}: cannot read it ({e})") from None
    if tokenizer is not None:
        try:
            resolve_chat_template(tokenizer, value)
        except ChatTemplateSyntaxError as e:
            raise ValueError(str(e).replace("chat_template", "--chat-template", 1)) from None
        except ValueError:
            have = f"its templates: {', '.join(names)}" if names else "it has no templates"
            raise ValueError(f"--chat-template {value!r:.80} is not a template name of this tokenizer ({have}), a file "
                             "or a Jinja template") from None
    return value


def _line_editing() -> None:
    """Arrow keys, history and Ctrl-A/E for input(): without readline a left arrow put "^[[D" into the message."""
    try:
        import readline  # noqa: F401 - importing it is what turns line editing on
    except ImportError:  # Windows: the console edits lines itself
        pass


def _check_opening(tokenizer, opening: list[dict], block: int, *, template_kwargs: dict | None = None,
                   chat_template: str | None = None) -> None:
    """A --system message that leaves no room for a user's turn would make every message "too long": say so once."""
    from neurallayers.data.chat import render_chat

    if not opening:
        return
    def size(probe: str) -> int:
        chat = [*opening, {"role": "user", "content": probe}]
        return len(tokenizer.encode(render_chat(tokenizer, chat, template_kwargs=template_kwargs,
                                                chat_template=chat_template)))

    probe = ""
    try:
        n = size(probe)
    except ValueError:  # a template that refuses an empty turn: measure with a one-word one (a few tokens more)
        probe = "Hello"
        try:  # one that refuses a plain one too refuses the system message: it refused every message, exit 0
            n = size(probe)
        except ValueError as e:
            raise ValueError(f"--system: {e}; leave --system out for this model") from None
    if n >= block:
        with_probe = f" with a user message {probe!r}" if probe else ""
        raise ValueError(f"--system: the system message{with_probe} takes {n} tokens of the model's context of "
                         f"{block}, which leaves no room for a conversation; shorten it")


def fit_context(tokenizer, history: list[dict], block: int, config, *, keep: int,
                template_kwargs: dict | None = None, chat_template: str | None = None):
    """(prompt ids, config) for the conversation: its oldest turns after the first `keep` messages are dropped (in
    `history` too) as window_conversation drops them, the reply's max_new_tokens (and min_new_tokens) cut to the room
    left. (None, config) when the newest message alone fills the context; `history` then stays as it was, so refusing
    one message loses none of the conversation."""
    ids, kept, dropped = window_conversation(tokenizer, history, block, config.max_new_tokens, keep=keep,
                                             template_kwargs=template_kwargs, chat_template=chat_template)
    if len(ids) >= block:
        return None, config
    history[:] = kept
    if dropped:
        print(f"({dropped_note(dropped, block)})", file=sys.stderr)
    # the reply ends where the context is full, as generate ends an output there: a --min-new-tokens past the room
    # is cut with it (kept, it had every message refused as "min_new_tokens=150: must be in [0, max_new_tokens]")
    most = min(config.max_new_tokens, block - len(ids))
    return ids, config.replace(max_new_tokens=most, min_new_tokens=min(config.min_new_tokens, most))


def window_conversation(tokenizer, messages: list[dict], block: int, max_new_tokens: int, *, keep: int,
                        template_kwargs: dict | None = None, chat_template: str | None = None):
    """(prompt ids, the messages kept, turns dropped): the oldest turns after the first `keep` messages (a user message
    and its reply) are dropped until the rendered prompt leaves room for a reply of max_new_tokens, or of half the
    context where that is less (a max_new_tokens as long as the context would drop every earlier turn: a chat without
    memory). The reply may be cut shorter rather than lose the newest message, which may alone (after the first
    `keep`) fill the context: the ids then number block or more. The terminal chat and the playground's window so.
    """
    from neurallayers.data.chat import render_chat

    room = min(max_new_tokens, block // 2)
    kept, dropped = list(messages), 0
    while True:
        ids = tokenizer.encode(render_chat(tokenizer, kept, template_kwargs=template_kwargs,
                                           chat_template=chat_template))
        if len(ids) + room <= block or len(kept) <= keep + 1:
            break
        del kept[keep:keep + 2 if len(kept) > keep + 2 else keep + 1]  # a user message and its reply
        dropped += 1
    return ids, kept, dropped


def dropped_note(dropped: int, block: int) -> str:
    """Says that turns left the prompt: the terminal chat's stderr line, the playground's status line."""
    return f"the oldest {dropped} turn{'s' * (dropped > 1)} left the model's context of {block} tokens"


def reply(model, tokenizer, prompt: list[int], config) -> str:
    """Streams the reply to stdout (leading blanks dropped) and returns its text; Ctrl-C ends it early."""
    from neurallayers.generation import stream

    text = ""
    try:
        for event in stream(model, tokenizer, prompt, config):
            piece = event.text if text.strip() else event.text.lstrip()
            text += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" (stopped)")
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not text.strip():
        print("(the model ended its reply at once)", file=sys.stderr)
    return text.strip()
