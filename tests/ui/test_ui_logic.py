"""The playground's logic without a server: controls -> GenerationConfig, streamed text, attention heatmaps."""

from __future__ import annotations

import pytest
import torch
from nl_ui_helpers import failing_copy

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig, generate
from neurallayers.models.decoder import DecoderLM
from neurallayers.ui.logic import (
    ATTENTION_MAX_TOKENS,
    StreamRecord,
    attention_figure,
    attention_maps,
    parse_stops,
    sampling_config,
    stopped_status,
    stream_text,
)

CONTROLS = dict(max_new_tokens=20, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=-1,
                stop="")


def test_controls_become_a_generation_config():
    cfg = sampling_config(**{**CONTROLS, "max_new_tokens": 12.0, "top_k": 5, "seed": 7, "stop": "o\n\\n\n\\tx"})
    assert cfg == GenerationConfig(max_new_tokens=12, temperature=0.0, top_k=5, seed=7, stop=["o", "\n", "\tx"])
    assert sampling_config(**CONTROLS).seed is None and sampling_config(**{**CONTROLS, "seed": None}).seed is None
    assert parse_stops(None) == [] and parse_stops("a\n\nb") == ["a", "b"]


def test_stop_strings_split_at_newlines_only():
    """str.splitlines() cut "st\x1cZ" into the stops "st" and "Z" (also at \x85, U+2028 ...): the playground stopped
    where `generate --stop` with the same string went on."""
    assert parse_stops("st\x1cZ\nur\u2028Q\r\na\x85b\x0cc") == ["st\x1cZ", "ur\u2028Q", "a\x85b\x0cc"]


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": -2}, "Seed must be -1 \\(random\\) or a number >= 0, got -2"),
    ({"seed": 2**64}, "Seed must be at most 9223372036854775807, got 18446744073709551616"),
    ({"max_new_tokens": 2.5}, "Max new tokens must be a whole number, got 2.5"),
    ({"max_new_tokens": 0}, "max_new_tokens=0: must be >= 1"),
    ({"temperature": "hot"}, "Temperature must be a number, got 'hot'"),
    ({"temperature": float("nan")}, "Temperature must be a number"),
    ({"temperature": 10**400}, "Temperature must be a number"),  # OverflowError from math.isfinite
    ({"seed": 10**400}, "Seed must be at most 9223372036854775807"),
    ({"top_p": 0.0}, "top_p=0.0: must be in \\(0, 1\\]"),
    ({"repetition_penalty": 0}, "repetition_penalty=0.0: must be > 0"),
    ({"stop": 5}, "Stop strings must be text"),
])
def test_bad_controls_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        sampling_config(**{**CONTROLS, **change})


def test_stream_text_grows_to_generate_text(tiny):
    model, tok = tiny
    cfg = sampling_config(**{**CONTROLS, "max_new_tokens": 30})
    steps = list(stream_text(model, tok, "the lazy", cfg))
    texts = [t for t, _ in steps]
    assert len(steps) > 5 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    (want,) = generate(model, tok, "the lazy", cfg)
    assert texts[-1] == want.text
    assert steps[-1][1].startswith(f"{len(want.token_ids)} tokens in") and "token limit" in steps[-1][1]
    with pytest.raises(ValueError, match="The prompt is empty"):
        next(stream_text(model, tok, "", cfg))
    with pytest.raises(ValueError, match="The prompt has 120 tokens but the model's context length is 96"):
        next(stream_text(model, tok, "ab" * 60, cfg))
    with pytest.raises(ValueError, match="The prompt must be text, got int"):  # it said "The prompt is empty"
        next(stream_text(model, tok, 42, cfg))


def test_a_whitespace_prompt_generates_as_generate_does(tiny):
    """A prompt of a newline or spaces was "The prompt is empty", where `neurallayers generate` takes it (its own error
    for "" suggests $'\\n')."""
    model, tok = tiny
    cfg = sampling_config(**CONTROLS)
    for prompt in ("\n", "  "):
        *_, (text, _) = stream_text(model, tok, prompt, cfg)
        assert text == generate(model, tok, prompt, cfg)[0].text


def test_attention_maps_are_causal_distributions(tiny):
    model, tok = tiny
    labels, maps = attention_maps(model, tok, "the fox")
    assert labels == list("the fox") and maps.shape == (2, 2, 7, 7)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 7))
    assert torch.all(maps.triu(diagonal=1) == 0) and torch.all(maps.diagonal(dim1=-2, dim2=-1) > 0)
    _, longer = attention_maps(model, tok, "the fox jumps")  # later tokens change no earlier query's weights
    torch.testing.assert_close(longer[:, :, :7, :7], maps)
    with pytest.raises(ValueError, match=f"up to {ATTENTION_MAX_TOKENS} tokens; this text has 70"):
        attention_maps(model, tok, "a" * 70)
    with pytest.raises(ValueError, match="The prompt is empty"):
        attention_maps(model, tok, "")


def test_attention_figure_has_one_heatmap_per_layer_and_head(tiny):
    model, tok = tiny
    labels, maps = attention_maps(model, tok, "the fox")
    fig = attention_figure(labels, maps, "all")
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert sorted(ax.get_title() for ax in heatmaps) == [f"layer {li} · head {h}" for li in range(2) for h in range(2)]
    ticks = {ax.get_title(): [t.get_text() for t in ax.get_xticklabels()] for ax in heatmaps}
    assert ticks["layer 1 · head 1"] == list("the fox") and not any(ticks["layer 0 · head 1"])  # bottom row only
    one = attention_figure(labels, maps, "1")
    titled = [ax for ax in one.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["layer 1 · head 0", "layer 1 · head 1"]
    assert [t.get_text() for t in titled[0].get_xticklabels()] == ["t", "h", "e", " ", "f", "o", "x"]
    torch.testing.assert_close(torch.tensor(titled[1].images[0].get_array()), maps[1, 1])
    with pytest.raises(ValueError, match="Layer must be one of all, 0, 1, got '5'"):
        attention_figure(labels, maps, "5")


def test_encoder_attention_and_no_generation():
    from neurallayers.models import build_model

    tok = Tokenizer.train_char(["some text to look at"])
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                                                     n_embd=16)
    model = build_model(cfg).eval()
    labels, maps = attention_maps(model, tok, "to look")
    assert labels == list("to look") and maps.shape == (1, 2, 7, 7)
    assert torch.any(maps.triu(diagonal=1) > 0)  # bidirectional
    with pytest.raises(ValueError, match="encoder model: it does not generate"):
        next(stream_text(model, tok, "text", sampling_config(**CONTROLS)))


def test_encoder_attention_of_a_text_past_its_context_is_refused_with_its_length():
    """An encoder's text was cut at the model's context without a word: the heatmaps of its first 16 tokens showed
    for a text of 42 (a decoder's text is refused so), and a context past 64 tokens refused the cut text by its length
    ("this text has 80")."""
    from neurallayers.models import build_model

    tok = Tokenizer.train_char(["some text to look at"])
    torch.manual_seed(0)
    for block, size, message in ((16, 42, "The prompt has 42 tokens but the model's context length is 16"),
                                 (80, 102, "The prompt has 102 tokens but the model's context length is 80"),
                                 (80, 70, f"up to {ATTENTION_MAX_TOKENS} tokens; this text has 70")):
        cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=block, n_layer=1,
                                                         n_head=2, n_embd=16)
        model = build_model(cfg).eval()
        with pytest.raises(ValueError, match=message):
            attention_maps(model, tok, "a" * size)
        labels, _ = attention_maps(model, tok, "a" * 8)
        assert labels == list("a" * 8)


def test_status_names_the_context_when_it_ends_the_output(tiny):
    model, tok = tiny
    *_, (text, status) = stream_text(model, tok, "the quick", sampling_config(**{**CONTROLS, "max_new_tokens": 96}))
    assert status.startswith("88 tokens in") and status.endswith(
        "stopped by the context length (96 tokens, prompt included)")  # not "the token limit": 88 of 96 asked
    with pytest.raises(ValueError, match="Max new tokens must be at most 96 \\(the model's context length\\), got 10"):
        next(stream_text(model, tok, "the quick", sampling_config(**{**CONTROLS, "max_new_tokens": 10**9})))


def test_stop_button_ends_the_generating_status():
    assert stopped_status("generating... 13 tokens") == "stopped (Stop pressed) after 13 tokens"
    done = "40 tokens in 0.10 s (400.0 tokens/s); stopped by the token limit"
    assert stopped_status(done) == done and stopped_status(None) == ""


def test_a_stream_closed_by_stop_leaves_its_text_and_a_stopped_status(tiny):
    """Stop's own status reply raced the stream's last updates and lost ("generating... N tokens" for good): the
    step after the cancelled stream now shows what the record kept, once."""
    model, tok = tiny
    record = StreamRecord()
    updates = record.follow(stream_text(model, tok, "the quick", sampling_config(**{**CONTROLS, "max_new_tokens": 30})))
    shown = [next(updates) for _ in range(5)]
    updates.close()  # what Gradio does to a cancelled generator, between two tokens
    assert record.after_stop() == (shown[-1][0], stopped_status(shown[-1][1])) and record.after_stop() is None
    assert shown[-1][1] == "generating... 5 tokens"
    *_, (text, status) = record.follow(stream_text(model, tok, "the quick", sampling_config(**CONTROLS)))
    assert record.after_stop() is None and (record.text, record.status) == (text, status)  # it ended by itself
    # Stop's own request, Gradio's cancel late or lost: the stream ends before its next update, and its last update
    # (what Gradio's closing message repeats, applied by the page after Stop's step) says it stopped
    record.stop()  # with no stream: the next one starts afresh
    updates = record.follow(stream_text(model, tok, "the quick", sampling_config(**{**CONTROLS, "max_new_tokens": 30})))
    shown = [next(updates) for _ in range(5)]
    record.stop()
    assert list(updates) == [(shown[-1][0], stopped_status(shown[-1][1]))]
    assert record.after_stop() == (shown[-1][0], "stopped (Stop pressed) after 5 tokens")


def test_attention_maps_of_a_model_in_training_run_without_dropout_and_keep_its_mode():
    """The Attention tab of a model the user is still training: the weights came back through attention dropout
    (rows not summing to 1, different every call) and the model stayed in training mode."""
    tok = Tokenizer.train_char(["the fox"])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, attn_dropout=0.5)
    model = DecoderLM(cfg).train()
    model.wte.eval()  # a submodule the user keeps in eval mode stays so
    _, maps = attention_maps(model, tok, "the fox")
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 2, 7))
    torch.testing.assert_close(attention_maps(model, tok, "the fox")[1], maps)
    assert model.training and not model.wte.training


def test_attention_labels_of_non_ascii_text_name_their_characters():
    """Each byte of "🎉" is a token of a byte-level BPE and decoded alone to U+FFFD: every label of an emoji, a CJK or
    an accented character read "�". A token now shows the characters it completes."""
    tok = Tokenizer.train_bpe(["the fox café"], vocab_size=270, show_progress=False)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    text = "café 🎉 日本x"
    labels, maps = attention_maps(model, tok, text)
    assert len(labels) == maps.shape[-1] > len(text) and "".join(labels) == text
    assert "🎉" in labels and "日" in labels and "\ufffd" not in "".join(labels)


def test_attention_labels_keep_a_replacement_character_the_text_holds():
    """A U+FFFD typed in the text (a pasted decoding error) went from every label: the trailing U+FFFD of an
    incomplete character was stripped, and this one with it, so "a\ufffdb" was labelled a, b."""
    tok = Tokenizer.train_bpe(["the fox café"], vocab_size=270, show_progress=False)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    for text in ("a\ufffdb", "é\ufffd", "\ufffd\ufffd"):
        labels, _ = attention_maps(model, tok, text)
        assert "".join(labels) == text


def test_attention_figure_draws_dollar_signs_as_text():
    """Tick labels went through matplotlib's mathtext: GPT-2's token " $$" made the PNG fail ("Could not postprocess
    output component", a server traceback) and "$x$" was drawn as an italic x."""
    import io

    maps = torch.softmax(torch.randn(1, 1, 3, 3), dim=-1)
    fig = attention_figure([" $$", "$x$", "b"], maps, "all")
    fig.savefig(io.BytesIO(), format="png")
    ax = next(ax for ax in fig.axes if ax.get_title())
    assert [(t.get_text(), t.get_parse_math()) for t in ax.get_xticklabels()] == [
        (" $$", False), ("$x$", False), ("b", False)]


def test_attention_figure_escapes_characters_its_font_cannot_draw():
    """An emoji label was an empty box in the PNG, and a "Glyph 127881 ... missing" warning in the server log."""
    import io
    import warnings

    maps = torch.softmax(torch.randn(1, 1, 3, 3), dim=-1)
    fig = attention_figure(["é", "🎉", "x"], maps, "all")
    ax = next(ax for ax in fig.axes if ax.get_title())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["é", "\\U0001f389", "x"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph warns
        fig.savefig(io.BytesIO(), format="png")


def test_a_stream_that_fails_midway_says_so_and_keeps_its_text(tiny):
    """The model failed after some tokens (a GPU out of memory): the status line said "generating... 4 tokens" for
    good, under a toast with the error, as if the text were still coming. Its last update now says it failed."""
    _, tok = tiny
    record = StreamRecord()
    config = sampling_config(**{**CONTROLS, "max_new_tokens": 30})
    updates = record.follow(stream_text(failing_copy(tiny[0], fail_at=5), tok, "the quick", config))
    shown = []
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        shown.extend(updates)
    assert shown[-2] == (shown[-1][0], "generating... 4 tokens")
    assert shown[-1][1] == ("failed after 4 tokens: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB "
                            "(\\*not\\* markdown)")  # the status line is markdown: the error's text shows as it is
    assert record.after_stop() is None  # no Stop: the step after the stream does not run on a failure
    with pytest.raises(ValueError, match="The prompt is empty"):  # a refusal before any update changes no update
        list(record.follow(stream_text(*tiny, "", sampling_config(**CONTROLS))))
