"""A sentence-transformers folder's prompts (config_sentence_transformers.json `prompts`, `default_prompt_name`) and
its Pooling's `include_prompt`: embed puts the default prompt (or the one named, or given) before each text and
leaves the prompt's tokens out of the pooling where the folder says so, as sentence-transformers' encode does.
sentence-transformers is not installed here: the oracle is encode's computation (version 5) written out over
transformers' BertModel on the same tiny folder: a non-empty prompt prepended, prompt_length = the prompt tokenized
alone less a closing special token, the pooling mask's first prompt_length positions zeroed."""

import json
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import load  # noqa: E402
from neurallayers.embeddings import embed, minilm_folder, read_as  # noqa: E402
from neurallayers.interop import convert, save_hf  # noqa: E402
from neurallayers.interop.hf import sentence_transformers_settings  # noqa: E402

PROMPTS = {"query": "query: ", "document": "passage: ", "none": ""}
TEXTS = ["A man is playing a guitar.", "short", ""]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _write_base(folder) -> None:
    """A tiny BERT with MiniLM's WordPiece tokenizer, saved by transformers."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        os.symlink(minilm_folder() / name, folder / name)


def _write_folder(base, folder, *, pooling: str, include_prompt: bool) -> None:
    """`base` as a sentence-transformers folder (Transformer, Pooling, Normalize) with PROMPTS, "document" the
    default."""
    folder.mkdir()
    for name in os.listdir(base):
        os.symlink(base / name, folder / name)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, "pooling_mode": pooling, "include_prompt": include_prompt}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": PROMPTS, "default_prompt_name": "document"}))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The base folder, and transformers' model and tokenizer read from it."""
    base = tmp_path_factory.mktemp("st") / "base"
    base.mkdir()
    _write_base(base)
    return base, transformers.BertModel.from_pretrained(base).eval(), transformers.AutoTokenizer.from_pretrained(base)


@pytest.fixture(scope="module")
def folders(reference):
    """(include_prompt, pooling) -> (folder, our model and tokenizer)."""
    base, out = reference[0], {}
    for include, pooling in ((True, "mean"), (False, "mean"), (False, "lasttoken"), (False, "max")):
        folder = base.parent / f"{pooling}-{include}"
        _write_folder(base, folder, pooling=pooling, include_prompt=include)
        out[include, pooling] = folder, load(folder)
    return out


def encode_oracle(ref, tok, texts, prompt: str | None, *, include_prompt: bool, pooling: str) -> torch.Tensor:
    """sentence-transformers' encode with `prompt` (already resolved), written out."""
    extra = 0
    if prompt:  # sentence-transformers 5: an empty prompt is none
        texts = [prompt + t for t in texts]
        ids = tok([prompt], truncation=True, max_length=48)["input_ids"][0]
        extra = len(ids) - (ids[-1] in tok.all_special_ids)  # a closing [SEP] is not the prompt's
    batch = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
    mask = batch["attention_mask"].clone()
    if not include_prompt:
        mask[:, :extra] = 0
    m = mask.unsqueeze(-1).float()
    if pooling == "mean":
        vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "max":
        vec = hidden.masked_fill(m == 0, -1e9).max(1).values
    else:  # lasttoken: the last position the mask keeps
        values, index = mask.flip(1).max(1)
        index = torch.where(values == 0, mask.shape[1] - 1, index)
        vec = hidden[torch.arange(len(texts)), mask.shape[1] - index - 1]
    return F.normalize(vec, dim=-1)


# (embed's prompt arguments, the prompt encode puts first)
ARGS = [({}, "passage: "), ({"prompt_name": "query"}, "query: "), ({"prompt": "Represent this: "}, "Represent this: "),
        ({"prompt": ""}, ""), ({"prompt_name": "none"}, "")]


@pytest.mark.parametrize(("include", "pooling"), [(True, "mean"), (False, "mean"), (False, "lasttoken"),
                                                  (False, "max")])
def test_embed_applies_prompts_as_sentence_transformers_encode(folders, reference, include, pooling):
    (_, (model, tokenizer)), (_, ref, tok) = folders[include, pooling], reference
    for kwargs, prompt in ARGS:
        want = encode_oracle(ref, tok, TEXTS, prompt, include_prompt=include, pooling=pooling)
        got = embed(model, tokenizer, TEXTS, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=f"{kwargs}")
    # the default prompt is read, not ignored: without it the vectors differ
    assert not torch.allclose(embed(model, tokenizer, TEXTS), embed(model, tokenizer, TEXTS, prompt=""), atol=1e-4)
    assert read_as(model, ["Hi"]) == ["passage: Hi"] and read_as(model, ["Hi"], prompt_name="query") == ["query: Hi"]


def test_prompts_survive_save_hf_and_convert(folders, tmp_path):
    _, (model, tokenizer) = folders[False, "mean"]
    want = embed(model, tokenizer, TEXTS)
    save_hf(model, tokenizer, tmp_path / "hf")
    run = convert(tmp_path / "hf", tmp_path / "run", to="run")
    back = convert(run, tmp_path / "back", to="hf")
    for path in (tmp_path / "hf", run, back):
        again, again_tok = load(path)
        assert again.config.extra["prompts"] == PROMPTS and again.config.extra["include_prompt"] is False
        torch.testing.assert_close(embed(again, again_tok, TEXTS), want, atol=1e-6, rtol=0)
    written = json.loads((back / "config_sentence_transformers.json").read_text())
    assert written == {"prompts": PROMPTS, "default_prompt_name": "document"}
    assert json.loads((back / "1_Pooling" / "config.json").read_text())["include_prompt"] is False


def test_bad_prompt_arguments_are_one_clear_line(folders):
    _, (model, tokenizer) = folders[True, "mean"]
    with pytest.raises(ValueError, match=r"prompt_name='passage': this model's prompts are 'query', 'document'"):
        embed(model, tokenizer, TEXTS, prompt_name="passage")
    with pytest.raises(ValueError, match=r"give one of them, not both"):
        embed(model, tokenizer, TEXTS, prompt="q: ", prompt_name="query")
    with pytest.raises(ValueError, match=r"prompt=5: must be a str"):
        embed(model, tokenizer, TEXTS, prompt=5)


def _minilm_with(folder, settings: dict) -> None:
    src = minilm_folder()
    for name in os.listdir(src):
        if name != "config_sentence_transformers.json":
            os.symlink(src / name, folder / name)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))


def test_a_default_prompt_is_read_and_a_missing_one_named(tmp_path):
    _minilm_with(tmp_path, {"prompts": {"query": "query: ", "document": "passage: "},
                            "default_prompt_name": "document"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        settings = sentence_transformers_settings(tmp_path)
    assert settings["default_prompt_name"] == "document" and settings["prompts"]["query"] == "query: "
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"default_prompt_name": "query"}))
    with pytest.warns(UserWarning, match=r"default_prompt_name 'query' names no entry of its prompts"):
        assert "default_prompt_name" not in sentence_transformers_settings(tmp_path)
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": 3}}))
    with pytest.raises(ValueError, match=r"prompts must be an object of strings"):
        sentence_transformers_settings(tmp_path)


@pytest.mark.parametrize("settings", [{"prompts": {"query": "query: "}}, {"prompts": {"": ""},
                                                                          "default_prompt_name": ""}])
def test_no_default_prompt_reads_quietly(tmp_path, settings):
    _minilm_with(tmp_path, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert sentence_transformers_settings(tmp_path)["pooling"] == "mean"


def test_the_servers_embeddings_apply_no_prompt_as_vllm(folders):
    """/v1/embeddings reads the text as sent, as vLLM's does: a client writes "query: ..." itself, as the model card
    says, and a default "passage: " put before it gave "passage: query: ..."."""
    from fastapi.testclient import TestClient

    from neurallayers.serve.app import create_app

    _, (model, tokenizer) = folders[False, "mean"]
    with TestClient(create_app((model, tokenizer))) as client:
        got = client.post("/v1/embeddings", json={"model": "model", "input": TEXTS[:2]}).json()
    want = embed(model, tokenizer, TEXTS[:2], prompt="")
    torch.testing.assert_close(torch.tensor([d["embedding"] for d in got["data"]]), want, atol=1e-5, rtol=1e-4)
    assert got["usage"]["prompt_tokens"] == sum(len(tokenizer.encode(t, add_special_tokens=True)) for t in TEXTS[:2])
