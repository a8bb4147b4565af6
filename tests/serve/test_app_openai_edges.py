"""Edges of the OpenAI routes that a random model hides, on a model whose every next token is known: a bigram
"cycle" model that, after each character of CYCLE, greedily writes the next one (after ":" a space, then "hi",
a newline, "user:" ...). Oracles: the documented behaviour, the non-streaming answer, and generate().
"""

from __future__ import annotations

import httpx
import pytest
import torch
from nl_serve_helpers import serving

import neurallayers
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model

openai = pytest.importorskip("openai")

CYCLE = "\nuser: hi"  # distinct characters: each one's successor is the next, the last one's the first
# the default template's text, as a tokenizer's own template
ROLE_LINES = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")


def cycle_model(chat_template: str | None = None):
    """(model, tokenizer): a char-level decoder whose logits depend only on the last token (blocks and positions
    zeroed), peaked on that character's successor in CYCLE."""
    tok = Tokenizer.train_char([CYCLE + "assistant"])
    tok.chat_template = chat_template
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=64,
                      tie_embeddings=False)
    model = build_model(cfg).eval()
    ids = [tok.encode(c)[0] for c in CYCLE]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias")) \
                    or name in ("wpe.weight", "lm_head.weight"):
                p.zero_()
        model.wte.weight.copy_(torch.eye(cfg.vocab_size, cfg.n_embd))  # the hidden state is one-hot of the token
        for k, t in enumerate(ids):
            model.lm_head.weight[ids[(k + 1) % len(ids)], t] = 20.0
    return model, tok


@pytest.fixture(scope="module")
def cycle():
    return cycle_model()


@pytest.fixture(scope="module")
def server(cycle):
    with serving(cycle, model_name="cycle", max_concurrency=2, max_queue=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_cycle_model_writes_the_next_turn(cycle):
    out = neurallayers.generate(*cycle, "user: hi\nassistant:", max_new_tokens=12, temperature=0)[0]
    assert out.text == " hi\nuser: hi"


def test_echo_returns_the_prompt_as_sent(client, cycle):
    # "Z" and "q" are not in the vocabulary: the prompt's tokens decode to "<unk>..." but echo gives back the text
    prompt = "Zq user"
    assert cycle[1].decode(cycle[1].encode(prompt)) != prompt
    out = client.completions.create(model="cycle", prompt=prompt, max_tokens=3, temperature=0, echo=True)
    assert out.choices[0].text == prompt + ": h"
    many = client.completions.create(model="cycle", prompt=[prompt, "us"], max_tokens=2, temperature=0, echo=True)
    assert [c.text for c in many.choices] == [prompt + ": ", "user"]
    chunks = list(client.completions.create(model="cycle", prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    ids = cycle[1].encode("us")  # token ids are echoed decoded
    assert client.completions.create(model="cycle", prompt=ids, max_tokens=1, temperature=0,
                                     echo=True).choices[0].text == "use"


def test_streamed_text_offsets_equal_the_whole_answers_while_a_stop_string_holds_text(client):
    # "e" could start the stop string "eQ", so its text waits for the next token: its offset must not
    kw = dict(model="cycle", prompt="u", max_tokens=8, temperature=0, logprobs=1, stop=["eQ"])
    whole = client.completions.create(**kw).choices[0]
    assert whole.text == "ser: hi\n"
    tokens, offsets, text = [], [], ""
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                offsets += c.logprobs.text_offset
    assert text == whole.text and tokens == whole.logprobs.tokens
    assert offsets == whole.logprobs.text_offset == list(range(8))


def test_echoed_text_offsets_index_the_text_sent_as_the_tokenizer_aligns_it():
    """OpenAI's text_offset is where each token starts in the returned text: with a text prompt echoed as sent, a bos
    the post-processor adds is not in it and an unknown character reads "<unk>", so the tokens' texts summed put
    "Z" past the text's end and the completion's tokens before the prompt's. Oracle: transformers' offset mapping."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import processors

    model, tok = cycle_model()
    tok.hf.post_processor = processors.TemplateProcessing(single=f"{tok.eos_token} $A",
                                                          special_tokens=[(tok.eos_token, tok.eos_id)])
    prompt = "Zq user"  # "Z" and "q" are not in the vocabulary
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf)
    want = [start for start, _ in hf(prompt, return_offsets_mapping=True)["offset_mapping"]]
    assert want[:3] == [0, 0, 1]  # the bos covers no text: it sits where the text starts
    body = {"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 1}
    with serving((model, tok), model_name="bos") as srv:
        whole = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()["choices"][0]
        with httpx.stream("POST", f"{srv.url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            head = next(line for line in r.iter_lines() if line.startswith("data: {"))
    assert whole["text"] == prompt + ": h"
    offsets = whole["logprobs"]["text_offset"]
    assert offsets == [*want, len(prompt), len(prompt) + 1, len(prompt) + 2]
    assert '"text_offset":' + str(want).replace(" ", "") in head  # the streamed prompt chunk's too


def test_chat_with_the_default_template_ends_at_the_next_user_line(client):
    messages = [{"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model="cycle", messages=messages, max_tokens=20, temperature=0)
    assert out.choices[0].message.content == " hi" and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == len(" hi\nuser:")  # the stop string's tokens count, as OpenAI's do
    chunks = list(client.chat.completions.create(model="cycle", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " hi"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_with_the_tokenizers_own_template_is_not_cut_at_user_lines():
    model, tok = cycle_model(chat_template=ROLE_LINES)  # the model's turn ends with eos, which it never writes
    with serving((model, tok), model_name="templated") as srv:
        r = httpx.post(f"{srv.url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == " hi\nuser: hi"


def test_batch_predict_errors_name_the_prompts_field(server):
    r = httpx.post(f"{server.url}/batch_predict", json={"prompts": ["us"] * 5}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"
    r = httpx.post(f"{server.url}/batch_predict", json={"prompts": ["us", "u" * 70]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"
    assert r.json()["error"]["message"].startswith("prompts[1] has 70")


def test_an_api_key_read_with_a_trailing_newline_still_authenticates(cycle):
    # a key from a secret file often ends with a newline, which no HTTP client can send in a header
    with serving(cycle, model_name="cycle", api_key="sk-local\n") as srv:
        ok = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-local", max_retries=0)
        assert ok.models.list().data[0].id == "cycle"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-loca", max_retries=0).models.list()


def test_stop_token_ids_and_ignore_eos_as_vllm_takes_them(client, cycle):
    tok = cycle[1]
    h = tok.encode("h")[0]
    kw = dict(model="cycle", prompt="user:", max_tokens=8, temperature=0, logprobs=0)
    out = client.completions.create(**kw, extra_body={"stop_token_ids": [h]}).choices[0]
    assert out.text == " " and out.finish_reason == "stop"  # the stop token is not returned, but listed last
    assert out.logprobs.tokens == [" ", "h"]
    chat = client.chat.completions.create(model="cycle", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                          temperature=0, extra_body={"stop_token_ids": [h]})
    assert chat.choices[0].message.content == " " and chat.usage.completion_tokens == 2
    eos = {str(tok.eos_id): 100, str(tok.encode(" ")[0]): -100}  # the model ends at once ...
    assert client.completions.create(**kw, logit_bias=eos).choices[0].finish_reason == "stop"
    kept = client.completions.create(**kw, logit_bias=eos, extra_body={"ignore_eos": True})  # ... unless told not to
    assert kept.choices[0].finish_reason == "length" and kept.usage.completion_tokens == 8
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**kw, extra_body={"stop_token_ids": [tok.vocab_size]})
    assert e.value.body["param"] == "stop_token_ids"


def test_too_many_top_logprobs_for_the_vocabulary_names_the_field_sent(server, cycle):
    vocab = cycle[1].vocab_size  # 14: fewer than the 20 alternatives OpenAI allows
    r = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": vocab + 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs", r.text
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi", "logprobs": vocab + 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text
