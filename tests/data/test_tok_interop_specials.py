"""Named special tokens against transformers: a token tokenizer_config.json names (unk, eos, pad ...) is special in
transformers however tokenizer.json lists it (a vocabulary entry, or an added token not marked special): typed in a
text it is one id, and decode(skip_special_tokens=True) drops it. The same folder must read the same here."""

from __future__ import annotations

import json
import os

import pytest
from tokenizers import AddedToken, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TEXTS = ["", "abc", "a<unk>b", " <unk> ", "a</s>b <pad>  c", "ab\tc\u00e9\U0001f389 \u65e5", "<|endoftext|>a",
         "  a  b  "]


def check_like_transformers(ours: Tokenizer, folder) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True) == ids, text
        for skip in (True, False):
            decoded = theirs.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == decoded, (text, skip)
            stream = StreamDecoder(ours, skip_special_tokens=skip)
            assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == decoded, (text, skip)


def test_the_char_tokenizers_unk_reads_as_in_transformers(tmp_path):
    """The char tokenizer names "<unk>" its unk_token; it was a plain vocabulary entry here, so "a<unk>b" was five
    ids (transformers: three) and decode kept the "<unk>" transformers skips."""
    tok = Tokenizer.train_char(["abc </s>"])
    tok.save(tmp_path)
    check_like_transformers(tok, tmp_path)
    check_like_transformers(Tokenizer.load(tmp_path), tmp_path)


def test_a_plain_token_named_eos_and_pad_reads_as_in_transformers(tmp_path):
    """A tokenizer built here with plain tokens as eos and pad, saved: transformers makes them special."""
    hf = HFTokenizer(models.WordLevel({c: i for i, c in enumerate("abc <>/unkpdsé\t")}, unk_token="u"))
    hf.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    hf.add_tokens(["</s>", AddedToken("<pad>", lstrip=True)])
    tok = Tokenizer(hf, eos_token="</s>", pad_token="<pad>")
    tok.save(tmp_path)
    check_like_transformers(tok, tmp_path)


def test_a_folder_naming_vocabulary_tokens_special_loads_as_in_transformers(tmp_path):
    """A tokenizer.json whose unk, eos and pad are plain entries of the model's vocabulary (no added_tokens), with a
    tokenizer_config.json naming them, as a folder written by hand or by an older tool holds."""
    vocab = {t: i for i, t in enumerate(["<unk>", "</s>", "<pad>", *"abc <>/unkpdsé\t"])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "eos_token": "</s>",
              "pad_token": "<pad>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    check_like_transformers(Tokenizer.load(tmp_path), tmp_path)


@pytest.mark.parametrize("extra", [["<unk>"], {"image_token": "<unk>"}])
def test_a_vocabulary_token_named_in_extra_special_tokens_loads_as_in_transformers(tmp_path, extra):
    """transformers 5 writes additional special tokens as extra_special_tokens (a list, or a dict of names): a plain
    vocabulary entry named there was text here, one id and skipped in transformers."""
    vocab = {t: i for i, t in enumerate(["<unk>", "</s>", "<pad>", *"abc <>/unkpdsé\t"])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
              "extra_special_tokens": extra}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    check_like_transformers(Tokenizer.load(tmp_path), tmp_path)
