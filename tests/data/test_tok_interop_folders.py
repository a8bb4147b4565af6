"""Folders transformers writes with its GPT-2 style tokenizer classes, read here as transformers reads them: those
classes take the prefix space from tokenizer_config.json's add_prefix_space (false when absent) over tokenizer.json's
pre-tokenizer, and transformers 5 saves add_prefix_space=True to the config alone."""

from __future__ import annotations

import json
import os

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

CORPUS = ["hello world, the quick brown fox. café 日本 🎉\n"] * 20
TEXTS = ["hello world", " hello", "", "  two  spaces ", "</s>hello", "café 日本 🎉", "\n\tx"]


def byte_level(*, prefix: bool = False) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return hf


def assert_reads_alike(folder) -> None:
    theirs, ours = transformers.AutoTokenizer.from_pretrained(folder), Tokenizer.load(folder)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True) == ids, text
        stream = StreamDecoder(ours, skip_special_tokens=True)
        assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == theirs.decode(ids, skip_special_tokens=True)
    ours.save(folder / "again")  # and what we write from it reads the same in transformers
    again = transformers.AutoTokenizer.from_pretrained(folder / "again")
    assert [again(t)["input_ids"] for t in TEXTS] == [theirs(t)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("cls", ["GPT2TokenizerFast", "RobertaTokenizerFast"])
@pytest.mark.parametrize("prefix", [True, False])
def test_a_gpt2_style_class_saved_with_add_prefix_space(tmp_path, cls, prefix):
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    getattr(transformers, cls)(tokenizer_object=byte_level(), add_prefix_space=prefix, **specials).save_pretrained(
        tmp_path)
    assert_reads_alike(tmp_path)


def test_a_gpt2_class_folder_without_add_prefix_space_has_none(tmp_path):
    """tokenizer.json asks for a prefix space, the class's config leaves it out: transformers adds none."""
    byte_level(prefix=True).save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert_reads_alike(tmp_path)
