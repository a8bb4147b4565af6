"""GenerationConfig.stop_strings_after_min_new_tokens: stop strings wait for min_new_tokens as vLLM's min_tokens makes
them wait (its detokenizer looks for a stop string only where it ends in the text of a token after the first
min_tokens), while the default keeps transformers' rule (min_new_tokens holds back eos alone). Oracle: vLLM's rule
written out in plain Python over the tokens of the same generation without stop strings."""

from __future__ import annotations

import pytest
from nl_gen_helpers import ScriptLM, memorized_lm, unicode_tokenizer, wordpiece_tokenizer

from neurallayers.data.tokenizers import continuation_text
from neurallayers.generation import GenerationConfig, generate, stream

PROMPT = "héllo"
MAX = 40


def vllm_stop(tok, prompt_ids: list[int], ids: list[int], stops: list[str], min_tokens: int):
    """(text, tokens chosen) as vLLM's detokenizer ends them: after token k (1-based) its new characters are searched
    for a stop string ending in them, once k > min_tokens; text without a stop is the whole text."""
    texts = [""] + [continuation_text(tok, prompt_ids, ids[:k]).rstrip("\ufffd") for k in range(1, len(ids) + 1)]
    for k in range(min_tokens + 1, len(ids) + 1):
        new = len(texts[k]) - len(texts[k - 1])
        if new <= 0:
            continue
        found = [i for i in (texts[k].find(s, max(0, len(texts[k]) - new - len(s) + 1)) for s in stops) if i >= 0]
        if found:
            return texts[k][:min(found)], k
    return texts[-1], None


@pytest.fixture(scope="module")
def lm_tok():
    return memorized_lm(), unicode_tokenizer()


@pytest.fixture(scope="module")
def unstopped(lm_tok):
    lm, tok = lm_tok
    (g,) = generate(lm, tok, PROMPT, temperature=0, max_new_tokens=MAX)
    assert g.finish_reason == "length"
    return g.token_ids


CASES = [(stop, m) for stop in (["é"], [" "], ["🎉"], ["naïve café"], ["o", "∑"]) for m in (0, 3, 11, 25)]


@pytest.mark.parametrize(("stop", "min_tokens"), CASES)
def test_stop_strings_wait_for_min_new_tokens_as_in_vllm(lm_tok, unstopped, stop, min_tokens) -> None:
    lm, tok = lm_tok
    cfg = GenerationConfig(temperature=0, max_new_tokens=MAX, min_new_tokens=min_tokens, stop=stop, logprobs=1,
                           stop_strings_after_min_new_tokens=True)
    (g,) = generate(lm, tok, PROMPT, cfg)
    text, chosen = vllm_stop(tok, tok.encode(PROMPT), unstopped, stop, min_tokens)
    assert g.text == text
    assert g.finish_reason == ("length" if chosen is None else "stop")
    assert g.completion_tokens == (MAX if chosen is None else chosen)
    assert g.token_ids == unstopped[:len(g.token_ids)] and len(g.logprobs) == len(g.token_ids)
    events = list(stream(lm, tok, PROMPT, cfg))  # streaming ends where generate() does
    assert "".join(e.text for e in events) == g.text and events[-1].finish_reason == g.finish_reason
    assert [e.token_id for e in events[:-1]] == g.token_ids


def test_a_stop_string_before_min_new_tokens_stays_in_the_text(lm_tok, unstopped) -> None:
    lm, tok = lm_tok
    kw = dict(temperature=0, max_new_tokens=MAX, stop=["é"], min_new_tokens=12)
    (vllm,) = generate(lm, tok, PROMPT, **kw, stop_strings_after_min_new_tokens=True)
    (hf,) = generate(lm, tok, PROMPT, **kw)
    # transformers' rule (the default): the first "é" ends it, whatever min_new_tokens says
    assert hf.text == vllm_stop(tok, tok.encode(PROMPT), unstopped, ["é"], 0)[0] == " wörld 🙂 naïve caf"
    assert vllm.text.startswith(hf.text + "é") and vllm.text.count("é") == 1 and vllm.finish_reason == "stop"


def test_beam_search_and_batches_follow_the_same_rule(lm_tok, unstopped) -> None:
    lm, tok = lm_tok
    kw = dict(temperature=0, max_new_tokens=MAX, stop=["é"], min_new_tokens=12, stop_strings_after_min_new_tokens=True)
    (one,) = generate(lm, tok, PROMPT, **kw)
    (beam,) = generate(lm, tok, PROMPT, **kw, num_beams=2)
    batch = generate(lm, tok, [PROMPT, "wörld"], **kw)
    assert beam.text == batch[0].text == one.text and beam.finish_reason == "stop"


def test_the_option_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="stop_strings_after_min_new_tokens=1: must be True or False"):
        GenerationConfig(stop_strings_after_min_new_tokens=1)


@pytest.mark.parametrize(("stop", "min_tokens"), [(["and"], 2), (["do and"], 2), (["and do"], 2), (["do"], 1)])
def test_a_word_held_for_space_clean_up_still_counts_as_its_own_tokens_text(stop, min_tokens) -> None:
    """A word-piece tokenizer's decoder holds a word back until the next comes (cleaning up may still drop the space
    before it): the stop string in the text of the first min_new_tokens tokens was searched when that text came out,
    after the next token, and ended the generation there; generate() and stream() now follow vLLM's rule, as beam
    search did."""
    tok = wordpiece_tokenizer()
    prompt, script = tok.encode("hello"), [tok.token_to_id(t) for t in ("do", "and", "do", "do", "do")]
    model = ScriptLM(script, tok.vocab_size, len(prompt))
    cfg = GenerationConfig(temperature=0, max_new_tokens=5, min_new_tokens=min_tokens, stop=stop,
                           stop_strings_after_min_new_tokens=True)
    text, chosen = vllm_stop(tok, prompt, script, stop, min_tokens)
    (g,) = generate(model, tok, [prompt], cfg)
    assert (g.text, g.finish_reason) == (text, "length" if chosen is None else "stop")
    events = list(stream(model, tok, prompt, cfg))
    assert "".join(e.text for e in events) == g.text and [e.token_id for e in events[:-1]] == g.token_ids
    (beam,) = generate(model, tok, [prompt], cfg, num_beams=2)
    assert beam.text == g.text
