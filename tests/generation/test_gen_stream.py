"""stream(): events never split a UTF-8 character nor leak part of a stop string, their text concatenates to
generate()'s, and the last event carries the finish reason."""

from __future__ import annotations

import pytest
from nl_gen_helpers import memorized_lm, tiny_lm, unicode_tokenizer

from neurallayers.generation import GenerationConfig, generate, stream


@pytest.fixture(scope="module")
def lm_tok():
    return memorized_lm(), unicode_tokenizer()


@pytest.mark.parametrize("stop", [[], ["café"], ["🎉"], [" wö"], ["日本語 ok", "never"], ["ö", "ï"]])
def test_stream_text_equals_generate(lm_tok, stop: list[str]) -> None:
    lm, tok = lm_tok
    cfg = GenerationConfig(temperature=0, max_new_tokens=40, stop=stop, logprobs=1)
    (g,) = generate(lm, tok, "héllo", cfg)
    events = list(stream(lm, tok, "héllo", cfg))
    assert "".join(e.text for e in events) == g.text
    assert not any("\ufffd" in e.text for e in events)
    assert all(e.finish_reason is None for e in events[:-1]) and events[-1].finish_reason == g.finish_reason
    assert events[-1].token_id is None
    # the token events are generate()'s tokens: a stop string's never reach the stream (they did, with empty text)
    assert [e.token_id for e in events[:-1]] == g.token_ids
    assert [e.logprob for e in events[:-1]] == g.logprobs
    if stop:
        assert g.finish_reason == "stop" and not any(s in g.text for s in stop)
        assert all(not any(s in e.text for s in stop) for e in events)
    else:
        assert g.finish_reason == "length" and len(events) == 41


def test_multibyte_characters_are_held_back(lm_tok) -> None:
    """The emoji and CJK characters span several byte-level tokens: some events are empty, none is partial."""
    lm, tok = lm_tok
    events = list(stream(lm, tok, tok.encode("héllo"), temperature=0, max_new_tokens=30))
    assert any(e.text == "" for e in events[:-1])
    assert "🙂" in "".join(e.text for e in events)


def test_stop_prefix_is_held_back_until_resolved(lm_tok) -> None:
    """"naïve X" is not in the text: its start "naïve " must be held back and then released unchanged."""
    lm, tok = lm_tok
    cfg = GenerationConfig(temperature=0, max_new_tokens=20, stop=["naïve X"])
    texts = [e.text for e in stream(lm, tok, "héllo", cfg)]
    (g,) = generate(lm, tok, "héllo", cfg)
    assert "".join(texts) == g.text and "naïve café" in g.text and g.finish_reason == "length"
    assert not any(t.endswith("naï") for t in texts)  # never emitted while it could still become the stop string


def test_stream_eos_and_logprobs(lm_tok) -> None:
    lm, tok = lm_tok
    (full,) = generate(lm, tok, "héllo", temperature=0, max_new_tokens=20)
    eos = full.token_ids[6]
    cfg = GenerationConfig(temperature=0, max_new_tokens=20, stop_token_ids=[eos], logprobs=2)
    events = list(stream(lm, tok, "héllo", cfg))
    (g,) = generate(lm, tok, "héllo", cfg)
    assert events[-1].finish_reason == "stop" == g.finish_reason
    assert [e.token_id for e in events[:-1]] == g.token_ids
    assert [e.logprob for e in events[:-1]] == g.logprobs


def test_stream_sampling_matches_generate(lm_tok) -> None:
    lm, tok = lm_tok
    cfg = GenerationConfig(temperature=1.5, seed=5, max_new_tokens=25)
    (g,) = generate(lm, tok, "héllo", cfg)
    assert "".join(e.text for e in stream(lm, tok, "héllo", cfg)) == g.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_beams=2), "num_beams"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(top_k=-1), r"GenerationConfig\.top_k=-1: must be >= 0"),
    (dict(stop=[""]), r"GenerationConfig\.stop=\[''\]: must be a list of non-empty strings"),
    (dict(stop="\n"), r"GenerationConfig\.stop='\\n': must be a list"),
    (dict(tempurature=0.5), r"GenerationConfig has no field 'tempurature' \(did you mean 'temperature'\?\)"),
    (dict(stop_token_ids=[10**6]), r"GenerationConfig\.stop_token_ids holds token ids outside the model's vocab"),
    # a draft or amateur model was refused as a misspelt field: "GenerationConfig has no field 'draft_model'"
    (dict(draft_model=tiny_lm()), r"stream\(\) .* takes no draft_model \(speculative decoding .* generate\(\)\)"),
    (dict(amateur_model=tiny_lm()), r"takes no amateur_model"),
])
def test_stream_rejects_bad_input_when_called(lm_tok, kwargs: dict, match: str) -> None:
    """The call itself raises, as generate() does: a stream that raised only at its first next() let a caller (a
    server, a UI) start answering before the request was refused."""
    lm, tok = lm_tok
    with pytest.raises(ValueError, match=match):
        stream(lm, tok, "héllo", **kwargs)


def test_stream_rejects_bad_prompts_when_called(lm_tok) -> None:
    lm, tok = lm_tok
    block = lm.config.block_size
    with pytest.raises(ValueError, match="tokenizer"):
        stream(tiny_lm(), None, [1, 2])
    with pytest.raises(ValueError, match="prompt must be"):
        stream(lm, tok, 5)
    with pytest.raises(ValueError, match=r"^prompt 0 is empty: a prompt needs at least one token"):
        stream(lm, tok, "")
    with pytest.raises(ValueError, match=rf"^prompt 0 has {block + 1} tokens but the model's context length "
                                         rf"\(block_size\) is {block}"):
        stream(lm, tok, [1] * (block + 1))
    with pytest.raises(ValueError, match=r"^prompt 0 holds token ids outside the vocabulary"):
        stream(lm, tok, [1, 10**6])
    with pytest.raises(ValueError, match=r"^stream\(\) takes one prompt"):
        stream(lm, tok, ["a", "b"])


def test_a_checked_stream_decodes_only_when_iterated(lm_tok) -> None:
    """Checking the arguments at the call runs no step and leaves the model's mode alone; the events then come as
    before (generate()'s text)."""
    lm, tok = lm_tok
    lm.train()
    try:
        events = stream(lm, tok, "héllo", temperature=0, max_new_tokens=12)
        assert lm.training  # nothing decoded yet: eval mode comes with the first event
        text = "".join(e.text for e in events)
        assert lm.training  # the caller's mode is back once the stream ends
    finally:
        lm.eval()
    assert text == generate(lm, tok, "héllo", temperature=0, max_new_tokens=12)[0].text
