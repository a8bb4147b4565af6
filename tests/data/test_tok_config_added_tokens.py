"""tokenizer_config.json's added_tokens_decoder against transformers: it re-adds those tokens over tokenizer.json's, so
the flags listed there (special, lstrip, rstrip, single_word, normalized) are the ones a folder's texts encode and
decode with, where the two files disagree (a config edited by hand to mark a tool token special, or to make a chat
token take the space before it). Here tokenizer.json's flags were used, and ids and decoded text differed."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.implementations import BertWordPieceTokenizer

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

CORPUS = ["The quick brown fox jumps over the lazy dog. Hello, world! Étude café 日本 🎉\n"] * 20
ADDED = ("<|eot_id|>", "<tool>", "Cat")  # a special, a plain added token, a plain one that is a word
PIECES = ["a", " ", "  ", "\n", "Hello", " world", "é", "<|eot_id|>", "<tool>", "Cat", "cat", "CAT", "Cats", "x"]
FLAGS = st.fixed_dictionaries({k: st.booleans() for k in ("special", "lstrip", "rstrip", "single_word", "normalized")})


def _byte_level() -> tuple[HFTokenizer, dict]:
    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_special_tokens(["<|endoftext|>"])
    return hf, {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}


def _bert() -> tuple[HFTokenizer, dict]:
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS, vocab_size=200, show_progress=False)
    hf = wp._tokenizer
    cls, sep = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    hf.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                               ("[SEP]", sep)])
    return hf, {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "cls_token": "[CLS]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}


def _folder(path, build, config_flags: list[dict]) -> None:
    """tokenizer.json with ADDED as plain defaults; tokenizer_config.json listing them with `config_flags`."""
    hf, config = build()
    hf.add_special_tokens([ADDED[0]])
    hf.add_tokens(list(ADDED[1:]))
    path.mkdir(parents=True, exist_ok=True)
    hf.save(str(path / "tokenizer.json"))
    decoder = {str(i): {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized,
                        "single_word": t.single_word, "special": t.special}
               for i, t in hf.get_added_tokens_decoder().items()}
    for token, flags in zip(ADDED, config_flags, strict=True):
        decoder[str(hf.token_to_id(token))].update(flags)
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": decoder}))


def _check(path, texts) -> None:
    ours, ref = Tokenizer.load(path), transformers.AutoTokenizer.from_pretrained(path)
    for text in texts:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == ref(text, add_special_tokens=special)["input_ids"]
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            want = ref.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == want, (text, skip)
            decoder = StreamDecoder(ours, skip_special_tokens=skip)
            assert "".join([decoder.push(i) for i in ids] + [decoder.flush()]) == want, (text, skip)


@pytest.mark.parametrize("build", [_byte_level, _bert], ids=["byte-level", "wordpiece"])
def test_flags_only_the_config_gives_are_read_as_transformers_reads_them(tmp_path, build):
    flags = [{"lstrip": True, "rstrip": True}, {"special": True}, {"single_word": True, "lstrip": True}]
    _folder(tmp_path / "hub", build, flags)
    ours = Tokenizer.load(tmp_path / "hub")
    assert ours.token_to_id("<tool>") in ours.special_ids
    texts = ["a <|eot_id|>  b", "x <tool> y", "Cats and a Cat  z", " <tool><|eot_id|>Cat"]
    _check(tmp_path / "hub", texts)
    ours.save(tmp_path / "saved")  # what we write reads the same, here and in transformers
    _check(tmp_path / "saved", texts)
    assert [Tokenizer.load(tmp_path / "saved").encode(t) for t in texts] == [ours.encode(t) for t in texts]


@settings(max_examples=15, deadline=None)
@given(st.lists(FLAGS, min_size=3, max_size=3), st.lists(st.lists(st.sampled_from(PIECES), max_size=10).map("".join),
                                                         min_size=5, max_size=5))
def test_any_flags_in_the_config_encode_and_decode_as_in_transformers(tmp_path_factory, flags, texts):
    path = tmp_path_factory.mktemp("flags")
    _folder(path, _byte_level, flags)
    _check(path, texts)


def test_a_token_only_the_config_lists_is_added_at_its_id(tmp_path):
    """transformers adds a token listed in added_tokens_decoder that tokenizer.json lacks, at the next id."""
    _folder(tmp_path, _byte_level, [{}, {}, {}])
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    new_id = max(map(int, config["added_tokens_decoder"])) + 1
    config["added_tokens_decoder"][str(new_id)] = {"content": "<new>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.load(tmp_path).token_to_id("<new>") == new_id
    _check(tmp_path, ["a <new> b"])


def test_a_config_id_that_does_not_fit_warns_and_keeps_tokenizer_json(tmp_path):
    _folder(tmp_path, _byte_level, [{}, {}, {}])
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["5000"] = {"content": "<far>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"gives '<far>' id 5000, which is neither its id in the vocabulary nor the "
                                         r"next free one; kept as tokenizer.json has it"):
        assert Tokenizer.load(tmp_path).token_to_id("<far>") is None


def test_many_tokens_only_the_config_lists_are_added_at_their_ids_in_runs(tmp_path):
    """They were added one call a token, in quadratic time (8,000 took 17 s; a 4 MB config of 100,000, about 45
    minutes, stalled a load or a /reload); now a call a run of special or plain tokens. The same ids and flags as
    transformers gives, where runs of each kind alternate and a listed token changes tokenizer.json's flags."""
    _folder(tmp_path, _byte_level, [{"lstrip": True}, {"special": True}, {}])
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    first = max(map(int, config["added_tokens_decoder"])) + 1
    for k in range(300):
        config["added_tokens_decoder"][str(first + k)] = {"content": f"<t{k}>", "special": (k // 7) % 2 == 0,
                                                          "rstrip": k % 5 == 0}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer.load(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert [ours.token_to_id(f"<t{k}>") for k in range(300)] == list(range(first, first + 300))
    want = {i: (t.content, t.special, t.rstrip) for i, t in ref.added_tokens_decoder.items()}
    got = {i: (t.content, t.special, t.rstrip) for i, t in ours.hf.get_added_tokens_decoder().items()}
    assert got == want
    _check(tmp_path, ["a <t0>  b <t7> <t299>", "<tool><t13>Cat <t14>x"])
