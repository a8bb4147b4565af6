"""Completions with echo and max_tokens 0 score a prompt without generating (OpenAI's legacy API, which vLLM keeps:
"OpenAI API supports echoing the prompt when max_tokens is 0"), through the real `openai` client against a real
server. Oracle: the model's log-softmax over the prompt in plain PyTorch, and the prompt part of echo with one token
generated."""

from __future__ import annotations

import httpx
import pytest
import torch
from nl_serve_helpers import assert_ok_after, write_run_dir

openai = pytest.importorskip("openai")

PROMPTS = ["The quick brown", "héllo 🙂 ok"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("echo0") / "tiny-char")


def scored(loaded, text: str, k: int) -> tuple[list[float], list[dict]]:
    model, tok = loaded
    ids = tok.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)  # (T, V)
    chosen = [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
    # the top k and, as OpenAI and vLLM list it, the prompt's own token
    top = []
    for t in range(1, len(ids)):
        pairs = [*zip(*logp[t - 1].topk(k), strict=True), (logp[t - 1, ids[t]], ids[t])]
        top.append({tok.decode([i], skip_special_tokens=False): v for v, i in pairs})
    return chosen, top


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_max_tokens_zero_scores_the_prompt_alone(client, loaded, stream):
    kw = dict(model="tiny-char", prompt=PROMPTS, max_tokens=0, echo=True, logprobs=2, n=2)
    if stream:
        choices, used = {}, None
        for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
            used = chunk.usage or used
            choices.update({c.index: c for c in chunk.choices})
        choices = [choices[i] for i in sorted(choices)]
    else:
        out = client.completions.create(**kw)
        choices, used = out.choices, out.usage
    assert [c.index for c in choices] == [0, 1, 2, 3]
    assert (used.prompt_tokens, used.completion_tokens) == (sum(len(p) for p in PROMPTS), 0)  # char level
    for c, text in zip(choices, [p for p in PROMPTS for _ in range(2)], strict=True):
        assert (c.text, c.finish_reason) == (text, "length")
        chosen, top = scored(loaded, text, 2)
        assert c.logprobs.tokens == list(text) and c.logprobs.text_offset == list(range(len(text)))
        assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
        assert c.logprobs.token_logprobs[1:] == pytest.approx(chosen, abs=1e-5)
        for got, want in zip(c.logprobs.top_logprobs[1:], top, strict=True):
            assert got == pytest.approx({k: v.item() for k, v in want.items()}, abs=1e-5)


def test_the_prompt_part_equals_echo_with_one_token_generated(client):
    zero = client.completions.create(model="tiny-char", prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=1)
    one = client.completions.create(model="tiny-char", prompt=PROMPTS[0], max_tokens=1, echo=True, logprobs=1,
                                    temperature=0)
    n = len(PROMPTS[0])
    assert zero.choices[0].logprobs.tokens == one.choices[0].logprobs.tokens[:n]
    assert zero.choices[0].logprobs.token_logprobs == one.choices[0].logprobs.token_logprobs[:n]
    assert zero.choices[0].logprobs.top_logprobs == one.choices[0].logprobs.top_logprobs[:n]
    text = client.completions.create(model="tiny-char", prompt=PROMPTS[0], max_tokens=0, echo=True)
    assert (text.choices[0].text, text.choices[0].logprobs) == (PROMPTS[0], None)


def test_max_tokens_zero_without_echo_is_refused(client, server):
    for call in (lambda: client.completions.create(model="tiny-char", prompt="x", max_tokens=0),
                 lambda: client.chat.completions.create(model="tiny-char", max_tokens=0,
                                                        messages=[{"role": "user", "content": "x"}])):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == "max_tokens"
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 0, "echo": True,
                                                         "logit_bias": {"999": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"  # still checked as with generation
    assert_ok_after(server.url)


def test_echo_alone_takes_no_min_tokens(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-char", prompt="x", max_tokens=0, echo=True, extra_body={"min_tokens": 2})
    assert e.value.body["param"] == "min_tokens" and "max_tokens=0" in e.value.body["message"]


@pytest.mark.parametrize("rows", [1, 3, 256])
def test_prompt_scores_are_the_same_a_slice_of_rows_at_a_time(loaded, monkeypatch, rows):
    # the prompt's log-probabilities are taken a slice of rows at a time (one (T, V) array less): a prompt longer
    # than a slice, cut at every place, scores as the whole log-softmax does
    from types import SimpleNamespace

    from neurallayers.serve import streaming

    monkeypatch.setattr(streaming, "PROMPT_ROWS", rows)
    model, tok = loaded
    text = "The quick brown fox"
    out = streaming.prompt_logprobs(SimpleNamespace(model=model, tokenizer=tok), tok.encode(text), 2, text=text)
    chosen, top = scored(loaded, text, 2)
    assert out["token_logprobs"] == [None, *[pytest.approx(c, abs=1e-6) for c in chosen]]
    for got, want in zip(out["top_logprobs"][1:], top, strict=True):
        assert got == pytest.approx({k: v.item() for k, v in want.items()}, abs=1e-6)
    one = streaming.prompt_logprobs(SimpleNamespace(model=model, tokenizer=tok), tok.encode("T"), 2, text="T")
    assert one["token_logprobs"] == [None] and one["top_logprobs"] == [None]
