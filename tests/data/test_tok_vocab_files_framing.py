"""A folder of vocab.json + merges.txt (no tokenizer.json: OPT's, older RoBERTa and BART fine-tunes) frames a text
with special tokens as transformers' class does: RoBERTa's kind "<s> $A </s>", else the bos / eos that
tokenizer_config.json's add_bos_token / add_eos_token ask for (transformers reads them only without tokenizer.json).
Both were left out here, so prompts (add_special_tokens=True) and encoder inputs lacked them."""

from __future__ import annotations

import json
import os
import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's and OPT's first ids


@pytest.fixture(scope="module")
def texts():
    pieces = ["hello", " world", "  ", "\n", "é", "日本", "🎉", "</s>", "<s>", "<mask>", ",", " the", "x"]
    rng = random.Random(0)
    return ["", *("".join(rng.choices(pieces, k=rng.randint(1, 8))) for _ in range(40))]


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["hello world, the quick brown fox\n"] * 20,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("vocab_files")
    hf.model.save(str(folder))
    return folder


def folder_with(vocab_files, path, config: dict):
    """config's "model_type" goes to config.json: transformers picks the class from it where tokenizer_config.json
    names none (folders written before it saved tokenizer_class)."""
    path.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (path / name).write_bytes((vocab_files / name).read_bytes())
    config = dict(config)
    if "model_type" in config:
        (path / "config.json").write_text(json.dumps({"model_type": config.pop("model_type")}))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.load(path), transformers.AutoTokenizer.from_pretrained(path)


OPT = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>",
       "add_prefix_space": False, "bos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False,  # as OPT's
                                                "normalized": True, "rstrip": False, "single_word": False}}


@pytest.mark.parametrize("config", [
    {**OPT, "add_bos_token": True},  # OPT's
    {**OPT, "add_bos_token": True, "add_eos_token": True},
    {**OPT, "bos_token": "<s>", "add_eos_token": True},
    {**OPT, "add_bos_token": False},
    {"tokenizer_class": "RobertaTokenizer"},  # its default specials
    {"tokenizer_class": "BartTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
     "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>", "unk_token": "<unk>"},
    {"tokenizer_class": "LongformerTokenizer", "add_prefix_space": True, "trim_offsets": False},
    {"model_type": "roberta", "model_max_length": 512},
], ids=["opt", "bos-and-eos", "eos", "no-bos", "roberta", "bart", "longformer", "roberta-by-model-type"])
def test_a_vocab_files_folder_frames_a_text_as_transformers(vocab_files, tmp_path, texts, config):
    ours, ref = folder_with(vocab_files, tmp_path / "folder", config)
    for text in texts:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == ref.encode(text, add_special_tokens=special), text
        ids = ref.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    pairs = list(zip(texts[::2], texts[1::2], strict=False))  # a pair classifier's inputs
    assert [ours.hf.encode(a, b).ids for a, b in pairs] == [ref(a, b)["input_ids"] for a, b in pairs]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ref.mask_token_id in (None, ours.mask_id)  # "<mask>" is ours to guess where transformers names none
    assert ours.adds_bos == (ref.encode("x")[0] == ref.bos_token_id)
    ours.save(tmp_path / "saved")  # a tokenizer.json now, which transformers reads as it is
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    kept = [t for t in texts if "<mask>" not in t]  # saved as the mask token, which a GPT-2 class does not name
    assert [again.encode(t) for t in kept] == [ref.encode(t) for t in kept]
