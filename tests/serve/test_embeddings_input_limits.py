"""/v1/embeddings as vLLM's serving_embedding takes an input: add_special_tokens (default true) and an input longer
than max_model_len, refused with a 400 naming both numbers unless truncate_prompt_tokens is sent (OpenAI refuses it
too). Through the real `openai` client against a real server of the real all-MiniLM-L6-v2 weights. Oracle:
transformers' BertModel and tokenizer on the same folder (its counts, its add_special_tokens), mean-pooled and
L2-normalized as the model's sentence-transformers folder says."""

from __future__ import annotations

import os

import numpy as np
import pytest
from nl_serve_helpers import serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length: the server's max_model_len
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog near the river bank."]


@pytest.fixture(scope="module")
def folder():
    from neurallayers.embeddings import minilm_folder

    return minilm_folder()


@pytest.fixture(scope="module")
def server(folder):
    with serving(str(folder), model_name="minilm") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def hf(folder):
    return transformers.AutoTokenizer.from_pretrained(folder), transformers.AutoModel.from_pretrained(folder).eval()


def oracle(hf, texts, *, special: bool = True, keep: int | None = None, side: str = "left",
           slice_ids: bool = False) -> tuple[np.ndarray, int]:
    """transformers' embeddings of texts cut to `keep` tokens on `side` by the tokenizer (its special tokens kept) or,
    slice_ids, as vLLM's renderer cuts for an explicit truncation_side "left": the whole encoding's last keep ids."""
    tok, model = hf
    tok.truncation_side = side
    if slice_ids:
        ids = [tok(t, add_special_tokens=special)["input_ids"][-keep:] for t in texts]
        batch = tok.pad({"input_ids": ids}, return_tensors="pt")
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    else:
        cut = {} if keep is None else {"truncation": True, "max_length": keep}
        batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=special, **cut)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return vectors.numpy(), int(batch["attention_mask"].sum())


def words(n: int) -> str:
    """A text of n WordPiece tokens without its special tokens ("w3" is two: "w", "##3")."""
    return " ".join(["fox"] * n)


@pytest.mark.parametrize("special", [True, False])
def test_add_special_tokens_as_vllm(client, hf, special):
    out = client.embeddings.create(model="minilm", input=TEXTS, extra_body={"add_special_tokens": special})
    want, tokens = oracle(hf, TEXTS, special=special)
    assert np.abs(np.array([d.embedding for d in out.data]) - want).max() < 1e-5
    assert out.usage.prompt_tokens == tokens == sum(len(hf[0](t)["input_ids"]) - 2 * (not special) for t in TEXTS)


@pytest.mark.parametrize("special, n, refused", [(True, LIMIT - 2, False), (True, LIMIT - 1, True),
                                                 (False, LIMIT, False), (False, LIMIT + 1, True)])
def test_an_input_over_max_model_len_is_refused_naming_the_lengths(client, hf, special, n, refused):
    text = words(n)
    count = len(hf[0](text, add_special_tokens=special)["input_ids"])  # the oracle's count: n (+ [CLS] [SEP])
    assert count == n + 2 * special
    kw = dict(model="minilm", input=["hello", text], extra_body={"add_special_tokens": special})
    if not refused:
        out = client.embeddings.create(**kw)
        assert np.abs(np.array(out.data[1].embedding) - oracle(hf, [text], special=special)[0][0]).max() < 1e-5
        return
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(**kw)
    body = e.value.body
    assert (body["param"], body["code"]) == ("input", "context_length_exceeded")
    assert (f"This model's maximum context length is {LIMIT} tokens. However, you requested {count} tokens in "
            "input[1]") in body["message"] and "truncate_prompt_tokens" in body["message"]
    assert client.embeddings.create(model="minilm", input="hello").data  # still serving


@pytest.mark.parametrize("keep", [-1, 100])
def test_truncate_prompt_tokens_takes_a_longer_input(client, hf, keep):
    text = words(LIMIT + 40)
    out = client.embeddings.create(model="minilm", input=text, extra_body={"truncate_prompt_tokens": keep})
    want, tokens = oracle(hf, [text], keep=LIMIT if keep == -1 else keep)
    assert np.abs(np.array(out.data[0].embedding) - want[0]).max() < 1e-5
    assert out.usage.prompt_tokens == tokens == (LIMIT if keep == -1 else keep)


@pytest.mark.parametrize("side", ["left", "right", None])
def test_truncation_side_picks_the_end_that_is_cut(client, hf, side):
    """vLLM's renderer: "left" sent slices the encoded ids (the last 100: [CLS] cut, [SEP] kept); "right" sent, or
    none (then the start is cut), the tokenizer cuts, keeping both."""
    text = "the start of it " + words(LIMIT) + " and its very end"
    out = client.embeddings.create(model="minilm", input=text,
                                   extra_body={"truncate_prompt_tokens": 100, "truncation_side": side})
    want, tokens = oracle(hf, [text], keep=100, side=side or "left", slice_ids=side == "left")
    assert np.abs(np.array(out.data[0].embedding) - want[0]).max() < 1e-5
    others = [oracle(hf, [text], keep=100, side=s, slice_ids=ids)[0] for s, ids in
              (("left", True), ("right", False), ("left", False)) if (s, ids) != (side or "left", side == "left")]
    for other in others:  # the three cuts embed differently: the test tells them apart
        assert np.abs(want[0] - other[0]).max() > 1e-3
    assert out.usage.prompt_tokens == tokens == 100
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="hello", extra_body={"truncation_side": "both"})
    assert e.value.body["param"] == "truncation_side"


@pytest.mark.parametrize("route, field", [("predict", "prompt"), ("batch_predict", "prompts")])
def test_predict_refuses_a_text_over_max_model_len_instead_of_cutting_it(server, hf, route, field):
    import httpx

    text = words(LIMIT)  # LIMIT + 2 tokens with [CLS] and [SEP]
    r = httpx.post(f"{server.url}/{route}", json={field: text if route == "predict" else ["hello", text]}, timeout=60)
    assert r.status_code == 400, r.text
    body = r.json()["error"]
    where = field if route == "predict" else f"{field}[1]"
    assert (body["param"], body["code"]) == (field, "context_length_exceeded")
    assert (f"maximum context length is {LIMIT} tokens. However, you requested {LIMIT + 2} tokens in {where}"
            in body["message"])
    fits = words(LIMIT - 2)
    r = httpx.post(f"{server.url}/{route}", json={field: fits if route == "predict" else [fits]}, timeout=60)
    got = r.json() if route == "predict" else r.json()["predictions"][0]
    assert np.abs(np.array(got["embedding"]) - oracle(hf, [fits])[0][0]).max() < 1e-5
    assert got["usage"]["prompt_tokens"] == LIMIT


def test_add_special_tokens_must_be_a_boolean(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="hello", extra_body={"add_special_tokens": "no"})
    assert e.value.body["param"] == "add_special_tokens"
    assert client.embeddings.create(model="minilm", input="hello").data  # still serving


def test_embed_without_special_tokens_equals_transformers(hf):
    from neurallayers.embeddings import embed, load_minilm, token_counts

    model, tok = load_minilm()
    got = embed(model, tok, TEXTS, add_special_tokens=False).numpy()
    assert np.abs(got - oracle(hf, TEXTS, special=False)[0]).max() < 1e-5
    assert token_counts(tok, TEXTS, add_special_tokens=False) == [len(hf[0](t)["input_ids"]) - 2 for t in TEXTS]
    with pytest.raises(ValueError, match="add_special_tokens='no': must be True or False"):
        embed(model, tok, TEXTS, add_special_tokens="no")


def test_max_model_len_bounds_an_encoders_inputs(folder, hf):
    """vLLM's --max-model-len bounds an embedding model's inputs too (it was refused for encoders): a longer input
    is a 400 naming the bound, truncate_prompt_tokens -1 keeps that many tokens, /v1/models and /tokenize say it."""
    import httpx

    short = 16
    with serving(str(folder), model_name="minilm", max_model_len=short) as srv:
        c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert httpx.get(f"{srv.url}/v1/models/minilm").json()["max_model_len"] == short
        assert httpx.post(f"{srv.url}/tokenize", json={"prompt": "x"}).json()["max_model_len"] == short
        fits = c.embeddings.create(model="minilm", input=words(short - 2))  # with [CLS] and [SEP]
        assert np.abs(np.array(fits.data[0].embedding) - oracle(hf, [words(short - 2)])[0][0]).max() < 1e-5
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model="minilm", input=words(short - 1))
        assert f"maximum context length is {short} tokens. However, you requested {short + 1} tokens" in \
            e.value.body["message"]
        out = c.embeddings.create(model="minilm", input=words(40), extra_body={"truncate_prompt_tokens": -1})
        want, tokens = oracle(hf, [words(40)], keep=short)
        assert np.abs(np.array(out.data[0].embedding) - want[0]).max() < 1e-5 and out.usage.prompt_tokens == short
    from neurallayers.serve.app import create_app

    with pytest.raises(ValueError, match="more than the model's context length 512"):
        create_app(str(folder), max_model_len=513)
