"""vLLM's skip_special_tokens, spaces_between_special_tokens and stream_options.continuous_usage_stats, through the
real `openai` client (extra_body) against a real server on 127.0.0.1.

Oracles: the tokenizer's own decode with skip_special_tokens=False for the text (vLLM's fast detokenizer decodes with
the `tokenizers` library the same way), and vLLM's serving_completion / serving_chat stream generators for the usage
every chunk carries (its choice's prompt tokens, and its tokens so far), whose last values add up to the usage of the
same request unstreamed."""

from __future__ import annotations

import pytest
from nl_serve_helpers import assert_ok_after, write_run_dir

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("text-options") / "tiny-char")


def eos_run(client, loaded, stream: bool, **extra) -> str:
    """The text of 6 tokens forced to be eos (a special token), generated past it with ignore_eos."""
    kw = dict(model="tiny-char", prompt="The quick", max_tokens=6, temperature=0,
              logit_bias={str(loaded[1].eos_id): 100}, extra_body={"ignore_eos": True, **extra})
    if not stream:
        out = client.completions.create(**kw)
        assert out.choices[0].finish_reason == "length"
        return out.choices[0].text
    return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)


@pytest.mark.parametrize("stream", [False, True])
def test_skip_special_tokens_false_writes_them_as_the_tokenizer_decodes(client, loaded, stream):
    tok = loaded[1]
    assert eos_run(client, loaded, stream) == tok.decode([tok.eos_id] * 6) == ""
    want = tok.decode([tok.eos_id] * 6, skip_special_tokens=False)
    assert eos_run(client, loaded, stream, skip_special_tokens=False) == want == "<|endoftext|>" * 6
    chat = client.chat.completions.create(model="tiny-char", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3, temperature=0, logit_bias={str(tok.eos_id): 100},
                                          extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert chat.choices[0].message.content == "<|endoftext|>" * 3


def test_spaces_between_special_tokens_false_is_taken_where_it_changes_nothing(client, loaded, server):
    # vLLM's detokenizer reads it only when special tokens are written (skip_special_tokens or spaces_between...)
    assert eos_run(client, loaded, False, spaces_between_special_tokens=False) == ""
    with pytest.raises(openai.BadRequestError) as e:
        eos_run(client, loaded, False, spaces_between_special_tokens=False, skip_special_tokens=False)
    assert e.value.body["param"] == "spaces_between_special_tokens" and "not supported" in e.value.body["message"]
    assert_ok_after(server.url)


def stream_usage(create, **kw) -> tuple[list[list[tuple[int, int]]], object]:
    """Each choice's (prompt_tokens, completion_tokens) on every chunk that names it, and the final usage."""
    per_choice: dict[int, list[tuple[int, int]]] = {}
    final = None
    for chunk in create(stream=True, **kw):
        if not chunk.choices:
            final = chunk.usage
            continue
        assert chunk.usage is not None  # continuous: every chunk
        per_choice.setdefault(chunk.choices[0].index, []).append((chunk.usage.prompt_tokens,
                                                                   chunk.usage.completion_tokens))
        assert chunk.usage.total_tokens == chunk.usage.prompt_tokens + chunk.usage.completion_tokens
    return [per_choice[i] for i in sorted(per_choice)], final


@pytest.mark.parametrize("route", ["completions", "chat"])
@pytest.mark.parametrize("stop", [None, "e"])
def test_continuous_usage_stats_count_each_choice_as_vllm(client, loaded, route, stop):
    tok = loaded[1]
    prompts = ["The quick", "ab"]
    if route == "completions":
        create, kw = client.completions.create, dict(prompt=prompts)
        lens = [len(tok.encode(p)) for p in prompts for _ in range(2)]
    else:
        create, kw = client.chat.completions.create, dict(messages=[{"role": "user", "content": "The quick"}])
    kw = dict(model="tiny-char", max_tokens=12, temperature=1.0, seed=5, n=2, stop=stop, **kw)
    plain = create(**kw)
    for options in ({"include_usage": True, "continuous_usage_stats": True}, {"continuous_usage_stats": True},
                    {"include_usage": None, "continuous_usage_stats": True}):  # null: left out
        counts, final = stream_usage(create, stream_options=options, **kw)
        assert len(counts) == len(plain.choices)
        if route == "chat":
            lens = [plain.usage.prompt_tokens] * len(counts)
        for seen, prompt_len in zip(counts, lens, strict=True):
            assert {p for p, _ in seen} == {prompt_len}
            made = [c for _, c in seen]
            assert made == sorted(made) and made[-1] <= 12
        # the last chunk of each choice has all its tokens: they add up to the usage, streamed or not
        assert sum(seen[-1][1] for seen in counts) == final.completion_tokens == plain.usage.completion_tokens
        assert final.prompt_tokens == plain.usage.prompt_tokens


def test_continuous_usage_stats_with_include_usage_false_is_refused(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-char", prompt="ab", max_tokens=2, stream=True,
                                  stream_options={"include_usage": False, "continuous_usage_stats": True})
    assert e.value.body["param"].startswith("stream_options") and "include_usage" in e.value.body["message"]
    chunks = list(client.completions.create(model="tiny-char", prompt="ab", max_tokens=2, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].usage.completion_tokens == 2  # as before
    assert_ok_after(server.url)


def test_echo_without_generation_streams_continuous_usage(client, loaded):
    n_prompt = len(loaded[1].encode("The quick"))
    chunks = list(client.completions.create(model="tiny-char", prompt="The quick", max_tokens=0, echo=True,
                                            stream=True, stream_options={"continuous_usage_stats": True}))
    assert [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks] == [(n_prompt, 0)] * 2
    assert chunks[0].choices[0].text == "The quick" and chunks[0].choices[0].model_extra["stop_reason"] is None


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_empty_stream_options_send_no_usage_chunk_as_openai_reads_them(client, route):
    """vLLM defaults include_usage to true, so `{}` gets a last chunk with no choices there, which client code
    written for OpenAI (`chunk.choices[0]`) fails on; here `{}` means what OpenAI reads: no usage."""
    create, kw = (client.completions.create, dict(prompt="ab")) if route == "completions" else \
        (client.chat.completions.create, dict(messages=[{"role": "user", "content": "ab"}]))
    chunks = list(create(model="tiny-char", max_tokens=3, stream=True, stream_options={}, **kw))
    assert all(c.choices and c.usage is None for c in chunks)
    asked = list(create(model="tiny-char", max_tokens=3, stream=True, stream_options={"include_usage": True}, **kw))
    assert not asked[-1].choices and asked[-1].usage.completion_tokens >= 1
