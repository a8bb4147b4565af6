"""The other transformers classes that build their ByteLevel pre-tokenizer from add_prefix_space (DeBERTa's, LED's,
MVP's, LUKE's, Whisper's, and Blenderbot's, on by default): a folder naming one of them is read as transformers reads
it (they kept tokenizer.json's setting: other ids than transformers' whenever the two disagreed)."""

from __future__ import annotations

import json
import os

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TEXTS = ["hello world", " hello", "  two  spaces "]


def byte_level(prefix: bool) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["hello world, the quick brown fox\n"] * 20,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<s>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                               show_progress=False))
    return hf


@pytest.mark.parametrize("cls", ["DebertaTokenizer", "LEDTokenizerFast", "MvpTokenizer", "LukeTokenizer",
                                 "WhisperTokenizer", "BlenderbotTokenizer"])
@pytest.mark.parametrize(("in_json", "in_config"), [(True, None), (False, None), (True, False), (False, True)])
def test_a_byte_level_class_takes_the_prefix_space_as_transformers_does(tmp_path, cls, in_json, in_config):
    byte_level(in_json).save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": cls, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>"}
    if in_config is not None:
        config["add_prefix_space"] = in_config
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    theirs, ours = transformers.AutoTokenizer.from_pretrained(tmp_path), Tokenizer.load(tmp_path)
    assert [ours.encode(t) for t in TEXTS] == [theirs(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("in_config", [None, True, False])
def test_a_vocab_and_merges_folder_takes_the_class_default(tmp_path, in_config):
    # Blenderbot's prefix space is on unless its config says otherwise: its vocab.json + merges.txt folder had none
    byte_level(False).model.save(str(tmp_path))
    config = {"tokenizer_class": "BlenderbotTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>"}
    if in_config is not None:
        config["add_prefix_space"] = in_config
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    theirs, ours = transformers.AutoTokenizer.from_pretrained(tmp_path), Tokenizer.load(tmp_path)
    assert [ours.encode(t) for t in TEXTS] == [theirs(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
