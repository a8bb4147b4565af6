"""vLLM's truncate_prompt_tokens=-1 (as many tokens as the context length holds beside max_tokens) through the real
`openai` client against a real server on 127.0.0.1: a prompt that fits is read whole, on both routes and for token-id
prompts; 0 is still refused naming the field."""

from __future__ import annotations

import pytest
from nl_serve_helpers import write_run_dir

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("prompt_trunc") / "tiny-char")


def complete(client, prompt, **extra):
    return client.completions.create(model="tiny-char", prompt=prompt, max_tokens=3, temperature=0, extra_body=extra)


def test_minus_one_reads_a_fitting_prompt_whole(client, loaded):
    ids = loaded[1].encode("the quick brown fox")
    for prompt in ("the quick brown fox", ids, [ids, ids[:5]]):
        plain, cut = complete(client, prompt), complete(client, prompt, truncate_prompt_tokens=-1)
        assert cut.usage == plain.usage
        assert [c.text for c in cut.choices] == [c.text for c in plain.choices]
    messages = [{"role": "user", "content": "the quick"}]
    plain, cut = (client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=3, temperature=0,
                                                 extra_body=extra) for extra in ({}, {"truncate_prompt_tokens": -1}))
    assert (cut.usage, cut.choices[0].message.content) == (plain.usage, plain.choices[0].message.content)


def test_minus_one_cuts_a_long_prompt_to_what_the_context_holds_beside_max_tokens(client):
    # vLLM's renderer: -1 is max_model_len - max_tokens (it was the whole context here, which left no room: a 400)
    assert complete(client, "the quick brown fox " * 10, truncate_prompt_tokens=-1).usage.prompt_tokens == 64 - 3
    with pytest.raises(openai.BadRequestError) as e:  # chat without max_tokens asks for none: the whole context
        client.chat.completions.create(model="tiny-char", messages=[{"role": "user", "content": "the quick " * 10}],
                                       extra_body={"truncate_prompt_tokens": -1})
    assert "has 64 tokens" in e.value.body["message"]


@pytest.mark.parametrize("value", [0, -2])
def test_zero_and_below_minus_one_are_refused(client, value):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, "the quick", truncate_prompt_tokens=value)
    assert e.value.body["param"] == "truncate_prompt_tokens"
