"""From a RunConfig to a tokenizer and token arrays: the data half of `fit()`.

The tokenizer decides the model's vocab_size: when they differ, the tokenizer wins and the log says so. An
encoder (masked-LM training) also gets a mask token in its tokenizer and the tokenizer's padding id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from neurallayers.training.config import DataConfig, RunConfig

log = logging.getLogger("neurallayers.training")


def build_tokenizer(data: DataConfig, corpus: object, *, model_vocab: int, show_progress: bool = False,
                    mask: bool = False) -> object:
    """The tokenizer named by `data.tokenizer`; trained ones ("bpe", "char") are cached by corpus and size.

    Args:
        corpus: a `neurallayers.data.Corpus` (used to train "bpe" and "char").
        model_vocab: the BPE vocabulary size when `data.vocab_size` is None.
        mask: give it a mask token (masked-LM training): a trained BPE holds "<mask>" within its vocab_size;
            any other tokenizer without one gets "<mask>" added after its last id.
    """
    from neurallayers.data import Tokenizer
    from neurallayers.data.tokenizers import ENDOFTEXT, MASK, mask_takes_its_space

    kind = data.tokenizer
    if kind != "bpe" and data.vocab_size is not None:
        log.warning("data.vocab_size=%d is ignored: it sizes a trained BPE (data.tokenizer: bpe), and %r has its "
                    "own vocabulary", data.vocab_size, kind)
    if kind not in ("bpe", "char"):
        if kind != "gpt2" and not Path(kind).expanduser().exists():
            raise FileNotFoundError(f"DataConfig.tokenizer={kind!r}: expected 'bpe', 'char', 'gpt2' or the path "
                                    "of a tokenizer.json or tokenizer folder, and no such path exists")
        tok = Tokenizer.load(kind if kind == "gpt2" else Path(kind).expanduser())
        return tok.with_mask_token() if mask else tok
    vocab = data.vocab_size or model_vocab
    spec = {"kind": kind, "vocab": vocab if kind == "bpe" else None, "corpus": corpus.fingerprint()}
    if mask:  # a decoder run's cached tokenizer keeps its key
        spec["mask"] = True
    key = json.dumps(spec)
    folder = data.resolved_cache_dir / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (folder / "tokenizer_config.json").is_file():
        tok = Tokenizer.load(folder)  # saved with its mask token when `mask`
        if mask and kind == "bpe":  # cached before <mask> took the space before it: it does now
            mask_takes_its_space(tok.hf)
        return tok
    if not any(next(doc.blocks(), "") for doc in corpus.documents()):  # stops at the first document with text
        raise ValueError(f"corpus {corpus.name!r} has no text to tokenize")
    texts = _training_texts(corpus)
    if kind == "char":
        tok = Tokenizer.train_char(texts)
        tok = tok.with_mask_token() if mask else tok
    else:
        specials = (ENDOFTEXT, MASK) if mask else (ENDOFTEXT,)
        if vocab < 256 + len(specials):  # a masked LM's holds its <mask> too: 257 passed DataConfig's check
            bpe = "a masked LM's byte-level BPE" if mask else "byte-level BPE"
            raise ValueError(f"DataConfig.vocab_size={vocab}: {bpe} needs >= {256 + len(specials)} (256 bytes, "
                             f"{' and '.join(map(repr, specials))}); set data.vocab_size or use data.tokenizer='char'")
        tok = Tokenizer.train_bpe(texts, vocab_size=vocab, special_tokens=specials, show_progress=show_progress)
        if tok.vocab_size < vocab:  # the corpus has fewer merges to learn than asked for
            log.warning("the BPE tokenizer has %d tokens, not the %d asked for: the corpus is too small for more "
                        "merges", tok.vocab_size, vocab)
    try:
        tok.save(folder)  # atomic per file; tokenizer_config.json last, so its presence means complete
    except OSError as e:  # a read-only cache: one line, not a traceback
        from neurallayers.data.datasets import cache_write_error

        raise cache_write_error(e, folder.parent) from None
    return tok


def _training_texts(corpus: object) -> Iterator[str]:
    """The corpus's texts in the pieces a byte-level BPE's token cache cuts (`chunk_text`), for the tokenizer
    trainers: HF's BPE trainer took ~90 bytes a character of a text given whole (1.8 GB for a 20 MB file). A piece
    ends where GPT-2's split, the trained BPE's, starts a pre-token anyway (but in a text with no whitespace after a
    word for twice CHUNK_CHARS), so the trainer counts the same words; a file is read a block at a time."""
    from neurallayers.data.corpora import chunk_text
    from neurallayers.data.datasets import CHUNK_CHARS

    for doc in corpus.documents():
        yield from chunk_text(doc.blocks(), CHUNK_CHARS, byte_level=True)


def prepare_data(run: RunConfig, *, tokenizer: object | None = None, show_progress: bool = False,
                 pretrained: bool = False) -> tuple[object, object, RunConfig]:
    """(tokenizer, TokenData, run with model.vocab_size = tokenizer.vocab_size).

    An encoder config (causal=False) is trained as a masked LM: its tokenizer gets a mask token, its head becomes
    "mlm" (from "none") and its pad_token_id the tokenizer's padding id (None without one: a preset's id 0 would
    otherwise freeze the embedding of whatever token 0 is here).

    Args:
        tokenizer: use this one (a resumed run's saved tokenizer) instead of building one.
        pretrained: the model's vocab_size is fixed by pretrained weights (train.init_from): it stays, and may be
            larger than the tokenizer's (a padded embedding table), never smaller.
    """
    from neurallayers.data import load_corpus
    from neurallayers.data.datasets import document_frame

    corpus = load_corpus(run.data.source, text_field=run.data.text_field)
    encoder = not run.model.causal
    # trained on this corpus, it knows every character: its unk tokens are the corpus's own "<unk>" texts (WikiText's)
    own = tokenizer is None and run.data.tokenizer in ("bpe", "char")
    if tokenizer is None:
        tokenizer = build_tokenizer(run.data, corpus, model_vocab=run.model.vocab_size, show_progress=show_progress,
                                    mask=encoder)
    changes = model_changes(run, tokenizer, pretrained=pretrained)
    if "pad_token_id" in changes:
        log.info("model.pad_token_id set to %s from the tokenizer (config said %s)", tokenizer.pad_id,
                 run.model.pad_token_id)
    if "vocab_size" in changes:
        log.info("model.vocab_size set to %d from the tokenizer (config said %d; the tokenizer wins)",
                 tokenizer.vocab_size, run.model.vocab_size)
    if changes:
        run = RunConfig(model=run.model.replace(**changes), train=run.train, data=run.data)
    if run.data.document_bos is None:  # decided once, and recorded: a resume tokenizes as the run began
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, document_bos=tokenizer.adds_bos))
    if run.data.document_frame is None:  # likewise ([CLS] ... [SEP] around a BERT tokenizer's documents)
        framed = document_frame(tokenizer) is not None
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, document_frame=framed))
    tokenizer = _prompted_as_documents(tokenizer, run.data.document_bos)
    tokens = tokenize_corpus(run.data, corpus, tokenizer, seed=run.train.seed, show_progress=show_progress)
    need = run.model.block_size + 1
    if len(tokens.train) < need:
        raise ValueError(f"the corpus {run.data.source!r} gives only {len(tokens.train)} training tokens; "
                         f"model.block_size={run.model.block_size} needs at least {need}")
    if not own:
        _warn_if_unknown(tokenizer, tokens.train, run.data.source)
    return tokenizer, tokens, run


def _prompted_as_documents(tokenizer: object, document_bos: bool) -> object:
    """The run's tokenizer, whose own encoding (prompts: generate, serve, eval, the Hugging Face export) starts with
    bos exactly when its documents do; one line when data.document_bos changes what the tokenizer did."""
    out = tokenizer.with_bos(document_bos)
    if out is not tokenizer:
        log.info("data.document_bos=%s: the run's tokenizer %s a bos before each prompt, as before each document",
                 str(document_bos).lower(), "now puts" if document_bos else "no longer puts")
    return out


def token_sample(split: object) -> object:
    """About 65k evenly spaced tokens of `split` (a view of a memmap: a bounded read however large the corpus)."""
    return split[::max(1, len(split) >> 16)]


def _warn_if_unknown(tokenizer: object, train: object, source: str) -> None:
    """A tokenizer that does not know the corpus's characters (a fine-tune's source or a resumed run's, trained on
    other text; a char tokenizer above all) encodes each unknown one as its unk token, which the model then learns
    to predict, silently. Counted on `token_sample`, the tokens trainer.data_digest reads too."""
    import numpy as np

    name, unk = tokenizer.named_tokens.get("unk_token"), tokenizer.unk_id
    sample = np.asarray(token_sample(train))
    share = float((sample == unk).mean()) if unk is not None and len(sample) else 0.0
    if share > 0.01:
        log.warning("%.1f%% of the training tokens of %s are the tokenizer's unknown token %s: the run's tokenizer "
                    "lacks characters of this corpus (a tokenizer trained on other text?), and the model learns to "
                    "predict %s there", 100 * share, source, name, name)


def model_changes(run: RunConfig, tokenizer: object, *, pretrained: bool = False) -> dict:
    """The ModelConfig fields prepare_data sets from the tokenizer, before any corpus is read: vocab_size (not for
    pretrained weights, whose table may be larger), and a masked LM's head and pad_token_id."""
    changes = {}
    if not run.model.causal:
        if tokenizer.mask_id is None:
            raise ValueError("masked-LM training needs a mask token ([MASK] or <mask>) in the run's tokenizer")
        if run.model.head == "none":
            changes["head"] = "mlm"
        if run.model.pad_token_id != tokenizer.pad_id:
            changes["pad_token_id"] = tokenizer.pad_id
    if pretrained and tokenizer.vocab_size > run.model.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens and the init_from model's vocabulary "
                         f"{run.model.vocab_size}: they do not belong together")
    if tokenizer.vocab_size != run.model.vocab_size and not pretrained:
        changes["vocab_size"] = tokenizer.vocab_size
    return changes


def tokenize_corpus(data: DataConfig, corpus: object, tokenizer: object, *, seed: int,
                    val_fraction: float | None = None, show_progress: bool = False) -> object:
    """The token cache of `corpus` (a `TokenData`), split the way `data.split` says.

    Args:
        seed: chooses the pieces of a "documents" split (the run's TrainConfig.seed).
        val_fraction: None takes `data.val_fraction`; 0 puts everything in train.
    """
    from neurallayers.data import prepare_tokens

    fraction = data.val_fraction if val_fraction is None else val_fraction
    cache = data.resolved_cache_dir / "tokens"
    if data.split == "tail":  # the corpus in its order, each document ending with eos, the last tokens to val
        return prepare_tokens(corpus, tokenizer, cache, val_fraction=fraction, seed=0, show_progress=show_progress,
                              document_bos=data.document_bos, tail=True, frame=data.document_frame)
    return prepare_tokens(corpus, tokenizer, cache, val_fraction=fraction, seed=seed, show_progress=show_progress,
                          document_bos=data.document_bos, frame=data.document_frame)


