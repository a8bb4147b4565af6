"""BERT folders through save_hf and load: the padding id transformers builds the embedding with survives a save without
a tokenizer, and a key under a head's or pooler's prefix that no BERT class has is refused by name, not dropped."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.api import load  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402
from neurallayers.weights import CheckpointError  # noqa: E402

CONFIG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=16, pad_token_id=5)


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    """A transformers BertForMaskedLM folder (padding id 5) and its model."""
    folder = tmp_path_factory.mktemp("bert-mlm")
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**CONFIG)).eval()
    ref.save_pretrained(folder)
    return folder, ref


def test_the_padding_id_survives_a_save_without_a_tokenizer(mlm_folder, tmp_path):
    """save_hf wrote the tokenizer's ids over config_to_hf's, null without one: transformers then built the
    embedding without its padding row, and a reload here gave pad_token_id None."""
    folder, ref = mlm_folder
    ours, _ = load(folder)
    assert ours.config.pad_token_id == 5
    save_hf(ours, None, tmp_path)
    assert load(tmp_path)[0].config.pad_token_id == 5
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert back.bert.embeddings.word_embeddings.padding_idx == ref.bert.embeddings.word_embeddings.padding_idx == 5
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", ["cls.predictions.transform.dense2.weight", "pooler.dense.extra", "classifier.extra"])
def test_a_key_under_a_head_prefix_that_no_bert_class_has_is_named(mlm_folder, tmp_path, key):
    """Every key starting with cls.predictions., pooler. or classifier. was skipped as a head this model may lack,
    so a custom head's extra layer was dropped and the model loaded without it."""
    folder, _ = mlm_folder
    sd = load_file(folder / "model.safetensors")
    save_file({**sd, key: torch.ones(4, 4)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=f"no place in this model: .*{key}") as e:
        load(tmp_path)
    assert "\n" not in str(e.value)
    # the heads and pooler of other BERT classes, and the pretraining NSP head, are still left out by name
    known = {"pooler.dense.weight": torch.ones(32, 32), "pooler.dense.bias": torch.ones(32),
             "classifier.weight": torch.ones(2, 32), "cls.seq_relationship.weight": torch.ones(2, 32)}
    save_file({**sd, **known}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert not load(tmp_path)[0].config.pooler
