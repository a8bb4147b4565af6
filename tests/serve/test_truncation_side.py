"""vLLM's truncation_side beside truncate_prompt_tokens, and -1 / a too-large k as vLLM's renderer takes them, through
the real `openai` client against a real server on 127.0.0.1, with a tokenizer that adds a bos (so the sides differ).

Oracle: vLLM's TokenizeParams rule on the same transformers tokenizer: without truncation_side the tokenizer cuts
(truncation_side "left": the text's own tokens from the start, the bos kept first); with it, the whole encoded prompt
is sliced, "left" keeping its last k ids and "right" its first k (the bos counted as one); -1 keeps max_model_len -
max_tokens; a larger k is refused. The completion then equals neurallayers.generate on those ids."""

from __future__ import annotations

import pytest
from nl_serve_helpers import assert_ok_after, write_run_dir

import neurallayers
from neurallayers.data.chat import render_chat
from neurallayers.data.tokenizers import Tokenizer

openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

TEXT = "The quick brown fox jumps"
BLOCK = 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tokenizers import processors

    run_dir = write_run_dir(tmp_path_factory.mktemp("trunc-side") / "tiny-char", block_size=BLOCK)
    tok = Tokenizer.load(run_dir)  # a bos (the eos token) before every text, as a Llama tokenizer adds <s>
    tok.hf.post_processor = processors.TemplateProcessing(single=f"{tok.eos_token} $A",
                                                          special_tokens=[(tok.eos_token, tok.eos_id)])
    tok.save(run_dir)
    return run_dir


def vllm_ids(loaded, text: str, keep: int, side: str | None, *, special: bool = True) -> list[int]:
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=loaded[1].hf, truncation_side="left")
    if side is None:
        return hf(text, truncation=True, max_length=keep, add_special_tokens=special)["input_ids"]
    full = hf(text, add_special_tokens=special)["input_ids"]
    return full[-keep:] if side == "left" else full[:keep]


def complete(client, prompt=TEXT, max_tokens=4, ids=True, **extra):
    return client.completions.create(model="tiny-char", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     extra_body={"return_token_ids": ids, **extra})


def greedy(loaded, ids: list[int], n: int) -> str:
    return neurallayers.generate(*loaded, [ids], max_new_tokens=n, temperature=0)[0].text


@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("keep", [3, 6])
def test_completions_keep_the_ids_vllm_keeps(client, loaded, side, keep):
    want = vllm_ids(loaded, TEXT, keep, side)
    assert len(want) == keep
    c = complete(client, truncate_prompt_tokens=keep, truncation_side=side).choices[0]
    assert c.model_extra["prompt_token_ids"] == want
    assert c.text == greedy(loaded, want, 4)
    if side is not None:  # the bos counts as a token: only "right" keeps it
        assert (want[0] == loaded[1].eos_id) == (side == "right")


def test_token_id_prompts_and_chat_are_cut_on_the_side_sent(client, loaded):
    ids = loaded[1].encode(TEXT)
    for side, want in (("right", ids[:5]), ("left", ids[-5:]), (None, ids[-5:])):
        c = complete(client, prompt=[ids, ids], truncate_prompt_tokens=5, truncation_side=side).choices
        assert [x.model_extra["prompt_token_ids"] for x in c] == [want, want]
    messages = [{"role": "user", "content": TEXT}]
    rendered = vllm_ids(loaded, render_chat(loaded[1], messages), 10 ** 6, None, special=False)  # chat adds no bos
    for side, want in (("right", rendered[:7]), ("left", rendered[-7:])):
        out = client.chat.completions.create(model="tiny-char", messages=messages, max_tokens=3, temperature=0,
                                             extra_body={"truncate_prompt_tokens": 7, "truncation_side": side,
                                                         "return_token_ids": True})
        assert out.model_extra["prompt_token_ids"] == want and out.usage.prompt_tokens == 7


def test_minus_one_keeps_what_the_context_holds_beside_max_tokens(client, loaded):
    long = "The quick brown fox " * 10  # 200 characters: over the 64-token context
    for side in (None, "left", "right"):
        c = complete(client, prompt=long, max_tokens=4, truncate_prompt_tokens=-1, truncation_side=side).choices[0]
        want = vllm_ids(loaded, long, BLOCK - 4, side)
        assert c.model_extra["prompt_token_ids"] == want and c.text == greedy(loaded, want, 4)


def test_a_k_the_context_cannot_hold_beside_max_tokens_is_refused(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, max_tokens=10, ids=None, truncate_prompt_tokens=60)  # 60 + 10 > 64: a short prompt too
    body = e.value.body
    assert body["param"] == "truncate_prompt_tokens"
    assert "truncate_prompt_tokens=60" in body["message"] and "64" in body["message"] and "54" in body["message"]
    assert complete(client, max_tokens=10, truncate_prompt_tokens=54).choices[0].finish_reason  # the most it holds
    assert_ok_after(server.url)


def test_a_side_other_than_left_or_right_is_refused_and_alone_it_cuts_nothing(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, ids=None, truncate_prompt_tokens=3, truncation_side="middle")
    assert e.value.body["param"] == "truncation_side"
    assert "'left'" in e.value.body["message"] and "'right'" in e.value.body["message"]
    plain = complete(client).choices[0]
    alone = complete(client, truncation_side="right").choices[0]  # vLLM: the side of a truncation, none asked
    assert alone.model_extra["prompt_token_ids"] == plain.model_extra["prompt_token_ids"]
    assert alone.text == plain.text
    assert_ok_after(server.url)
