"""vLLM's return_token_ids through the real `openai` client (extra_body) against a real server on 127.0.0.1: where
vLLM's serving_completion / serving_chat put the ids (a completion choice's prompt_token_ids and token_ids; chat's
prompt_token_ids beside usage and each choice's token_ids; streamed: the prompt's on a choice's first chunk, each
chunk's new ids), streamed or not, n > 1, several prompts, echo.

Oracles: neurallayers.generate on the same prompt and settings (its token_ids, then the stop token or the stop
string's tokens it trims, which vLLM returns: as many as usage counts), the tokenizer's own ids of the prompt, and the
unstreamed answer for the streamed one."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import assert_ok_after, write_run_dir

import neurallayers
from neurallayers.data.chat import render_chat

openai = pytest.importorskip("openai")

PROMPTS = ["The quick", "ab"]
IDS = {"return_token_ids": True}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("token-ids") / "tiny-char")


def extra(obj, name: str):
    return obj.model_extra.get(name)


def check_against_generate(loaded, prompt_ids: list[int], got: list[int], usage_tokens: int, **kw) -> None:
    """`got` (the served token_ids) is generate()'s token_ids, then the tokens generate() trims (a stop token, a stop
    string's), as many as it counts in completion_tokens."""
    model, tok = loaded
    stop = kw.pop("stop", None)
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    gen = neurallayers.generate(model, tok, [prompt_ids], stop=stop, **kw)[0]
    assert got[:len(gen.token_ids)] == gen.token_ids
    assert len(got) == gen.completion_tokens == usage_tokens
    if gen.finish_reason == "stop" and not stop:
        assert got[len(gen.token_ids):] == [tok.eos_id]  # the eos that ended it, whose text is not returned


@pytest.mark.parametrize("stop", [None, "e"])
def test_completions_return_each_choice_s_ids_as_generate(client, loaded, stop):
    tok = loaded[1]
    out = client.completions.create(model="tiny-char", prompt=PROMPTS, n=2, max_tokens=12, temperature=1.0, seed=3,
                                    stop=stop, extra_body=IDS)
    assert len(out.choices) == 4
    total = 0
    for c in out.choices:
        p, k = divmod(c.index, 2)
        want_prompt = tok.encode(PROMPTS[p])
        assert extra(c, "prompt_token_ids") == want_prompt
        got = extra(c, "token_ids")
        if stop is None:
            assert tok.decode(got) == c.text
        else:
            assert stop in tok.decode(got) or c.finish_reason == "length"
        check_against_generate(loaded, want_prompt, got, len(got), max_new_tokens=12, temperature=1.0, seed=3 + k,
                               stop=stop)
        total += len(got)
    assert total == out.usage.completion_tokens


def test_a_choice_ended_by_eos_returns_the_eos_id(client, loaded):
    tok = loaded[1]
    out = client.completions.create(model="tiny-char", prompt="ab", max_tokens=5, logit_bias={str(tok.eos_id): 100},
                                    extra_body=IDS)
    c = out.choices[0]
    assert (c.text, c.finish_reason, extra(c, "token_ids")) == ("", "stop", [tok.eos_id])
    assert out.usage.completion_tokens == 1


def stream_ids(chunks) -> tuple[dict[int, list[list[int] | None]], dict[int, list[int]], dict[int, str]]:
    """Per choice: the prompt_token_ids of each of its chunks, its token_ids joined, its text joined."""
    prompts: dict[int, list] = {}
    ids: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            prompts.setdefault(c.index, []).append(extra(c, "prompt_token_ids"))
            ids.setdefault(c.index, []).extend(extra(c, "token_ids"))
            texts[c.index] = texts.get(c.index, "") + c.text
    return prompts, ids, texts


@pytest.mark.parametrize("stop", [None, "e", ["qu", "o"]])
def test_completion_stream_ids_join_into_the_unstreamed_ones(client, loaded, stop):
    kw = dict(model="tiny-char", prompt=PROMPTS, n=2, max_tokens=12, temperature=1.0, seed=11, stop=stop,
              extra_body=IDS)
    plain = client.completions.create(**kw)
    prompts, ids, texts = stream_ids(client.completions.create(stream=True, **kw))
    for c in plain.choices:
        first, *rest = prompts[c.index]
        assert first == extra(c, "prompt_token_ids") and rest == [None] * len(rest)  # on its first chunk only
        assert ids[c.index] == extra(c, "token_ids") and texts[c.index] == c.text


def test_echo_keeps_the_prompt_in_the_text_and_the_ids_apart(client, loaded):
    """vLLM drops the echoed text when return_token_ids is sent (its issue 57996, a bug): here echo still echoes."""
    tok = loaded[1]
    kw = dict(model="tiny-char", prompt="The quick", max_tokens=6, temperature=0, echo=True, logprobs=1,
              extra_body=IDS)
    plain = client.completions.create(**kw).choices[0]
    without = client.completions.create(**{**kw, "extra_body": {}}).choices[0]
    assert plain.text == without.text and plain.text.startswith("The quick")
    assert extra(plain, "prompt_token_ids") == tok.encode("The quick")
    assert tok.decode(extra(plain, "token_ids")) == plain.text.removeprefix("The quick")
    prompts, ids, texts = stream_ids(client.completions.create(stream=True, **kw))
    assert (prompts[0][0], ids[0], texts[0]) == (extra(plain, "prompt_token_ids"), extra(plain, "token_ids"),
                                                 plain.text)
    alone = client.completions.create(**{**kw, "max_tokens": 0}).choices[0]  # the prompt alone: nothing generated
    assert (alone.text, extra(alone, "prompt_token_ids"), extra(alone, "token_ids")) == (
        "The quick", tok.encode("The quick"), [])


def test_token_id_prompts_come_back_as_sent(client, loaded):
    tok = loaded[1]
    ids = [tok.encode("The quick"), tok.encode("ab")]
    out = client.completions.create(model="tiny-char", prompt=ids, max_tokens=3, temperature=0, extra_body=IDS)
    assert [extra(c, "prompt_token_ids") for c in out.choices] == ids


def chat_prompt_ids(loaded, messages) -> list[int]:
    tok = loaded[1]
    return tok.encode(render_chat(tok, messages), add_special_tokens=False)


@pytest.mark.parametrize("stop", [None, "e"])
def test_chat_returns_the_prompt_s_ids_once_and_each_choice_s(client, loaded, server, stop):
    messages = [{"role": "user", "content": "The quick"}]
    kw = dict(model="tiny-char", messages=messages, n=2, max_tokens=10, temperature=1.0, seed=5, stop=stop,
              extra_body=IDS)
    out = client.chat.completions.create(**kw)
    want_prompt = chat_prompt_ids(loaded, messages)
    assert extra(out, "prompt_token_ids") == want_prompt == httpx.post(
        f"{server.url}/tokenize", json={"messages": messages}).json()["tokens"]
    assert out.usage.prompt_tokens == len(want_prompt)
    for c in out.choices:
        assert "prompt_token_ids" not in c.model_extra  # vLLM's chat puts it beside usage, not in a choice
        # the chat template's own end of a reply is a stop string too: generate() gets it as the route does
        check_against_generate(loaded, want_prompt, extra(c, "token_ids"), len(extra(c, "token_ids")),
                               max_new_tokens=10, temperature=1.0, seed=5 + c.index,
                               stop=[*([stop] if stop else []), "\nuser:"])
    assert sum(len(extra(c, "token_ids")) for c in out.choices) == out.usage.completion_tokens

    chunks = list(client.chat.completions.create(stream=True, **kw))
    tops = [extra(ch, "prompt_token_ids") for ch in chunks]
    role_chunks = [i for i, ch in enumerate(chunks) if ch.choices and ch.choices[0].delta.role]
    assert [tops[i] for i in role_chunks] == [want_prompt] * 2  # each choice's first (role) chunk, as vLLM sends it
    assert all(t is None for i, t in enumerate(tops) if i not in role_chunks)
    joined: dict[int, list[int]] = {0: [], 1: []}
    for i, ch in enumerate(chunks):
        if i not in role_chunks:
            joined[ch.choices[0].index] += extra(ch.choices[0], "token_ids")
    assert [joined[c.index] for c in out.choices] == [extra(c, "token_ids") for c in out.choices]


def test_without_it_no_ids_are_sent(client, server):
    out = client.completions.create(model="tiny-char", prompt="ab", max_tokens=2, extra_body={"return_token_ids": None})
    assert "token_ids" not in out.choices[0].model_extra and "prompt_token_ids" not in out.choices[0].model_extra
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "max_tokens": 2, "return_token_ids": False})
    assert "prompt_token_ids" not in r.json() and "token_ids" not in r.json()["choices"][0]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-char", prompt="ab", max_tokens=2, extra_body={"return_token_ids": "yes"})
    assert e.value.body["param"] == "return_token_ids"
    assert_ok_after(server.url)
