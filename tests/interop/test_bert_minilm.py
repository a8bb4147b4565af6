"""The real all-MiniLM-L6-v2 (bundled package) against transformers, and the BERT weight map both ways."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.config import ModelConfig  # noqa: E402
from neurallayers.embeddings import (  # noqa: E402
    cosine_similarity,
    embed,
    load_minilm,
    minilm_folder,
    tokenize_batch,
)
from neurallayers.interop import bert  # noqa: E402
from neurallayers.models import build_model  # noqa: E402
from neurallayers.weights import read_safetensors  # noqa: E402

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, isn't it? Überraschung für alle!",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons in hadrons.",
    "hi",
]


def small_bert(**changes) -> ModelConfig:
    # replace() keeps derived fields, so reset them for the new width
    shape = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=4, head_dim=None, n_kv_head=None, intermediate_size=None)
    return ModelConfig.from_name("bert-mini").replace(**{**shape, **changes})


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def reference():
    folder = str(minilm_folder())
    return transformers.AutoModel.from_pretrained(folder).eval(), transformers.AutoTokenizer.from_pretrained(folder)


def test_tokenizer_ids_equal_transformers(minilm, reference):
    _, tok = minilm
    _, ref_tok = reference
    want = ref_tok(TEXTS, padding=True, return_tensors="pt")
    got = tokenize_batch(tok, TEXTS)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(got[key], want[key]), key
    pair_want = ref_tok(TEXTS[:2], TEXTS[2:4], padding=True, return_tensors="pt")
    pair_got = tokenize_batch(tok, TEXTS[:2], text_pairs=TEXTS[2:4])
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(pair_got[key], pair_want[key]), key
    cut_want = ref_tok(TEXTS, padding=True, truncation=True, max_length=8, return_tensors="pt")
    assert torch.equal(tokenize_batch(tok, TEXTS, max_length=8)["input_ids"], cut_want["input_ids"])


def test_sentence_embeddings_equal_transformers_mean_pooling(minilm, reference):
    model, tok = minilm
    ref, ref_tok = reference
    batch = ref_tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    got = embed(model, tok, TEXTS, batch_size=2)  # sorted by length across batches, returned in order
    assert got.shape == (len(TEXTS), 384)
    assert (got - want).abs().max() < 1e-5
    cls = embed(model, tok, TEXTS[:2], pooling="cls", normalize=False)
    assert (cls - hidden[:2, 0]).abs().max() < 1e-4


def test_the_folder_embeds_as_sentence_transformers_does(minilm, reference, tmp_path):
    """Loaded as a plain folder (serve, batch, pipelines), MiniLM still truncates at its sentence_bert_config's 256
    tokens (not its tokenizer's 512) and pools as its 1_Pooling config says; a folder that says CLS pools the CLS
    token, and one whose mode is not known is refused unless a pooling is named."""
    from neurallayers.api import load

    model, tok = load(minilm_folder())
    assert tok.model_max_length == 256 and model.config.extra["pooling"] == "mean"
    long = ["the quick brown fox jumps over the lazy dog " * 60]  # ~540 tokens
    ref, ref_tok = reference
    batch = ref_tok(long, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref(**batch).last_hidden_state.mean(1), dim=-1)
    assert (embed(model, tok, long) - want).abs().max() < 1e-5
    assert (embed(*minilm, long) - want).abs().max() < 1e-5

    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):  # the hub names: the bundled folder
        named, named_tok = load(name)
        assert named_tok.model_max_length == 256 and torch.equal(embed(named, named_tok, long), embed(model, tok, long))

    folder = tmp_path / "st"
    folder.mkdir()
    for f in minilm_folder().iterdir():
        if f.is_file():
            (folder / f.name).symlink_to(f)
    (folder / "1_Pooling").mkdir()
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True}))
    cls_model, _ = load(folder)
    assert torch.equal(embed(cls_model, tok, TEXTS), embed(model, tok, TEXTS, pooling="cls"))
    pooling.write_text(json.dumps({"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True}))
    both, _ = load(folder)  # the older flags: concatenated in sentence-transformers' order, cls first
    assert both.config.extra["pooling"] == "cls+max"
    assert torch.equal(embed(both, tok, TEXTS), embed(model, tok, TEXTS, pooling="cls+max"))
    pooling.write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "lasttoken"}))  # sentence-transformers 6
    assert load(folder)[0].config.extra["pooling"] == "lasttoken"
    pooling.write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": ["max", "mean"]}))
    assert load(folder)[0].config.extra["pooling"] == "max+mean"
    pooling.write_text(json.dumps({"pooling_mode": "attention"}))
    other, _ = load(folder)
    with pytest.raises(ValueError, match="sentence-transformers pooling is 'attention'.*pass pooling="):
        embed(other, tok, TEXTS)
    assert torch.equal(embed(other, tok, TEXTS, pooling="mean"), embed(model, tok, TEXTS))

    # a Dense projection after the pooling (LaBSE, sentence-t5) is not built: refused, not skipped
    pooling.write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    modules = json.loads((minilm_folder() / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text(json.dumps(modules))
    dense, _ = load(folder)
    with pytest.raises(ValueError, match=r"ends with Dense \(2_Dense\) after the pooling, which is not built"):
        embed(dense, tok, TEXTS)
    assert torch.equal(embed(dense, tok, TEXTS, pooling="mean"), embed(model, tok, TEXTS))

    # a pipeline without a Normalize module gives raw vectors, as sentence-transformers does
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith(("Dense",
                                                                                                  "Normalize"))]))
    raw, _ = load(folder)
    vectors = embed(raw, tok, TEXTS)
    assert torch.equal(vectors, embed(model, tok, TEXTS, normalize=False)) and vectors.norm(dim=-1).min() > 1.5
    assert torch.allclose(embed(model, tok, TEXTS).norm(dim=-1), torch.ones(len(TEXTS)))


def _st_folder(tmp_path, pooling: dict, modules: list) -> object:
    """The MiniLM folder with another 1_Pooling config and modules.json."""
    folder = tmp_path / "st"
    folder.mkdir()
    for f in minilm_folder().iterdir():
        if f.is_file() and f.name != "modules.json":
            (folder / f.name).symlink_to(f)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling}))
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


@pytest.mark.parametrize("pooling, normalize", [({"pooling_mode_cls_token": True}, True),
                                                ({"pooling_mode": ["max", "cls"]}, False)])
def test_convert_keeps_a_sentence_transformers_pipeline(tmp_path, pooling, normalize):
    """A folder that pools by [CLS] (or max and [CLS], without a Normalize module) embedded by mean pooling, normalised,
    after `convert` to a Hugging Face folder (directly, or by way of a run directory): its vectors changed silently.
    Its modules.json, 1_Pooling and sentence_bert_config.json are written back."""
    from neurallayers.api import load
    from neurallayers.interop import convert

    modules = json.loads((minilm_folder() / "modules.json").read_text())
    folder = _st_folder(tmp_path, pooling, modules if normalize else modules[:2])
    want = embed(*load(folder), TEXTS)
    convert(folder, tmp_path / "hf", to="hf")
    convert(folder, tmp_path / "run", to="run")
    convert(tmp_path / "run", tmp_path / "run-hf", to="hf")
    for out in ("hf", "run", "run-hf"):
        model, tok = load(tmp_path / out)
        assert tok.model_max_length == 256, out
        assert torch.equal(embed(model, tok, TEXTS), want), out
    assert json.loads((tmp_path / "hf" / "sentence_bert_config.json").read_text())["max_seq_length"] == 256


def test_a_folder_that_lowercases_its_texts_embeds_them_lowercased(tmp_path):
    """sentence_bert_config.json's do_lower_case: sentence-transformers lowercases each text before a cased tokenizer
    sees it; embed() passed the text as it was (other ids, other vectors), and convert kept the setting nowhere."""
    from neurallayers.api import load
    from neurallayers.interop import convert

    modules = json.loads((minilm_folder() / "modules.json").read_text())
    folder = _st_folder(tmp_path, {"pooling_mode_mean_tokens": True}, modules)
    spec = json.loads((minilm_folder() / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False  # a cased WordPiece
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    # transformers' BertTokenizer builds its normalizer from tokenizer_config.json's do_lower_case (true by default)
    config = json.loads((minilm_folder() / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    cased_model, cased_tok = load(folder)
    lowered = embed(cased_model, cased_tok, [t.lower() for t in TEXTS])
    assert not torch.equal(embed(cased_model, cased_tok, TEXTS), lowered)
    (folder / "sentence_bert_config.json").unlink()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    model, tok = load(folder)
    assert torch.equal(embed(model, tok, TEXTS), lowered)
    convert(folder, tmp_path / "hf", to="hf")
    assert torch.equal(embed(*load(tmp_path / "hf"), TEXTS), lowered)


def test_convert_to_hf_refuses_a_pipeline_module_it_cannot_write(tmp_path):
    """A Dense projection after the pooling is not part of the model: a folder written without it would embed
    differently, silently (the source refuses to embed without pooling=)."""
    from neurallayers.interop import convert

    modules = json.loads((minilm_folder() / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    folder = _st_folder(tmp_path, {"pooling_mode_mean_tokens": True}, modules)
    with pytest.raises(ValueError, match=r"has Dense \(2_Dense\) after the pooling, which NeuralLayers does not keep"):
        convert(folder, tmp_path / "hf", to="hf")
    assert not (tmp_path / "hf").exists()


def test_embed_runs_without_dropout_and_leaves_the_models_mode_alone(minilm):
    model, tok = minilm
    want = embed(model.eval(), tok, TEXTS)
    model.train()
    try:
        assert torch.equal(embed(model, tok, TEXTS), want) and model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="max_length=1: must be an int >= 2"):
        embed(model, tok, TEXTS, max_length=1)


def test_every_pooling_of_a_padded_batch_equals_its_formula_on_each_text_alone(minilm, reference):
    """sentence-transformers' Pooling modes, from transformers' states of each text unpadded; embed pools a padded
    batch (the padding must not count), and "a+b" concatenates."""
    model, tok = minilm
    ref, ref_tok = reference
    want = {m: [] for m in ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")}
    for text in TEXTS:
        with torch.no_grad():
            h = ref(**ref_tok(text, return_tensors="pt")).last_hidden_state[0]  # (T, C)
        w = torch.arange(1, len(h) + 1, dtype=h.dtype)[:, None]
        for mode, vec in [("mean", h.mean(0)), ("cls", h[0]), ("max", h.max(0).values),
                          ("mean_sqrt_len_tokens", h.sum(0) / len(h) ** 0.5),
                          ("weightedmean", (h * w).sum(0) / w.sum()), ("lasttoken", h[-1])]:
            want[mode].append(vec)
    for mode, vecs in want.items():
        got = embed(model, tok, TEXTS, pooling=mode, normalize=False)
        assert (got - torch.stack(vecs)).abs().max() < 1e-4, mode
    got = embed(model, tok, TEXTS, pooling="lasttoken+cls")
    assert got.shape == (len(TEXTS), 768)
    cat = torch.cat([torch.stack(want["lasttoken"]), torch.stack(want["cls"])], dim=-1)
    assert (got - torch.nn.functional.normalize(cat, dim=-1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="pooling='maximum': valid are mean, cls, max"):
        embed(model, tok, TEXTS, pooling="maximum")


def test_similar_pair_scores_higher_than_unrelated(minilm):
    model, tok = minilm
    e = embed(model, tok, ["A man is eating food.", "A man is eating a piece of bread.",
                           "The stock market fell sharply on Monday."])
    sim = cosine_similarity(e, e)
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.3
    assert torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-5)
    assert cosine_similarity(e[0], e[1]).ndim == 0


def test_minilm_config_is_the_preset_shape():
    hf = json.loads((minilm_folder() / "config.json").read_text())
    cfg = bert.config_from_hf(hf)
    preset = ModelConfig.from_name("minilm-l6")
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "intermediate_size", "norm_eps",
                  "norm_placement", "gelu_approx", "type_vocab_size", "pad_token_id", "pooler", "causal"):
        assert getattr(cfg, field) == getattr(preset, field), field


def test_weight_map_round_trips_minilm():
    folder = minilm_folder()
    cfg = bert.config_from_hf(json.loads((folder / "config.json").read_text()))
    hf_sd = read_safetensors(folder / "model.safetensors")
    ours = bert.to_ours(hf_sd, cfg)
    assert "blocks.0.attn.qkv.weight" in ours and ours["blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)
    back = bert.to_hf(ours, cfg)
    assert set(back) == set(hf_sd) - {"embeddings.position_ids"}  # a buffer, not a weight
    assert all(torch.equal(back[k], hf_sd[k]) for k in back)
    prefixed = bert.to_ours({"bert." + k: v for k, v in hf_sd.items()}, cfg)  # the head models' spelling
    assert all(torch.equal(prefixed[k], ours[k]) for k in ours)


@pytest.mark.parametrize("head", ["mlm", "sequence_classification", "token_classification"])
def test_weight_map_round_trips_heads(head):
    cfg = small_bert(head=head, num_labels=3, pooler=head == "sequence_classification")
    torch.manual_seed(0)
    sd = build_model(cfg).state_dict()
    hf_sd = bert.to_hf(sd, cfg)
    assert all(k.startswith(("bert.", "cls.", "classifier.")) for k in hf_sd)
    again = bert.to_ours(hf_sd, cfg)
    assert set(again) == set(sd) and all(torch.equal(again[k], sd[k]) for k in sd)
    assert all(torch.equal(bert.to_hf(again, cfg)[k], v) for k, v in hf_sd.items())
    hf_model = getattr(transformers, bert.config_to_hf(cfg)["architectures"][0])(
        transformers.BertConfig(**bert.config_to_hf(cfg)))
    missing, unexpected = hf_model.load_state_dict(hf_sd, strict=False)
    assert not unexpected
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # tied in HF


def test_config_round_trip_and_rejections():
    cfg = ModelConfig.from_name("bert-mini").replace(head="sequence_classification", num_labels=3,
                                                     extra={"id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    hf = bert.config_to_hf(cfg)
    assert hf["model_type"] == "bert" and hf["architectures"] == ["BertForSequenceClassification"]
    assert hf["id2label"] == {"0": "neg", "1": "neu", "2": "pos"} and hf["label2id"]["pos"] == 2
    transformers.BertConfig(**hf)  # a valid BertConfig
    back = bert.config_from_hf(hf)
    for field in ("n_layer", "n_embd", "n_head", "intermediate_size", "norm_eps", "num_labels", "head", "pooler",
                  "type_vocab_size", "block_size", "gelu_approx", "tie_embeddings"):
        assert getattr(back, field) == getattr(cfg, field), field
    with pytest.raises(ValueError, match="norm_placement"):
        bert.config_to_hf(cfg.replace(norm_placement="pre"))
    with pytest.raises(ValueError, match="model_type"):
        bert.config_from_hf({**hf, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.config_from_hf({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="architectures"):
        bert.config_from_hf({**hf, "architectures": ["BertForQuestionAnswering"]})


def test_a_config_without_optional_keys_takes_bert_configs_defaults():
    """BertConfig's intermediate_size is 3072 at any width: a config.json that leaves it out (with hidden_size 384)
    loads as transformers builds it, not refused as mis-shaped."""
    given = {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
             "vocab_size": 100}
    ref = transformers.BertConfig(**given)
    cfg = bert.config_from_hf(given)
    assert (cfg.intermediate_size, cfg.block_size, cfg.type_vocab_size, cfg.norm_eps, cfg.gelu_approx) == (
        ref.intermediate_size, ref.max_position_embeddings, ref.type_vocab_size, ref.layer_norm_eps, "none")


def test_to_ours_names_missing_unknown_and_misshaped_keys():
    cfg = small_bert(n_layer=1)
    hf_sd = bert.to_hf(build_model(cfg).state_dict(), cfg)
    broken = dict(hf_sd)
    del broken["encoder.layer.0.attention.self.key.weight"]
    with pytest.raises(ValueError, match=r"missing.*attention\.self\.key\.weight"):
        bert.to_ours(broken, cfg)
    with pytest.raises(ValueError, match="qa_outputs.weight"):
        bert.to_ours({**hf_sd, "qa_outputs.weight": torch.zeros(2, 32)}, cfg)
    with pytest.raises(ValueError, match="wpe.weight"):
        bert.to_ours({**hf_sd, "embeddings.position_embeddings.weight": torch.zeros(7, 32)}, cfg)
    extra_head = bert.to_ours({**hf_sd, "cls.seq_relationship.weight": torch.zeros(2, 32)}, cfg)  # NSP: dropped
    assert set(extra_head) == set(build_model(cfg).state_dict())


def test_tf_era_layer_norm_names_load_as_transformers_loads_them(minilm, tmp_path):
    """bert-base-uncased's checkpoint names its LayerNorms `gamma` / `beta` (TensorFlow's names), which transformers
    renames on load: such a folder was refused with every LayerNorm weight "missing"."""
    from safetensors.torch import save_file

    from neurallayers.api import load

    folder = tmp_path / "gamma-beta"
    folder.mkdir()
    for f in minilm_folder().iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).symlink_to(f)
    sd = read_safetensors(minilm_folder() / "model.safetensors")
    legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
              v for k, v in sd.items()}
    assert sum(".gamma" in k for k in legacy) == 13  # the embeddings' and two per layer
    save_file(legacy, folder / "model.safetensors", metadata={"format": "pt"})
    model, tok = load(folder)
    assert torch.equal(embed(model, tok, TEXTS), embed(*minilm, TEXTS))
    ref = transformers.AutoModel.from_pretrained(folder).eval()  # transformers reads the folder alike
    torch.testing.assert_close(ref.embeddings.LayerNorm.weight, minilm[0].emb_norm.weight, atol=0, rtol=0)


def test_a_bert_folder_with_only_vocab_txt_tokenizes_as_its_tokenizer_json(minilm, tmp_path):
    """Older BERT fine-tunes ship vocab.txt without tokenizer.json: it loaded with no tokenizer, and embed failed
    with an AttributeError."""
    from neurallayers.api import load

    folder = tmp_path / "vocab-only"
    folder.mkdir()
    for f in minilm_folder().iterdir():
        if f.is_file() and f.name != "tokenizer.json":
            (folder / f.name).symlink_to(f)
    (folder / "1_Pooling").symlink_to(minilm_folder() / "1_Pooling")
    model, tok = load(folder)
    ref_model, ref = minilm
    texts = TEXTS + ["Héllo WORLD, naïve café — 東京 2024!", "  spaces\tand\nlines  "]
    for text in texts:
        assert tok.encode(text, add_special_tokens=True) == ref.encode(text, add_special_tokens=True), text
    assert (tok.pad_id, tok.token_to_id("[MASK]")) == (ref.pad_id, ref.token_to_id("[MASK]"))
    assert torch.equal(embed(model, tok, texts), embed(ref_model, ref, texts))


def test_a_saved_bert_tokenizer_keeps_its_special_token_names(minilm, tmp_path):
    """transformers' tokenizer of a converted BERT folder had no cls_token, sep_token or unk_token."""
    transformers = pytest.importorskip("transformers")
    minilm[1].save(tmp_path)
    back = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (back.cls_token, back.sep_token, back.unk_token, back.pad_token, back.mask_token) == \
        ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
    # and a pair's token types, which its PreTrainedTokenizerFast left out (a converted cross-encoder scored every
    # pair as one text: hidden states up to 0.13 off)
    want = transformers.AutoTokenizer.from_pretrained(minilm_folder())("a b", "c d")
    assert back("a b", "c d")["token_type_ids"] == want["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


def test_a_masked_lm_with_a_pooler_exports_as_bert_for_masked_lm_without_one(tmp_path):
    """The bert-tiny preset has BERT's pooler, which BertForMaskedLM lacks: transformers listed its weights as
    unexpected keys."""
    transformers = pytest.importorskip("transformers")
    from neurallayers.interop.hf import save_hf

    cfg = ModelConfig.from_name("bert-tiny").replace(head="mlm", block_size=32, n_layer=1)
    assert cfg.pooler
    save_hf(build_model(cfg), None, tmp_path)
    assert not [k for k in read_safetensors(tmp_path / "model.safetensors") if "pooler" in k]
    _, info = transformers.BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]


@pytest.mark.parametrize("head", ["none", "sequence_classification"])
def test_an_encoder_without_a_pooler_is_not_exported_as_a_bert_class_with_one(tmp_path, head):
    """BertModel and BertForSequenceClassification always have a pooler: transformers loaded the export with a random
    one (and our own load refused it). Masked-LM and token-classification classes have none and export as before."""
    from neurallayers.interop.hf import save_hf

    cfg = small_bert(head=head, pooler=False)
    with pytest.raises(ValueError, match=f"pooler=False with head='{head}'") as err:
        save_hf(build_model(cfg), None, tmp_path)
    assert "\n" not in str(err.value) and not (tmp_path / "config.json").exists()
    for other in ("mlm", "token_classification"):
        hf = bert.config_to_hf(small_bert(head=other, pooler=False))
        assert hf["architectures"] == [bert.HEAD_ARCHITECTURE[other]]


def test_parameter_counts_equal_transformers(minilm, reference):
    """Without embeddings, BERT's token-type table counts as an embedding, as transformers counts it (info said
    71,601 where transformers says 71,473 for a tiny BERT)."""
    ref, _ = reference
    cfg = minilm[0].config
    assert cfg.param_count() == ref.num_parameters()
    assert cfg.param_count(include_embeddings=False) == ref.num_parameters(exclude_embeddings=True)


def test_a_classifier_fine_tuned_from_a_pipeline_with_dense_converts(tmp_path):
    """A classifier trained from such a folder (train.init_from keeps the source's config.extra) is a classifier, not
    an embedding pipeline: `convert` refused it for the Dense module its sentence-transformers source had."""
    from neurallayers.api import load
    from neurallayers.interop.hf import save_hf

    modules = json.loads((minilm_folder() / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    encoder, tok = load(_st_folder(tmp_path, {"pooling_mode_mean_tokens": True}, modules))
    cfg = encoder.config.replace(head="sequence_classification", num_labels=2)
    torch.manual_seed(0)
    classifier = build_model(cfg).eval()
    save_hf(classifier, tok, tmp_path / "clf")
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    ids = torch.tensor([tok.encode("A man is eating food.", add_special_tokens=True)])
    with torch.no_grad():
        torch.testing.assert_close(classifier(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    assert not (tmp_path / "clf" / "modules.json").exists()  # no pipeline that would embed without its Dense
