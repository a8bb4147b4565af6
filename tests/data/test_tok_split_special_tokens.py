"""tokenizer_config.json's split_special_tokens against transformers: with it, a special token typed in a text is
encoded as the text it spells (a user cannot inject "<|im_end|>"), while added tokens that are not special still match.
It was ignored here, so such a folder gave other ids than transformers for any text holding a special token."""

from __future__ import annotations

import copy
import json
import os
import pickle

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

CORPUS = ["The quick brown fox jumps over the lazy dog. Hello, world! Étude café 日本 🎉\n"] * 20
TEXTS = ["a<|im_end|>b", "<|im_start|>user\nhi<|im_end|>\n", " <|endoftext|> x <tool> y", "plain text", "",
         "<|im_end|", "<<|im_end|>>"]


def _folder(path, split: bool | None) -> None:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    hf.add_tokens([AddedToken("<tool>", special=False)])
    hf.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[
        ("<|im_start|>", hf.token_to_id("<|im_start|>"))])
    path.mkdir(parents=True, exist_ok=True)
    hf.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "bos_token": "<|im_start|>",
              "pad_token": "<|endoftext|>"}
    if split is not None:
        config["split_special_tokens"] = split
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def _check(ours: Tokenizer, path) -> None:
    ref = transformers.AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == ref(text, add_special_tokens=special)["input_ids"]
        assert ours.encode_batch([text, text]) == [ref(text, add_special_tokens=False)["input_ids"]] * 2
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            want = ref.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == want
            decoder = StreamDecoder(ours, skip_special_tokens=skip)
            assert "".join([decoder.push(i) for i in ids] + [decoder.flush()]) == want


@pytest.mark.parametrize("split", [True, False, None])
def test_special_tokens_in_a_text_encode_as_transformers_encodes_them(tmp_path, split):
    _folder(tmp_path, split)
    ours = Tokenizer.load(tmp_path)
    _check(ours, tmp_path)
    im_end = ours.token_to_id("<|im_end|>")
    assert (im_end in ours.encode("a<|im_end|>")) is not bool(split)
    assert ours.token_to_id("<tool>") in ours.encode("a <tool>")  # not special: matched either way


def test_split_special_tokens_survives_save_copies_and_keys_the_cache(tmp_path):
    _folder(tmp_path / "split", True)
    _folder(tmp_path / "whole", False)
    ours = Tokenizer.load(tmp_path / "split")
    assert ours.fingerprint() != Tokenizer.load(tmp_path / "whole").fingerprint()  # the token cache is rebuilt
    ours.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    _check(again, tmp_path / "saved")
    assert again.fingerprint() == ours.fingerprint()
    im_end = ours.token_to_id("<|im_end|>")
    copies = (ours.with_mask_token(), ours.with_bos(not ours.adds_bos), Tokenizer.from_hf(ours.hf),
              pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours), copy.copy(ours))
    for other in copies:
        assert im_end not in other.encode("a<|im_end|>b")
    assert im_end in pickle.loads(pickle.dumps(Tokenizer.load(tmp_path / "whole"))).encode("a<|im_end|>b")


def test_the_embedding_batches_keep_split_special_tokens(tmp_path):
    """embeddings.tokenize_batch encodes with a private copy of the tokenizer: a deepcopy of it dropped the setting."""
    from neurallayers.embeddings import tokenize_batch

    _folder(tmp_path, True)
    ours = Tokenizer.load(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for max_length in (None, 64):
        ids = tokenize_batch(ours, ["a<|im_end|>b"], max_length=max_length)["input_ids"][0].tolist()
        assert ids == ref("a<|im_end|>b")["input_ids"]
