"""Tokenizer.with_bos: a run's tokenizer puts its bos before a prompt exactly when the run's documents start with one,
checked against transformers loading the saved folder (the oracle for every tokenizer kind a run can have)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors, trainers

from neurallayers.data import Tokenizer

TEXT = "the quick brown fox jumps over the lazy dog\nhello there, fox\n" * 20


def _llama() -> Tokenizer:
    """A byte-level BPE with Llama's post-processor: bos before the text, and before a pair's second text."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                                      special_tokens=[("<s>", 1)])
    return Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")


def _eos_template() -> Tokenizer:
    """GPT-2's vocabulary with a template that ends a text with "<|endoftext|>", its bos and eos both."""
    tok = Tokenizer.gpt2()
    tok.hf.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1",
                                                          special_tokens=[("<|endoftext|>", 50256)])
    return tok


KINDS = {
    "char": lambda: Tokenizer.train_char([TEXT]),
    "gpt2": Tokenizer.gpt2,
    "bpe": lambda: Tokenizer.train_bpe([TEXT], vocab_size=300, special_tokens=("<|endoftext|>",)),
    "llama": _llama,
    "eos-template": _eos_template,
}


@pytest.mark.parametrize("add", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_the_saved_tokenizer_adds_bos_in_transformers_exactly_when_asked(kind, add, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = KINDS[kind]()
    plain = tok.encode(TEXT)
    out = tok.with_bos(add)
    assert out.adds_bos is add
    assert out.encode(TEXT) == plain  # training text, encoded without specials, keeps its ids
    assert tok.encode("a", add_special_tokens=True) == KINDS[kind]().encode("a", add_special_tokens=True)  # a copy
    out.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_bos_token"] is add
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    bos = [tok.bos_id] if add else []
    tail = [tok.eos_id] if kind == "eos-template" else []  # its template's own eos stays
    for text in ("hello", "the fox", TEXT[:40]):
        expected = bos + tok.encode(text) + tail
        assert hf(text)["input_ids"] == expected, text
        assert out.encode(text, add_special_tokens=True) == expected
    # a pair as Llama's template puts it: a bos before each text
    assert hf("hello", "fox")["input_ids"] == bos + tok.encode("hello") + tail + bos + tok.encode("fox")
    again = Tokenizer.load(tmp_path)
    assert again.adds_bos is add and again.with_bos(add) is again  # a resumed run's tokenizer stays as it is


@pytest.mark.parametrize("kind", KINDS)
def test_a_tokenizer_that_already_agrees_is_returned_as_it_is(kind):
    tok = KINDS[kind]()
    assert tok.with_bos(tok.adds_bos) is tok  # a default run keeps its tokenizer, and its token cache's key
    back = tok.with_bos(not tok.adds_bos).with_bos(tok.adds_bos)
    for texts in (("hello",), ("hello", "the fox")):
        assert back.hf.encode(*texts).ids == tok.hf.encode(*texts).ids


def test_a_llama_class_tokenizer_does_not_re_add_the_dropped_bos(tmp_path):
    transformers = pytest.importorskip("transformers")
    _llama().with_bos(False).save(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for cls in (transformers.AutoTokenizer, transformers.LlamaTokenizer):
        assert cls.from_pretrained(tmp_path)("hello")["input_ids"][:1] != [1], cls.__name__


def test_a_bos_asked_of_a_tokenizer_without_one_names_the_field():
    hf = HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match=r"^data.document_bos=true: the tokenizer has no bos token"):
        Tokenizer.from_hf(hf).with_bos(True)


def test_a_bos_that_bert_style_processing_puts_first_cannot_be_dropped_alone():
    hf = HFTokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2, "<unk>": 3}, unk_token="<unk>"))
    hf.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0))
    tok = Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")
    assert tok.adds_bos
    with pytest.raises(ValueError, match=r"^data.document_bos=false: .*\(RobertaProcessing\).*use "
                                         r"data.document_bos=true$"):
        tok.with_bos(False)
