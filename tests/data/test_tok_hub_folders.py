"""Tokenizer folders shaped as the Hub ships them (tokenizer.json written by `tokenizers`, tokenizer_config.json by hand
with the model's own tokenizer_class and added_tokens_decoder), against transformers' AutoTokenizer on the same folder:
Llama 3 (byte-level BPE, its split regex, a template adding bos), Qwen2 (NFC, its regex, tool tokens that are not
special), a SentencePiece-style BPE (Metaspace, byte fallback; LlamaTokenizer) and BERT (WordPiece, lowercase and
accents stripped, [CLS]/[SEP]). transformers 5 rebuilds parts of a Qwen2Tokenizer, LlamaTokenizer or BertTokenizer from
the class; these folders must still read the same here. Arbitrary unicode, whitespace runs and special-token strings
inside the text."""

from __future__ import annotations

import functools
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

CORPUS = ["The quick brown fox jumps over the lazy dog. Hello, world! I'm here; don't go.\n\nÉtude café naïve 日本語 "
          "🎉 1234567\tTabs  and   spaces\r\n", "def f(x):\n    return x ** 2  # comment\n",
          "Привет мир. Ελληνικά. שלום"] * 20
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
            "<tool_call>", "<s>", "</s>", "<unk>", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
TEXT = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(SPECIALS), st.sampled_from([" ", "  ", "\n", "\r\n",
                                                                                           "\t", " \n ", "\u00a0"])),
                max_size=8).map("".join)


def _byte_level(regex: str, normalizer=None) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizer
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


def _llama3() -> tuple[HFTokenizer, dict]:
    hf = _byte_level(LLAMA3)
    hf.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"])
    bos = hf.token_to_id("<|begin_of_text|>")
    hf.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])])
    return hf, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072,
                "model_input_names": ["input_ids", "attention_mask"]}


def _qwen2() -> tuple[HFTokenizer, dict]:
    hf = _byte_level(QWEN2, normalizers.NFC())
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    hf.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    return hf, {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "split_special_tokens": False,
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "clean_up_tokenization_spaces": False}


def _sentencepiece(*, legacy_file: bool = False, **config) -> tuple[HFTokenizer, dict]:
    """legacy_file: "▁" by normalizers, as Llama 2's and Mistral 7B's first tokenizer.json files have it."""
    hf = HFTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if legacy_file:
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                                       special_tokens=["<unk>", "<s>", "</s>", *byte_tokens]))
    spec = json.loads(hf.to_str())  # the byte tokens are plain vocabulary, as in Llama 2's and Mistral's files
    spec["added_tokens"] = [{**t, "normalized": False} for t in spec["added_tokens"]
                            if t["content"] in ("<unk>", "<s>", "</s>")]
    hf = HFTokenizer.from_str(json.dumps(spec))
    hf.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                      special_tokens=[("<s>", 1)])
    return hf, {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False, **config}


def _bert() -> tuple[HFTokenizer, dict]:
    wp = BertWordPieceTokenizer(lowercase=True, strip_accents=None)
    wp.train_from_iterator(CORPUS, vocab_size=400, show_progress=False)
    hf = wp._tokenizer
    cls, sep = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    hf.post_processor = processors.TemplateProcessing(single="[CLS]:0 $A:0 [SEP]:0",
                                                      pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return hf, {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "strip_accents": None,
                "tokenize_chinese_chars": True, "clean_up_tokenization_spaces": True, "model_max_length": 512,
                "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                "mask_token": "[MASK]"}


KINDS = {"llama3": _llama3, "qwen2": _qwen2, "sentencepiece": _sentencepiece, "bert": _bert}
NO_PREFIX = {"sentencepiece-no-prefix": functools.partial(_sentencepiece, add_prefix_space=False),
             "legacy-no-prefix": functools.partial(_sentencepiece, legacy_file=True, add_prefix_space=False)}


@functools.cache
def folder(kind: str, root: str) -> tuple[Tokenizer, object]:
    hf, config = {**KINDS, **NO_PREFIX}[kind]()
    path = os.path.join(root, kind)
    os.makedirs(path)
    hf.save(os.path.join(path, "tokenizer.json"))
    config["added_tokens_decoder"] = {str(i): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
                                               "normalized": t.normalized, "single_word": t.single_word,
                                               "special": t.special}
                                      for i, t in hf.get_added_tokens_decoder().items()}
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return Tokenizer.load(path), transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hub_folders"))


def test_special_tokens_and_their_ids_are_transformers(root):
    for kind in KINDS:
        ours, ref = folder(kind, root)
        assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id), kind
        assert ours.vocab_size == len(ref), kind
        assert ours.special_ids == sorted(i for i, t in ref.added_tokens_decoder.items() if t.special), kind


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_encode_decode_and_stream_as_transformers(root, text):
    for kind in KINDS:
        ours, ref = folder(kind, root)
        for special in (False, True):
            ids = ref(text, add_special_tokens=special)["input_ids"]
            assert ours.encode(text, add_special_tokens=special) == ids, kind
            assert ours.encode_batch([text, "x"], add_special_tokens=special)[0] == ids, kind
        for skip in (True, False):
            want = ref.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == want, (kind, skip)
            assert (ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
                    == ref.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)), (kind, skip)
            decoder = StreamDecoder(ours, skip_special_tokens=skip)
            pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
            assert "".join(pieces) == want, (kind, skip, pieces)


def test_asking_a_bpe_decode_to_clean_up_spaces_leaves_them_as_transformers_does(root):
    """transformers 5 ignores clean_up_tokenization_spaces=True for a BPE model even when a decode call asks for it:
    it would drop the real spaces of "Hello , world ." (Llama 3's tokenizer_config.json sets it). decode(...,
    clean_up_tokenization_spaces=True) here cleaned them up, so the text differed from transformers' and from encode's
    input; a word-piece tokenizer still cleans up."""
    text = "Hello , world . I ' m here , don ' t go !"
    for kind in KINDS:
        ours, ref = folder(kind, root)
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            want = ref.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=True)
            assert ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=True) == want, kind
        cleaned = ours.decode(ids, clean_up_tokenization_spaces=True)
        assert cleaned == ("hello, world. i'm here, don't go!" if kind == "bert" else text), kind


@settings(max_examples=40, deadline=None)
@given(TEXT, st.lists(st.integers(0, 10**6), max_size=8), st.booleans())
def test_a_stream_is_the_decode_of_its_ids_wherever_that_text_is_complete(root, text, noise, skip):
    """After each id: what was streamed starts the decode of the ids so far, equals it where the decoder holds nothing
    back, and holds no U+FFFD that the full decode lacks (half a character, or a byte-fallback run still open)."""
    for kind in KINDS:
        ours, _ = folder(kind, root)
        ids = ours.encode(text, add_special_tokens=True) + [n % ours.vocab_size for n in noise]
        final, streamed = ours.decode(ids, skip_special_tokens=skip), ""
        decoder = StreamDecoder(ours, skip_special_tokens=skip)
        for k, i in enumerate(ids, 1):
            streamed += decoder.push(i)
            so_far = ours.decode(ids[:k], skip_special_tokens=skip)
            assert so_far.startswith(streamed) and (decoder.pending or streamed == so_far), (kind, ids[:k])
            assert "\ufffd" not in streamed or "\ufffd" in final, (kind, ids[:k])
        assert streamed + decoder.flush() == final, kind


@settings(max_examples=30, deadline=None)
@given(TEXT)
def test_a_llama_class_without_a_prefix_space_reads_as_transformers(root, text):
    """tokenizer_config.json's add_prefix_space=false makes transformers' LlamaTokenizer put no "▁" before the text
    and keep a leading space on decode, whatever tokenizer.json (Metaspace, or the older Prepend normalizer) does: here
    "Hello" was encoded "▁Hello" and " Hello" decoded "Hello"."""
    for kind in NO_PREFIX:
        ours, ref = folder(kind, root)
        for special in (False, True):
            ids = ref(text, add_special_tokens=special)["input_ids"]
            assert ours.encode(text, add_special_tokens=special) == ids, kind
        for skip in (True, False):
            want = ref.decode(ids, skip_special_tokens=skip)
            decoder = StreamDecoder(ours, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == want, kind
            assert "".join([decoder.push(i) for i in ids] + [decoder.flush()]) == want, kind


def test_a_llama_class_without_a_prefix_space_saves_as_it_reads(root, tmp_path):
    for kind in NO_PREFIX:
        ours, ref = folder(kind, root)
        assert ours.encode("Hello world") == ref("Hello world", add_special_tokens=False)["input_ids"]
        assert ours.decode(ours.encode(" Hello")) == " Hello"
        ours.save(tmp_path / kind)
        again = transformers.AutoTokenizer.from_pretrained(tmp_path / kind)
        for text in ("Hello world", " Hello", "a</s> b"):
            assert again(text)["input_ids"] == ref(text)["input_ids"] == Tokenizer.load(tmp_path / kind).encode(
                text, add_special_tokens=True)


@pytest.mark.parametrize("cls", ["BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer", "MPNetTokenizer"])
@pytest.mark.parametrize(("json_lowercase", "config"), [
    (False, {}), (True, {"do_lower_case": False}), (False, {"do_lower_case": True}), (True, {"strip_accents": False}),
    (False, {"do_lower_case": False, "tokenize_chinese_chars": False}), (True, {"do_lower_case": True})])
def test_a_bert_class_normalizes_as_its_config_says_as_in_transformers(tmp_path, cls, json_lowercase, config):
    """transformers' BERT-style classes build their normalizer from tokenizer_config.json (do_lower_case, lowercase
    when it is absent; strip_accents; tokenize_chinese_chars) over tokenizer.json's: a cased tokenizer.json under a
    config without do_lower_case was read cased here ("Hello" one token, where transformers reads "hello"), and a
    do_lower_case=false edited in to fix casing was ignored."""
    wp = BertWordPieceTokenizer(lowercase=json_lowercase)
    wp.train_from_iterator(CORPUS, vocab_size=400, show_progress=False)
    wp._tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, **config}))
    ours, ref = Tokenizer.load(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ("Hello Étude 日本語 CAFÉ naïve", "THE Quick brown fox.", "Привет мир"):
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
        ids = ref(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
