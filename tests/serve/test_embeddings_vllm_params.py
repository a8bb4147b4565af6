"""vLLM's truncate_prompt_tokens and normalize on /v1/embeddings, through the real `openai` client (extra_body)
against a real server of the real all-MiniLM-L6-v2 weights. Oracle: transformers' BertModel on the same folder, its
tokenizer cutting with truncation_side="left" as vLLM's does (the special tokens stay and count), mean-pooled, then
L2-normalized unless normalize is false."""

from __future__ import annotations

import os

import numpy as np
import pytest
from nl_serve_helpers import serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog near the river bank.", "a b c d e f g h i j"]


@pytest.fixture(scope="module")
def folder():
    from neurallayers.embeddings import minilm_folder

    return minilm_folder()


@pytest.fixture(scope="module")
def client(folder):
    with serving(str(folder), model_name="minilm") as srv:
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(folder):
    return transformers.AutoModel.from_pretrained(folder).eval()


def oracle(folder, reference, texts, keep: int | None, normalize: bool) -> tuple[np.ndarray, int]:
    tok = transformers.AutoTokenizer.from_pretrained(folder, truncation_side="left")
    cut = {} if keep is None else {"truncation": True, "max_length": keep}
    batch = tok(texts, padding=True, return_tensors="pt", **cut)
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = (hidden * mask).sum(1) / mask.sum(1)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors.numpy(), int(batch["attention_mask"].sum())


@pytest.mark.parametrize("keep", [None, 3, 5, 9, -1])
@pytest.mark.parametrize("normalize", [None, True, False])
def test_truncation_and_normalization_as_vllm(client, folder, reference, keep, normalize):
    extra = {k: v for k, v in (("truncate_prompt_tokens", keep), ("normalize", normalize)) if v is not None}
    out = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float", extra_body=extra)
    want, tokens = oracle(folder, reference, TEXTS, None if keep in (None, -1) else keep, normalize is not False)
    got = np.array([d.embedding for d in out.data])
    assert np.abs(got - want).max() < 1e-5
    assert out.usage.prompt_tokens == tokens
    if keep == 3:  # [CLS] + the last word + [SEP]: "world", "." and "j" alone
        assert tokens == 9
    if normalize is False:
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)


@pytest.mark.parametrize(("value", "needle"), [(257, "over the model's input limit (max_model_len) 256"),
                                               (2, "give at least 3"), (0, "0 would cut the whole prompt"),
                                               (-2, "greater than or equal to -1")])
def test_a_truncation_the_model_cannot_take_is_refused_naming_the_field(client, value, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="hello", extra_body={"truncate_prompt_tokens": value})
    assert e.value.body["param"] == "truncate_prompt_tokens" and needle in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="hello", extra_body={"normalize": "yes"})
    assert e.value.body["param"] == "normalize"
    assert client.embeddings.create(model="minilm", input="hello").data  # still serving


def test_embed_cuts_the_left_side_as_the_route_does(folder, reference):
    from neurallayers.embeddings import embed, load_minilm

    model, tok = load_minilm()
    got = embed(model, tok, TEXTS, max_length=5, truncation_side="left").numpy()
    assert np.abs(got - oracle(folder, reference, TEXTS, 5, True)[0]).max() < 1e-5
    with pytest.raises(ValueError, match="truncation_side='middle': must be 'right' or 'left'"):
        embed(model, tok, TEXTS, truncation_side="middle")
