"""What the playground does, without Gradio: read the controls into a GenerationConfig, stream text, and draw
attention weights as heatmaps. Bad input raises ValueError with a message for the user (app.py shows it)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neurallayers.checks import is_finite, is_int
from neurallayers.generation import GenerationConfig, stream
from neurallayers.nn.modes import eval_mode

ATTENTION_MAX_TOKENS = 64  # more makes the heatmaps unreadable (and the figure slow to draw)
ALL_LAYERS = "all"
MAX_SEED = 2**63 - 1  # the server's limit; a larger seed failed in torch as 'Overflow when unpacking long long'


def parse_stops(text: str | None) -> list[str]:
    """Stop strings from a text box: one per line; the escapes \\n and \\t stand for a newline and a tab."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise ValueError(f"Stop strings must be text (one per line), got {type(text).__name__}")
    # split at newlines only: str.splitlines() also cut a stop string at \x1c, \x85 or U+2028 (a model's output
    # may hold them), so the UI stopped earlier than `generate --stop` with the same string
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line.replace("\\n", "\n").replace("\\t", "\t") for line in lines if line]


def _number(name: str, value: Any, *, integer: bool = False) -> float | int:
    if integer and is_int(value):  # a seed past float's range is named by its own range check
        return value
    if not is_finite(value):  # an int past float's range too (math.isfinite raised OverflowError)
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer:
        if value != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def sampling_config(*, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, min_p: Any,
                    repetition_penalty: Any, seed: Any, stop: str | None) -> GenerationConfig:
    """The playground's controls as a GenerationConfig. Seed -1 (or empty) draws a random one.

    Raises:
        ValueError: a value out of range, naming the control.
    """
    seed = None if seed is None or seed == "" else _number("Seed", seed, integer=True)
    if seed is not None and seed < -1:
        raise ValueError(f"Seed must be -1 (random) or a number >= 0, got {seed}")
    if seed is not None and seed > MAX_SEED:
        raise ValueError(f"Seed must be at most {MAX_SEED}, got {seed}")
    values = {"max_new_tokens": _number("Max new tokens", max_new_tokens, integer=True),
              "temperature": _number("Temperature", temperature), "top_k": _number("Top-k", top_k, integer=True),
              "top_p": _number("Top-p", top_p), "min_p": _number("Min-p", min_p),
              "repetition_penalty": _number("Repetition penalty", repetition_penalty),
              "seed": None if seed in (None, -1) else seed, "stop": parse_stops(stop)}
    try:
        return GenerationConfig(**values)
    except ValueError as e:
        raise ValueError(str(e).removeprefix("GenerationConfig.")) from None


def _prompt_ids(model: nn.Module, tokenizer, prompt: Any) -> list[int]:
    if not isinstance(prompt, str):  # an API caller's value: Gradio's own checks are skipped (preprocess=False)
        raise ValueError(f"The prompt must be text, got {type(prompt).__name__}")
    if not prompt:  # only "", as `generate` refuses: a newline or a space is a prompt ("\n" starts a fresh line)
        raise ValueError("The prompt is empty: type some text first")
    ids = tokenizer.encode(prompt, add_special_tokens=True)  # as generate() encodes it
    _check_fits(model, ids)
    return ids


def _check_fits(model: nn.Module, ids: list[int]) -> None:
    block = model.config.block_size
    if len(ids) > block:
        raise ValueError(f"The prompt has {len(ids)} tokens but the model's context length is {block}: shorten it")


def stream_text(model: nn.Module, tokenizer, prompt: str, config: GenerationConfig) -> Iterator[tuple[str, str]]:
    """(text so far, status line) after every token that adds text, and once more at the end with the count of
    tokens, the finish reason and the speed.

    Raises:
        ValueError: an empty prompt, or one longer than the model's context.
    """
    if not model.config.causal:
        raise ValueError("This is an encoder model: it does not generate text (the Attention tab works)")
    ids = _prompt_ids(model, tokenizer, prompt)
    block = model.config.block_size
    if config.max_new_tokens > block:  # the slider's limit, for API callers (it used to be Gradio's bare "Value ...")
        raise ValueError(f"Max new tokens must be at most {block} (the model's context length), "
                         f"got {config.max_new_tokens}")
    text, n, start = "", 0, time.perf_counter()
    for event in stream(model, tokenizer, ids, config):
        text += event.text
        if event.token_id is not None:
            n += 1
        if event.finish_reason is not None:
            yield text, finished_status(n, time.perf_counter() - start, event.finish_reason, config.max_new_tokens,
                                        block)
        elif event.text:
            yield text, f"generating... {n} tokens"


def finished_status(n: int, seconds: float, reason: str, max_new_tokens: int, block: int) -> str:
    """The status line of a stream that ended: its tokens, time and speed, and what ended it."""
    return (f"{n} tokens in {seconds:.2f} s ({n / max(seconds, 1e-9):.1f} tokens/s); "
            f"stopped by {_why(reason, n, max_new_tokens, block)}")


def stopped_status(status: str | None, button: str = "Stop") -> str:
    """The status line once the Stop (or Clear) button cancelled a stream (between two tokens): its last line said
    "generating... N tokens" for ever. A stream that had already ended keeps its final line."""
    return (status or "").replace("generating...", f"stopped ({button} pressed) after", 1)


def failed_status(status: str, error: BaseException) -> str:
    """The status line of a stream that failed midway (a GPU out of memory): "failed after N tokens: " and the error's
    first line, the characters markdown, HTML or LaTeX would read backslash-escaped (the status line is markdown)."""
    message = f"{type(error).__name__}: {error}".splitlines()[0]
    return status.replace("generating...", "failed after", 1) + ": " + re.sub(r"([\\`*_\[\]<>#|~$&])", r"\\\1", message)


@dataclass
class StreamRecord:
    """What one browser session's latest stream has produced, kept on the server (a gr.State), so that the
    step after a cancelled stream can show its text and a stopped status line: Stop's own reply raced the
    stream's updates still on their way and lost 1 time in 7 ("generating... N tokens" for good).

    Stop also tells the record itself (stop()): Gradio's cancel is a separate request, late on a loaded machine or
    lost, and a stream it never reached ran to its end. The stream then ends at its next update with one more: the
    text so far and the stopped status. Gradio's message that closes a stream repeats the stream's last update, and
    the page applies it even to a stream it cancelled: this one, not an update from before Stop."""

    text: Any = ""
    status: str = ""
    cut: bool = False  # closed before its final line: cancelled by Stop (or a closed tab)
    stop_pressed: bool = False  # Stop came while it streamed

    def follow(self, updates: Generator[tuple[Any, str], None, None]) -> Iterator[tuple[Any, str]]:
        """Pass the (text, status) updates of stream_text on, recording each."""
        self.text, self.status, self.cut, self.stop_pressed = "", "", False, False
        try:
            for update in updates:
                if self._halted:
                    break
                self.text, self.status = update
                yield update
            if self._halted:  # before its next update, or as its last was on its way
                updates.close()  # the model's stream, now
                self.cut = True
                yield self._last_update()
        except GeneratorExit:  # Gradio closes a cancelled stream's generator between two tokens
            self.cut = True
            updates.close()  # the model's stream with it, now
            raise
        except Exception as e:  # the page's status said "generating... N tokens" for good, the error in a toast
            if self.status.startswith("generating..."):  # not a refusal before the first update: the last one shown
                self.text, self.status = self._cut_text(), failed_status(self.status, e)
                yield self.text, self.status
            raise

    def stop(self) -> None:
        """Stop pressed: a stream going on ends before its next update (the next stream starts afresh)."""
        self.stop_pressed = True

    @property
    def _halted(self) -> bool:
        return self.stop_pressed

    def _last_update(self) -> tuple[Any, str]:
        return self._cut_text(), stopped_status(self.status)

    def _cut_text(self) -> Any:
        """The text of a stream cut short (by Stop, a cancel or a failure), as the page is to keep it."""
        return self.text

    def after_stop(self) -> tuple[Any, str] | None:
        """(text, stopped status) once, after the stream was cut; None when it ended by itself or failed."""
        if not self.cut:
            return None
        self.cut = False
        return self._last_update()


def _why(reason: str, n: int, max_new_tokens: int, block: int) -> str:
    if reason == "length" and n < max_new_tokens:  # generate() stops at a full context rather than refuse
        return f"the context length ({block} tokens, prompt included)"
    return {"stop": "a stop token or string", "length": "the token limit"}.get(reason, reason)


@torch.inference_mode()
def attention_maps(model: nn.Module, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """Token labels and attention weights (n_layer, n_head, T, T), float32 on the CPU, of one text.

    A decoder sees the text's tokens; an encoder sees them with its special tokens ([CLS] ... [SEP]).

    Raises:
        ValueError: an empty text or more than ATTENTION_MAX_TOKENS tokens.
    """
    device = next(model.parameters()).device
    if model.config.causal:
        ids = _prompt_ids(model, tokenizer, text)
        forward, inputs = model, {"input_ids": torch.tensor([ids], device=device)}
    else:
        from neurallayers.embeddings import tokenize_batch
        from neurallayers.models.encoder import base_encoder

        if not isinstance(text, str) or not text.strip():
            raise ValueError("The prompt is empty: type some text first")
        # not cut at the context: the heatmaps of the text's first tokens showed as if they were the whole text's
        batch = tokenize_batch(tokenizer, [text])
        ids = batch["input_ids"][0].tolist()
        _check_fits(model, ids)
        forward = base_encoder(model)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "token_type_ids" or forward.wtt is not None}
    if len(ids) > ATTENTION_MAX_TOKENS:
        raise ValueError(f"The attention view takes up to {ATTENTION_MAX_TOKENS} tokens; this text has {len(ids)}")
    with eval_mode(model):  # a model mid-training: its attention dropout zeroed and rescaled the weights shown
        out = forward(**inputs, output_attentions=True)
    maps = torch.stack([a[0].float().cpu() for a in out.attentions])  # (L, H, T, T)
    return _token_labels(tokenizer, ids), maps


def _token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text. A byte-level token that holds only part of a character decodes alone to U+FFFD ("café 🎉"
    was labelled c a f � � and four more �): it gets the characters it completes instead, "" before the last piece."""
    labels = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=False)

    def settled(n: int) -> int:  # the characters of the text the first n tokens decode to as they stay in it
        # (not a strip of every trailing U+FFFD: one the text holds itself went from every label, "a\ufffdb" read a, b)
        return len(os.path.commonprefix([tokenizer.decode(ids[:n], skip_special_tokens=False), text]))

    for k, label in enumerate(labels):
        if "\ufffd" in label:
            start = settled(k)
            labels[k] = text[start:max(start, settled(k + 1))]
    return labels


def layer_choices(n_layer: int) -> list[str]:
    """The layer selector's options: every layer at once, or one of them."""
    return [ALL_LAYERS, *(str(i) for i in range(n_layer))]


def attention_figure(labels: list[str], maps: torch.Tensor, layer: str = ALL_LAYERS):
    """A matplotlib Figure of heatmaps: one row per layer (or just `layer`), one column per head; query tokens
    down, key tokens across. Token labels are drawn for a short text on a small grid."""
    from matplotlib.figure import Figure

    n_layer, n_head, t, _ = maps.shape
    if layer not in layer_choices(n_layer):
        raise ValueError(f"Layer must be one of {', '.join(layer_choices(n_layer))}, got {layer!r}")
    layers = list(range(n_layer)) if layer == ALL_LAYERS else [int(layer)]
    rows, cols = len(layers), n_head
    cell = max(1.3, min(3.0, 18 / max(rows, cols)))  # inches per heatmap: big grids get small cells
    fig = Figure(figsize=(cols * cell + 1.2, rows * cell + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    show_tokens = t <= 24 and rows * cols <= 16
    shown = [s or "''" for s in _drawable([repr(s)[1:-1] for s in labels])]  # spaces, newlines, empty pieces visible
    image = None
    for r, li in enumerate(layers):
        for h in range(n_head):
            ax = axes[r][h]
            image = ax.imshow(maps[li, h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {li} · head {h}", fontsize=8)
            if show_tokens:  # labels on the bottom row and the left column only
                ax.set_xticks(range(t), shown if r == rows - 1 else [], rotation=90, fontsize=7, parse_math=False)
                ax.set_yticks(range(t), shown if h == 0 else [], fontsize=7, parse_math=False)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.supxlabel("key (token attended to)", fontsize=9)
    fig.supylabel("query (token attending)", fontsize=9)
    return fig


def _drawable(labels: list[str]) -> list[str]:
    """The labels with the characters matplotlib's font has no glyph for (an emoji, CJK in DejaVu Sans) as escapes
    (\\U0001f389): they were drawn as empty boxes, with a "Glyph missing" warning in the server log. The font is
    looked up once for all of them."""
    from matplotlib.font_manager import FontProperties, findfont, get_font

    font = get_font(findfont(FontProperties()))
    return ["".join(c if font.get_char_index(ord(c)) else ascii(c)[1:-1] for c in label) for label in labels]
