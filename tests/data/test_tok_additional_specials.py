"""Special tokens beside bos/eos/pad (a chat's <|im_start|>, <|im_end|>) are named in the saved tokenizer_config.json,
so transformers' tokenizer lists them among its special tokens, as it does for the folder they came from."""

from __future__ import annotations

import json

from tokenizers import AddedToken, models
from tokenizers import Tokenizer as HFTokenizer
from transformers import AutoTokenizer

from neurallayers.data import Tokenizer


def _folder(tmp_path):
    hf = HFTokenizer(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2, "<|im_start|>": 3, "<|im_end|>": 4,
                                       "<tool>": 5}, merges=[]))
    hf.add_special_tokens([AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    hf.add_tokens([AddedToken("<tool>", special=False)])
    src = tmp_path / "src"
    src.mkdir()
    hf.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}))
    return src


def test_saved_folder_keeps_the_additional_special_tokens(tmp_path):
    src = _folder(tmp_path)
    Tokenizer.load(src).save(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]  # not <tool>: not special
    theirs, ours = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(tmp_path / "out")
    assert set(ours.all_special_tokens) == set(theirs.all_special_tokens) >= {"<|im_start|>", "<|im_end|>"}
    ids = ours("<|im_start|>a b<|im_end|><tool>")["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert Tokenizer.load(tmp_path / "out").encode("<|im_start|>a") == Tokenizer.load(src).encode("<|im_start|>a")


def test_no_key_where_there_are_none(tmp_path):
    Tokenizer.load("gpt2").save(tmp_path / "out")
    assert "additional_special_tokens" not in json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
