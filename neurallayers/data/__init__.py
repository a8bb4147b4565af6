"""Tokenizers, corpora and datasets: everything between text on disk and token tensors."""

from neurallayers.data.corpora import BUILTIN_CORPORA, Corpus, Document, TextCorpus, load_corpus
from neurallayers.data.datasets import RandomWindows, SFTExample, TokenData, eval_batches, prepare_tokens, sft_collate
from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

__all__ = [
    "BUILTIN_CORPORA",
    "Corpus",
    "Document",
    "RandomWindows",
    "SFTExample",
    "StreamDecoder",
    "TextCorpus",
    "TokenData",
    "Tokenizer",
    "eval_batches",
    "load_corpus",
    "prepare_tokens",
    "sft_collate",
]
