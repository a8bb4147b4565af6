"""The Gradio app of `neurallayers ui`: a Generate tab (prompt, sampling controls, streamed output), a Chat tab (a
system prompt, the conversation through the chat template, replies streamed, Clear to start over) and an Attention
tab (heatmaps of the attention weights per layer and head). Gradio is an optional extra (`ui`), imported inside the
functions that need it; the work itself lives in logic.py and chat.py.
"""

from __future__ import annotations

import contextlib
import os
import time

from torch import nn

from neurallayers.cli.common import url_host
from neurallayers.data.chat import chat_template_names
from neurallayers.ui.chat import ChatRecord, chat_history, for_page, stream_chat
from neurallayers.ui.logic import (
    ALL_LAYERS,
    StreamRecord,
    attention_figure,
    attention_maps,
    layer_choices,
    sampling_config,
    stream_text,
)

# The events that run the model share one queue: Gradio limits each event on its own, so an attention request ran
# beside a generation (two forwards at once on the CPU's cores)
MODEL_QUEUE = "model"
# A server that stops answering (stopped, killed) mid-stream: the status said "generating... N tokens" for good.
# Gradio runs no step of the page's own when its stream breaks: only a .failure() step where the server said goodbye
# first, none where the connection just broke (a killed process; now and then a stopped one), and a .failure()
# step also ran on every Stop, writing back the status it read before. So the page asks the server itself, once a
# second while a status says "generating...", and says it on that line once it does not answer.
GONE_JS = """() => {
  setInterval(async () => {
    const live = ["#status", "#chat-status"].map(s => document.querySelector(s))
      .filter(e => e && /^generating\\.\\.\\. /.test(e.innerText.trim()));
    if (!live.length) return;
    try { await fetch(window.location.href, {method: "HEAD", cache: "no-store"}); return; } catch (e) {}
    for (const e of live) {
      const n = /^generating\\.\\.\\. (\\d+) tokens/.exec(e.innerText.trim());
      (e.querySelector(".md") || e).textContent = (n ? `cut off after ${n[1]} tokens: ` : "") +
        "the server stopped answering (start neurallayers ui again, then reload the page)";
    }
  }, 1000);
}"""
# The Chatbot's messages keep their spaces, indentation and blank lines, as the Output box does. A failed event's
# "Error" overlay hid the text so far and covered the status line that says what failed (a refusal has its toast)
CSS = """#chatbot .message-content span.md { white-space: pre-wrap; }
:is(#output, #status, #chatbot, #chat-status) .wrap:has(span.error) { display: none; }"""
# the sampling controls' order, as the API routes take them after their own inputs
SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop")


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # it phones home unless told not to
    try:
        import gradio as gr
    except ModuleNotFoundError as e:
        raise ImportError("the web playground needs Gradio: pip install 'neurallayers[ui]'") from e
    return gr


def _summary(model: nn.Module, name: str | None) -> str:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    kind = "decoder" if cfg.causal else "encoder"
    head = f"**{name}** · " if name else ""
    return (f"{head}{kind}, {params / 1e6:.2f}M parameters, {cfg.n_layer} layers × {cfg.n_head} heads, "
            f"context {cfg.block_size} tokens, vocabulary {cfg.vocab_size}")


def _slider(gr, defaults: dict, key: str, default: float, low: float, high: float, step: float, label: str):
    """A slider starting at the folder's value: its range widened to hold it (a slider refuses a value outside
    its range, and clamping top_k=1000 to 200 gave other text than `neurallayers generate` at the same settings)."""
    value = defaults.get(key, default)
    return gr.Slider(min(low, value), max(high, value), value=value, step=step, label=label)


def _sampling_controls(gr, cfg, defaults: dict) -> list:
    """Sliders and boxes for SAMPLING, in that order, starting at the folder's values."""
    return [
        gr.Slider(1, cfg.block_size, value=min(128, cfg.block_size), step=1, label="Max new tokens"),
        _slider(gr, defaults, "temperature", 0.8, 0, 2, 0.05, "Temperature (0 = greedy)"),
        _slider(gr, defaults, "top_k", 0, 0, min(cfg.vocab_size, 200), 1, "Top-k (0 = off)"),
        _slider(gr, defaults, "top_p", 1.0, 0.01, 1, 0.01, "Top-p (1 = off)"),
        _slider(gr, defaults, "min_p", 0.0, 0, 1, 0.01, "Min-p (0 = off)"),
        _slider(gr, defaults, "repetition_penalty", 1.0, 0.5, 2, 0.05, "Repetition penalty (1 = off)"),
        gr.Number(value=-1, precision=0, label="Seed (-1 = random)"),
        gr.Textbox(value="", label="Stop strings", lines=2,  # "": API callers may omit it
                   placeholder="one per line; \\n means a newline"),
    ]


def build_app(model: nn.Module, tokenizer, *, name: str | None = None, title: str = "NeuralLayers playground",
              defaults: dict | None = None):
    """A gradio.Blocks playground for one model.

    Args:
        model: a DecoderLM (both tabs) or an encoder (the Attention tab only), in eval mode.
        tokenizer: its tokenizer.
        name: shown above the tabs (e.g. the model folder's name).
        title: the page title.
        defaults: the sampling settings the controls start at (api.generation_defaults: the model folder's
            generation_config.json), as `neurallayers generate` and the server use them for knobs left unset.

    Returns:
        The gradio.Blocks app; its API routes are /generate (streams the text), /chat (streams the conversation
        with the reply) and /attention (a figure).
    """
    gr = _gradio()
    cfg = model.config
    defaults = defaults or {}

    def generate_fn(prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop,
                    record):
        try:
            config = sampling_config(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed,
                                     stop=stop)
            yield from record.follow(stream_text(model, tokenizer, prompt, config))
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None  # the user's mistake: no server traceback

    def after_fn(record):
        shown = record.after_stop()
        return shown if shown is not None else (gr.skip(), gr.skip())

    def chat_turn(message, history, system, template, values, record, *, page: bool):
        try:
            config = sampling_config(**dict(zip(SAMPLING, values, strict=True)))
            history = chat_history(history, page=page)
            updates = stream_chat(model, tokenizer, record.history(history) if page else history, message, config,
                                  system=system, template=template)
            yield from record.follow(for_page(updates) if page else updates)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def chat_fn(message, history, system, template, *args):  # the /chat API route: the text as it is
        *values, record = args
        yield from chat_turn(message, history, system, template, values, record, page=False)

    def page_chat_fn(message, history, system, template, *args):  # the page: its text escaped (chat.for_page)
        *values, record = args
        # The message box empties with the turn's first update, so a message stays in it unless it was taken: one
        # the chat refuses, or one sent while a reply streams (Gradio runs one turn at a time and drops the other;
        # emptied in the browser on Enter, it was lost)
        box, turn = "", chat_turn(message, history, system, template, values, record, page=True)
        with contextlib.closing(turn):  # a Stop closes this generator: the turn's with it, now (StreamRecord.follow)
            for chat, status in turn:
                yield chat, status, box
                box = gr.skip()

    def stop_fn(record):  # a stream going on ends before its next update, saying it stopped
        record.stop()

    def clear_fn(record):  # a reply streaming now stops before its next update (ChatRecord)
        chat, status = record.clear()
        return chat, gr.skip() if status is None else status

    def after_clear_fn(record):
        shown = record.after_clear()
        if shown is None:
            return gr.skip(), gr.skip()
        return shown[0], gr.skip() if shown[1] is None else shown[1]

    def attention_fn(text, layer):
        try:
            labels, maps = attention_maps(model, tokenizer, text)
            return attention_figure(labels, maps, layer or ALL_LAYERS)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    choices = layer_choices(cfg.n_layer)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        recommended = ", ".join(f"{k}={v}" for k, v in defaults.items())
        gr.Markdown(f"## {title}\n{_summary(model, name)}"
                    + (f"\n\nThe controls start at the model's generation_config.json: {recommended}"
                       if recommended else ""))
        with gr.Tab("Generate"):
            if not cfg.causal:
                gr.Markdown("This is an encoder model: it does not generate text. The Attention tab works.")
            with gr.Row(visible=bool(cfg.causal)):
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", lines=5, elem_id="prompt",
                                        placeholder="Type a prompt, then Generate (or Shift+Enter)")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        halt = gr.Button("Stop", elem_id="stop")
                    output = gr.Textbox(label="Output", lines=10, interactive=False, elem_id="output")
                    status = gr.Markdown(label="Status", elem_id="status")
                with gr.Column(scale=2):
                    controls = _sampling_controls(gr, cfg, defaults)
            # preprocess=False: sampling_config checks the values and names the control (Gradio's checks said
            # "Value 1.5 is greater than maximum value 0.99." or "input component at index 2", with a traceback)
            record = gr.State(StreamRecord())  # per session, on the server; no API input
            # Shift+Enter too: a many-line box sends it as submit (Enter makes a new line); with no listener it was
            # swallowed, neither a new line nor a generation
            event = gr.on([go.click, prompt.submit], generate_fn, [prompt, *controls, record], [output, status],
                          api_name="generate", preprocess=False, concurrency_id=MODEL_QUEUE)
            # Stop tells the stream itself too (StreamRecord.stop): Gradio's cancel may come late, or never
            halt.click(stop_fn, record, None, cancels=[event], api_name=False, queue=False, show_progress="hidden")
            # The browser runs .then() steps of a cancelled event once /cancel has returned, i.e. once the server
            # closed the stream's generator; queued, its reply follows the stream's last updates on the session's
            # one message stream. A status sent by Stop itself could arrive before them and be overwritten.
            event.then(after_fn, record, [output, status], api_name=False, show_progress="hidden")
        with gr.Tab("Chat"):
            if not cfg.causal:
                gr.Markdown("This is an encoder model: it does not chat. The Attention tab works.")
            names = chat_template_names(tokenizer)
            with gr.Row(visible=bool(cfg.causal)):
                with gr.Column(scale=3):
                    system = gr.Textbox(value="", label="System prompt", lines=2, elem_id="chat-system",
                                        placeholder="Optional: instructions the chat template puts first")
                    # shown as text (chat.for_page): a model's output is not markdown, HTML or LaTeX ("$$x$$" was
                    # typeset) for the page. Its copy buttons would copy the escaped text: selecting copies it right
                    chatbot = gr.Chatbot(label="Conversation", height=360, elem_id="chatbot", render_markdown=False,
                                         latex_delimiters=[], buttons=[])
                    message = gr.Textbox(label="Message", placeholder="Type a message, then Enter or Send",
                                         elem_id="chat-message")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="chat-send")
                        chat_halt = gr.Button("Stop", elem_id="chat-stop")
                        clear = gr.Button("Clear", elem_id="chat-clear")
                    chat_status = gr.Markdown(elem_id="chat-status")
                with gr.Column(scale=2, elem_id="chat-controls"):
                    # shown where there is a choice (the tokenizer's named templates: tool_use, rag ...); a value
                    # always, so API callers may leave it out: "" where there is none to choose
                    template = gr.Dropdown(names or [("role: content lines", "")], value=names[0] if names else "",
                                           label="Chat template", visible=len(names) > 1)
                    chat_controls = _sampling_controls(gr, cfg, defaults)
            chat_record = gr.State(ChatRecord())
            sent = [send.click, message.submit]
            chat_inputs = [message, chatbot, system, template, *chat_controls, chat_record]
            chat_event = gr.on(sent, page_chat_fn, chat_inputs, [chatbot, chat_status, message], api_name=False,
                               preprocess=False, concurrency_id=MODEL_QUEUE, show_progress_on=[chatbot, chat_status])
            # the API route, with no trigger in the page: the same turn, its text not escaped
            gr.on([], chat_fn, chat_inputs, [chatbot, chat_status], api_name="chat", preprocess=False,
                  concurrency_id=MODEL_QUEUE)
            chat_halt.click(stop_fn, chat_record, None, cancels=[chat_event], api_name=False, queue=False,
                            show_progress="hidden")
            chat_event.then(after_fn, chat_record, [chatbot, chat_status], api_name=False, show_progress="hidden")
            # the Chatbot's own trash button too: alone it emptied the chat in the browser while a reply streamed on
            # queue=False: the chat empties at once. Its reply and the stream's updates come by separate ways, so
            # a step on the session's message stream, after them, empties it again
            cleared = gr.on([clear.click, chatbot.clear], clear_fn, chat_record, [chatbot, chat_status],
                            cancels=[chat_event], api_name=False, queue=False, show_progress="hidden")
            cleared.then(after_clear_fn, chat_record, [chatbot, chat_status], api_name=False, show_progress="hidden")
        with gr.Tab("Attention"):
            gr.Markdown("Attention weights of every head for one text (query tokens down, key tokens across).")
            with gr.Row():
                text = gr.Textbox(label="Text", lines=2, scale=4, elem_id="attention-text")
                layer = gr.Dropdown(choices, value=ALL_LAYERS if cfg.n_layer * cfg.n_head <= 64 else "0",
                                    label="Layer", scale=1)
            show = gr.Button("Show attention", variant="primary", elem_id="show-attention")
            plot = gr.Plot(label="Attention weights", format="png", elem_id="attention-plot")
            show.click(attention_fn, [text, layer], plot, api_name="attention", concurrency_id=MODEL_QUEUE)
    return app


def launch(app, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False) -> str:
    """Serve the app on host:port (local only by default), one generation at a time.

    Args:
        block: wait until the server stops; a Ctrl-C closes it and is raised. False returns at once, leaving it
            running in a thread.

    Returns:
        The local URL.
    """
    _gradio()
    app.queue(default_concurrency_limit=1)  # one model, one request at a time: no CPU oversubscription
    # quiet: Gradio's own lines tell a CLI user to "set `share=True` in `launch()`", which `neurallayers ui` cannot
    # an IPv6 address goes in brackets: Gradio puts the name as it is into the URL it checks ("http://::1:7860/"
    # failed in httpx with a traceback) and takes the brackets off to bind
    _, url, _ = app.launch(server_name=url_host(host), server_port=port, prevent_thread_lock=True, ssr_mode=False,
                           mcp_server=False, quiet=True, show_error=True, css=CSS, js=GONE_JS)
    if not quiet:
        print(f"* Running on {url} (Ctrl-C to stop)", flush=True)
    if block:
        _wait(app)
    return url


def _wait(app) -> None:
    """Until the server stops. A Ctrl-C closes it and goes on up (the CLI exits 130, as every verb does): Gradio's
    block_thread() swallowed it, printed "Keyboard interruption in main thread...", and the process exited 0."""
    try:
        while app.is_running:
            time.sleep(0.1)
    finally:
        app.close()
