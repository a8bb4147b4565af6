"""vLLM's Tokenizer API against a real uvicorn server on 127.0.0.1, with transformers as the oracle: /tokenize of a
chat takes the chat route's add_generation_prompt, continue_final_message, chat_template_kwargs and
add_special_tokens with their meaning and refusals, and gives the ids /v1/chat/completions feeds and counts;
return_token_strs; /detokenize keeps special tokens, as vLLM's does, so a rendered chat round-trips."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import assert_ok_after, write_run_dir

import neurallayers
from neurallayers.data.tokenizers import Tokenizer

openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

# bos / eos are special tokens the template writes; the roles and contents use only characters the tokenizer knows,
# so the rendered text decodes back exactly
TEMPLATE = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }} {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant {% if enable_thinking is defined and enable_thinking is false %}"
            "ok! {% endif %}{% endif %}")
PREFILL = [{"role": "user", "content": "the quick"}, {"role": "assistant", "content": "brown fox"}]
OPTIONS = [{}, {"add_generation_prompt": False}, {"continue_final_message": True},
           {"continue_final_message": True, "add_generation_prompt": False},
           {"chat_template_kwargs": {"enable_thinking": False}}, {"add_special_tokens": True}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tokenizers import processors

    path = write_run_dir(tmp_path_factory.mktemp("routes30") / "tiny-char", chat_template=TEMPLATE)
    tok = Tokenizer.load(path)
    # a post-processor that puts a bos first, as a Llama tokenizer's does: add_special_tokens then matters
    tok.hf.post_processor = processors.TemplateProcessing(single=f"{tok.eos_token} $A",
                                                          special_tokens=[(tok.eos_token, tok.eos_id)])
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def hf(run_dir):
    tok = neurallayers.load(run_dir)[1]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=TEMPLATE,
                                                bos_token=tok.bos_token, eos_token=tok.eos_token)


def tokenize(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/tokenize", json=body, timeout=30)


def oracle_ids(hf, messages, options: dict) -> list[int]:
    """transformers' ids of the chat as vLLM makes them: the rendered template, then the tokenizer's special tokens
    only when add_special_tokens is sent true."""
    cont = options.get("continue_final_message", False)
    text = hf.apply_chat_template(messages, tokenize=False, continue_final_message=cont,
                                  add_generation_prompt=options.get("add_generation_prompt", not cont),
                                  **options.get("chat_template_kwargs", {}))
    return hf(text, add_special_tokens=options.get("add_special_tokens", False))["input_ids"]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_tokenize_gives_the_ids_the_chat_route_feeds(server, client, hf, options):
    got = tokenize(server, messages=PREFILL, **options)
    assert got.status_code == 200, got.text
    ids = got.json()["tokens"]
    assert ids == oracle_ids(hf, PREFILL, options) and got.json()["count"] == len(ids)
    chat = client.chat.completions.create(model="tiny-char", messages=PREFILL, max_tokens=4, temperature=0,
                                          extra_body=options)
    assert chat.usage.prompt_tokens == len(ids)
    # the same ids, not just as many: the reply is the completion of exactly those ids
    assert chat.choices[0].message.content == client.completions.create(
        model="tiny-char", prompt=ids, max_tokens=4, temperature=0).choices[0].text


def test_the_options_change_the_ids(server):
    """(So the test above compares different prompts, not one prompt six times.)"""
    seen = {tuple(tokenize(server, messages=PREFILL, **options).json()["tokens"]) for options in OPTIONS}
    assert len(seen) == len(OPTIONS) - 1  # continue_final_message alone and with add_generation_prompt false agree


@pytest.mark.parametrize("body, param", [
    ({"messages": PREFILL, "continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
    ({"messages": PREFILL[:1], "continue_final_message": True}, "continue_final_message"),
    ({"messages": PREFILL, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"messages": PREFILL, "chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
    ({"prompt": "the fox", "add_generation_prompt": False}, "add_generation_prompt"),
    ({"prompt": "the fox", "continue_final_message": True}, "continue_final_message"),
    ({"prompt": "the fox", "chat_template_kwargs": {}}, "chat_template_kwargs"),
    ({"prompt": "the fox", "return_token_strs": "yes"}, "return_token_strs"),
])
def test_tokenize_refuses_what_the_chat_route_refuses(server, body, param):
    r = tokenize(server, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    if "messages" in body:  # the chat route refuses the same request the same way
        chat = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 1}, timeout=30)
        assert chat.status_code == 400 and chat.json()["error"]["param"] == param, chat.text
    assert_ok_after(server.url)


def test_null_options_mean_their_defaults_as_in_chat(server):
    plain = tokenize(server, messages=PREFILL).json()
    nulls = {"add_generation_prompt": None, "continue_final_message": None, "chat_template_kwargs": None,
             "add_special_tokens": None, "return_token_strs": None}
    assert tokenize(server, messages=PREFILL, **nulls).json() == plain


def test_a_prompts_special_tokens_as_completions_reads_them(server, client, hf):
    text = "the quick fox"
    for special in (True, False):
        ids = tokenize(server, prompt=text, add_special_tokens=special).json()["tokens"]
        assert ids == hf(text, add_special_tokens=special)["input_ids"]
        out = client.completions.create(model="tiny-char", prompt=text, max_tokens=1,
                                         extra_body={"add_special_tokens": special})
        assert out.usage.prompt_tokens == len(ids)
    assert tokenize(server, prompt=text).json()["tokens"] == hf(text)["input_ids"]  # true by default, as vLLM


def test_return_token_strs(server, hf):
    for body in ({"prompt": "héllo 🙂"}, {"messages": PREFILL}):
        got = tokenize(server, **body, return_token_strs=True).json()
        assert got["token_strs"] == hf.convert_ids_to_tokens(got["tokens"])
        assert "token_strs" not in tokenize(server, **body).json()


def test_detokenize_round_trips_a_rendered_chat(server, hf):
    """The template's special tokens (and a bos) were dropped: the text did not tokenize back to the ids."""
    for body in ({"messages": PREFILL}, {"messages": PREFILL, "continue_final_message": True},
                 {"prompt": "the quick fox"}):
        ids = tokenize(server, **body).json()["tokens"]
        text = httpx.post(f"{server.url}/detokenize", json={"tokens": ids}, timeout=30).json()["prompt"]
        assert text == hf.decode(ids)  # transformers keeps special tokens by default, as vLLM's /detokenize
        assert tokenize(server, prompt=text, add_special_tokens=False).json()["tokens"] == ids
    rendered = hf.apply_chat_template(PREFILL, tokenize=False, add_generation_prompt=True)
    ids = tokenize(server, messages=PREFILL).json()["tokens"]
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": ids}).json()["prompt"] == rendered
