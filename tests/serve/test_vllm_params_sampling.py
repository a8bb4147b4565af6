"""vLLM's extra sampling parameters, as clients send them through the real `openai` client's `extra_body`, against a
real uvicorn server on 127.0.0.1. Oracles: what vLLM documents for each, and neurallayers.generate with the same
settings (top_k -1 as 0, min_tokens as min_new_tokens, truncate_prompt_tokens as the prompt's last tokens, cut as
transformers cuts with truncation_side="left"); a parameter this server cannot honour is a 400 naming it."""

from __future__ import annotations

import pytest
from nl_serve_helpers import assert_ok_after, serving, write_run_dir

import neurallayers
from neurallayers.data.tokenizers import Tokenizer

openai = pytest.importorskip("openai")

PROMPT = "The quick brown"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("vllm") / "tiny-char")


def complete(client, prompt=PROMPT, **kw):
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    extra = {k: kw.pop(k) for k in list(kw) if k not in ("max_tokens", "temperature", "seed", "n", "logit_bias")}
    return client.completions.create(model="tiny-char", prompt=prompt, extra_body=extra, **kw)


def oracle(loaded, prompt=PROMPT, **kw):
    model, tok = loaded
    return neurallayers.generate(model, tok, prompt, **kw)[0]


def refused(call, param: str) -> str:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    assert e.value.body["param"] == param, e.value.body
    return e.value.body["message"]


def test_top_k_minus_one_means_every_token_as_in_vllm(client, loaded):
    kw = dict(max_tokens=12, temperature=1.5, seed=7)
    got = complete(client, top_k=-1, **kw).choices[0].text
    assert got == complete(client, top_k=0, **kw).choices[0].text
    assert got == oracle(loaded, max_new_tokens=12, temperature=1.5, seed=7, top_k=0).text
    chat = client.chat.completions.create(model="tiny-char", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, extra_body={"top_k": -1})
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert "top_k" in refused(lambda: complete(client, top_k=-2), "top_k")


def test_a_negative_seed_is_a_seed_and_minus_one_none_as_in_vllm(client, loaded, server):
    kw = dict(max_tokens=12, temperature=1.5)
    out = complete(client, seed=-5, n=2, **kw)
    assert out.choices[0].text == oracle(loaded, max_new_tokens=12, temperature=1.5, seed=-5).text
    assert out.choices[1].text == oracle(loaded, max_new_tokens=12, temperature=1.5, seed=-4).text
    assert out.choices[0].text == complete(client, seed=-5, **kw).choices[0].text
    assert len(complete(client, seed=-1, n=2, **kw).choices) == 2  # no seed: fresh samples
    refused(lambda: complete(client, seed=-(2**63) - 1), "seed")
    assert_ok_after(server.url)


def test_min_tokens_holds_back_end_of_text_as_min_new_tokens_does(client, loaded):
    tok = loaded[1]
    eos = {str(tok.eos_id): 100}  # the model would end at once
    assert complete(client, logit_bias=eos).usage.completion_tokens == 1
    out = complete(client, logit_bias=eos, min_tokens=4)
    want = oracle(loaded, max_new_tokens=8, temperature=0, logit_bias={tok.eos_id: 100}, min_new_tokens=4)
    assert out.choices[0].text == want.text and len(want.token_ids) == 4
    assert out.choices[0].finish_reason == want.finish_reason == "stop"
    assert out.usage.completion_tokens == want.completion_tokens == 5  # the four, then end-of-text
    chat = client.chat.completions.create(model="tiny-char", messages=[{"role": "user", "content": "hi"}],
                                          logit_bias=eos, extra_body={"min_tokens": 3})
    assert chat.usage.completion_tokens == 4 and chat.choices[0].finish_reason == "stop"


def test_min_tokens_holds_back_stop_token_ids_too(client, loaded):
    tok = loaded[1]
    o = tok.encode("o")[0]
    out = complete(client, logit_bias={str(o): 100}, stop_token_ids=[o], min_tokens=3)
    want = oracle(loaded, max_new_tokens=8, temperature=0, logit_bias={o: 100}, stop_token_ids=[o],
                  min_new_tokens=3)
    assert out.choices[0].text == want.text and len(want.token_ids) == 3 and "o" not in want.text
    assert out.usage.completion_tokens == want.completion_tokens == 4


def test_min_tokens_over_max_tokens_is_400_naming_it(client, server):
    assert "more than the 2 tokens" in refused(lambda: complete(client, max_tokens=2, min_tokens=3), "min_tokens")
    refused(lambda: complete(client, min_tokens=-1), "min_tokens")
    assert_ok_after(server.url)


def test_truncate_prompt_tokens_keeps_the_last_tokens_of_the_prompt(client, loaded):
    model, tok = loaded
    ids = tok.encode(PROMPT * 3)
    out = complete(client, prompt=ids, truncate_prompt_tokens=5)
    assert out.usage.prompt_tokens == 5
    assert out.choices[0].text == neurallayers.generate(model, tok, [ids[-5:]], max_new_tokens=8,
                                                         temperature=0)[0].text
    # a text over the context (64 tokens) is fine once cut: it is not refused before it is tokenized
    long = "The quick brown fox " * 10
    out = complete(client, prompt=long, truncate_prompt_tokens=10, max_tokens=4)
    assert out.usage.prompt_tokens == 10
    assert out.choices[0].text == neurallayers.generate(model, tok, [tok.encode(long)[-10:]], max_new_tokens=4,
                                                         temperature=0)[0].text


def test_truncate_prompt_tokens_out_of_range_is_400(client, server):
    assert "context length" in refused(lambda: complete(client, truncate_prompt_tokens=65), "truncate_prompt_tokens")
    refused(lambda: complete(client, truncate_prompt_tokens=0), "truncate_prompt_tokens")
    # echo would show a text the model did not read (and logprobs' text offsets that do not fit it)
    assert "echo" in refused(lambda: complete(client, truncate_prompt_tokens=4, echo=True, logprobs=1),
                             "truncate_prompt_tokens")
    assert_ok_after(server.url)


def test_a_tokenizer_that_adds_a_bos_under_truncate_prompt_tokens_and_add_special_tokens(tmp_path):
    """vLLM cuts with its transformers tokenizer (truncation_side="left"): the post-processor's bos stays first and
    counts toward the k tokens, the text's own tokens are cut; add_special_tokens says whether the bos is added."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import processors

    run_dir = write_run_dir(tmp_path / "tiny-char")
    tok = Tokenizer.load(run_dir)
    tok.hf.post_processor = processors.TemplateProcessing(single=f"{tok.eos_token} $A",
                                                          special_tokens=[(tok.eos_token, tok.eos_id)])
    tok.save(run_dir)
    model, tok = neurallayers.load(run_dir)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, truncation_side="left")
    text = "The quick brown fox jumps"
    want = hf(text, truncation=True, max_length=6)["input_ids"]
    assert len(want) == 6 and want[0] == tok.eos_id and want[1:] == tok.encode(text)[-5:]
    with serving(run_dir) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = complete(client, prompt=text, truncate_prompt_tokens=6)
        # vLLM's add_special_tokens: true by default on completions (as generate() encodes), false in chat (the
        # rendered template holds its own)
        bare = complete(client, prompt=text, add_special_tokens=False)
        assert complete(client, prompt=text).choices[0].text == oracle((model, tok), text, max_new_tokens=8,
                                                                       temperature=0).text
        hi = [{"role": "user", "content": "hi"}]
        chats = [client.chat.completions.create(model="tiny-char", messages=hi, max_tokens=1, extra_body=extra)
                 for extra in ({}, {"add_special_tokens": True})]
    assert out.usage.prompt_tokens == 6
    assert out.choices[0].text == neurallayers.generate(model, tok, [want], max_new_tokens=8, temperature=0)[0].text
    assert bare.usage.prompt_tokens == len(tok.encode(text))
    assert bare.choices[0].text == neurallayers.generate(model, tok, [tok.encode(text)], max_new_tokens=8,
                                                          temperature=0)[0].text
    assert chats[1].usage.prompt_tokens == chats[0].usage.prompt_tokens + 1


def test_the_other_sampling_parameters_equal_generate(client, loaded):
    tok = loaded[1]
    o = tok.encode("o")[0]
    vllm = dict(min_p=0.05, repetition_penalty=1.3, stop_token_ids=[o], ignore_eos=True, top_k=5)
    out = complete(client, max_tokens=16, temperature=1.2, seed=11, logit_bias={str(tok.eos_id): 5}, **vllm)
    want = oracle(loaded, max_new_tokens=16, temperature=1.2, seed=11, logit_bias={tok.eos_id: 5}, **vllm)
    assert out.choices[0].text == want.text and out.choices[0].finish_reason == want.finish_reason
    assert out.usage.completion_tokens == want.completion_tokens


# vLLM parameters at their default: the behaviour this server has, so taken; any other value is refused
DEFAULT_ONLY = [
    ("use_beam_search", False, True),
    ("length_penalty", 1.0, 2.0),
    ("best_of", 1, 2),
    ("response_format", {"type": "text"}, {"type": "json_object"}),
]


@pytest.mark.parametrize("name, default, other", DEFAULT_ONLY, ids=[c[0] for c in DEFAULT_ONLY])
def test_a_default_is_taken_and_another_value_refused_naming_the_field(client, server, name, default, other):
    plain = complete(client).choices[0].text
    assert complete(client, **{name: default}).choices[0].text == plain
    assert "not supported" in refused(lambda: complete(client, **{name: other}), name)
    assert_ok_after(server.url)


def test_best_of_equal_to_n_returns_the_n_choices(client):
    kw = dict(n=2, temperature=1.0, seed=3)
    texts = [c.text for c in complete(client, best_of=2, **kw).choices]
    assert len(texts) == 2 and texts == [c.text for c in complete(client, **kw).choices]
    # fewer candidates than choices: OpenAI's rule, named as such (it said "more candidates than n")
    assert refused(lambda: complete(client, best_of=1, **kw), "best_of") == "best_of=1 must be >= n=2"


@pytest.mark.parametrize("name, value", [
    ("guided_json", {"type": "object"}), ("guided_regex", "a+"), ("guided_choice", ["yes", "no"]),
    ("guided_grammar", "root ::= 'a'"), ("structural_tag", "{}"), ("allowed_token_ids", [1, 2]),
    ("bad_words", ["fox"]), ("prompt_logprobs", 1), ("logits_processors", ["x.y"]),
    # vLLM's scheduling / tracing / token-id fields: "not supported", not "unknown field (did you mean ...)"
    ("priority", 1), ("request_id", "abc"), ("return_token_offsets", True), ("session_id", "abc"),
    ("cache_salt", "s" * 43), ("include_reasoning", False)])
def test_structured_output_and_other_vllm_parameters_are_refused_as_unsupported(client, server, name, value):
    assert "not supported" in refused(lambda: complete(client, **{name: value}), name)
    assert complete(client, **{name: None}).choices[0].text == complete(client).choices[0].text  # null: absent
    assert_ok_after(server.url)
