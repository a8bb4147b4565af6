"""vLLM's min_tokens holds stop strings back too: through the real `openai` client against a real server, a stop
string counts only where it ends in the text of a token after the first min_tokens (vLLM's detokenizer skips the
check before), streamed or not, for every choice of n. Oracle: vLLM's rule in plain Python over the tokens
neurallayers.generate samples with the same seed and no stop string (a char-level model: one token, one character)."""

from __future__ import annotations

import pytest
from nl_serve_helpers import write_run_dir

import neurallayers

openai = pytest.importorskip("openai")

PROMPT, MAX, SEED = "The quick", 24, 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("min-tokens") / "tiny-char")


def vllm_stop(text: str, stops: list[str], min_tokens: int) -> tuple[str, int | None]:
    """(text, tokens chosen) where vLLM ends a char-level generation: token k's character is searched for a stop string
    ending there once k > min_tokens."""
    for k in range(min_tokens + 1, len(text) + 1):
        found = [i for i in (text[:k].find(s, max(0, k - len(s))) for s in stops) if i >= 0]
        if found:
            return text[:min(found)], k
    return text, None


@pytest.fixture(scope="module")
def unstopped(loaded):
    model, tok = loaded
    texts = [neurallayers.generate(model, tok, PROMPT, max_new_tokens=MAX, temperature=1.0, seed=SEED + k)[0].text
             for k in range(2)]
    assert all(len(t) == MAX for t in texts)  # one character a token, no eos
    return texts


def choices(client, stream: bool, **kw) -> list[tuple[str, str]]:
    kw = dict(model="tiny-char", prompt=PROMPT, max_tokens=MAX, temperature=1.0, seed=SEED, n=2, **kw)
    if not stream:
        out = client.completions.create(**kw)
        return [(c.text, c.finish_reason) for c in out.choices], out.usage.completion_tokens
    texts, reasons, used = ["", ""], [None, None], None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        used = chunk.usage.completion_tokens if chunk.usage else used
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] = c.finish_reason or reasons[c.index]
    return list(zip(texts, reasons, strict=True)), used


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("min_tokens", [0, 1, 4, 9, 17])
@pytest.mark.parametrize("pick", [(1, 1), (2, 2), (5, 3)])  # the stop string: text[a:a+b] of choice 0
def test_stop_strings_wait_for_min_tokens_as_in_vllm(client, unstopped, stream, min_tokens, pick) -> None:
    a, b = pick
    stop = unstopped[0][a:a + b]
    got, used = choices(client, stream, stop=[stop], extra_body={"min_tokens": min_tokens})
    want = [vllm_stop(t, [stop], min_tokens) for t in unstopped]
    assert got == [(text, "length" if k is None else "stop") for text, k in want]
    assert used == sum(MAX if k is None else k for _, k in want)


def test_a_stop_string_inside_the_first_min_tokens_is_kept(client, unstopped) -> None:
    text = unstopped[0]
    stop = text[1]
    later = text.find(stop, 5)
    got, _ = choices(client, False, stop=[stop], extra_body={"min_tokens": 4})
    # not cut at its first place, as it was (a stop string ended the choice before min_tokens tokens)
    assert got[0][0] == (text if later < 0 else text[:later]) and got[0][0].startswith(text[:2])
