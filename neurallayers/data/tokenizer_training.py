"""Training a tokenizer on texts: byte-level BPE (GPT-2 style) and character level. `Tokenizer.train_bpe` and
`Tokenizer.train_char` wrap what these build."""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Iterator

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.data.chunking import chunk_text
from neurallayers.data.special_tokens import ENDOFTEXT, MASK, UNK, mask_takes_its_space
from neurallayers.data.text_checks import check_text

# The largest vocab_size train_bpe takes: HF's BpeTrainer allocates tables of vocab_size entries up front, and 2**31
# aborted the process (a Rust allocation failure, no Python error); 2**64 overflowed. Far past any real vocabulary.
MAX_BPE_VOCAB = 2**24
# HF's trainer holds ~100 bytes a character of each text it is given (100 GB for a 1 GB file read whole): a longer text
# is trained on in pieces of about this many characters, cut where GPT-2's split starts a pre-token anyway.
TRAIN_PIECE_CHARS = 50_000


def train_bpe(texts: Iterable[str], *, vocab_size: int, special_tokens: Iterable[str],
              show_progress: bool) -> tuple[HFTokenizer, dict[str, str | None]]:
    """The byte-level BPE `Tokenizer.train_bpe` describes, and its bos, eos and pad tokens (constructor keywords)."""
    special_tokens = _checked_special_tokens(special_tokens)
    texts = _text_iterator(texts, "train_bpe")
    if isinstance(vocab_size, bool) or not hasattr(vocab_size, "__index__"):  # "300.0 is too small" misled
        raise ValueError(f"vocab_size={vocab_size!r} must be an int, not {type(vocab_size).__name__}")
    vocab_size = operator.index(vocab_size)  # a numpy integer too
    if vocab_size > MAX_BPE_VOCAB:  # HF's trainer reserves room for vocab_size tokens before it reads a text
        raise ValueError(f"vocab_size={vocab_size} is too large: at most {MAX_BPE_VOCAB:,} (a trained BPE stops at "
                         "what its corpus holds anyway)")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size!r} is too small: byte-level BPE needs at least "
                         f"256 bytes + {len(special_tokens)} special tokens = {256 + len(special_tokens)}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # HF's bars write blank lines to stdout when it is not a terminal (`prepare ... > out.txt`)
        show_progress=show_progress and sys.stdout.isatty(),
    )
    chars = 0

    def counted():  # texts may be a one-pass stream: count what the trainer reads
        nonlocal chars
        for i, text in enumerate(texts):
            check_text(text, f"train_bpe: texts[{i}]")  # HF fails with a UnicodeEncodeError naming no text
            chars += len(text)
            yield from _pieces(text)

    hf.train_from_iterator(counted(), trainer=trainer)
    if chars == 0:
        raise ValueError("train_bpe got no text: the texts are empty")
    eos = ENDOFTEXT if ENDOFTEXT in special_tokens else None
    pad = "<pad>" if "<pad>" in special_tokens else None
    if MASK in special_tokens:
        mask_takes_its_space(hf)
    return hf, {"bos_token": eos, "eos_token": eos, "pad_token": pad}


def _text_iterator(texts: Iterable[str], caller: str) -> Iterator[str]:
    """An iterator over `texts`, or a TypeError naming `caller`: a str or bytes is one text, not texts (a file read in
    binary was taken byte by byte, "texts[0] is int"), and None was "'NoneType' object is not iterable"."""
    expected = f"{caller} expects an iterable of texts (a list of str)"
    if isinstance(texts, str | bytes | bytearray):
        hint = "wrap it in a list" if isinstance(texts, str) else "decode it first"
        raise TypeError(f"{expected}, not a single {type(texts).__name__} ({hint})")
    try:
        return iter(texts)
    except TypeError:
        raise TypeError(f"{expected}, got {type(texts).__name__}") from None


def _pieces(text: str) -> Iterable[str]:
    """`text` in pieces the trainer counts the same words in as in the whole (`chunk_text`'s cuts for a byte-level BPE
    with GPT-2's split); a text of up to twice TRAIN_PIECE_CHARS as it is."""
    if len(text) <= 2 * TRAIN_PIECE_CHARS:
        return (text,)
    return chunk_text((text,), TRAIN_PIECE_CHARS, byte_level=True)


def _checked_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    """`special_tokens` as a list without repeats (HF's trainer adds a repeated one once: counted twice, it made
    vocab_size look too small), each a non-empty str of valid Unicode."""
    if isinstance(special_tokens, str):  # its characters became one-letter specials that decode dropped from text
        raise TypeError(f"special_tokens must be a list of str, not a single str (wrap it in a list: "
                        f"[{special_tokens!r}])")
    try:
        tokens = list(special_tokens)
    except TypeError:
        raise TypeError(f"special_tokens must be a list of str, got {type(special_tokens).__name__}") from None
    for i, token in enumerate(tokens):
        check_text(token, f"special_tokens[{i}]")  # HF's TypeError names no token
        if not token:  # HF gave it an id of its own, as a plain "" token
            raise ValueError(f"special_tokens[{i}]='' is empty: a special token needs at least one character")
    return list(dict.fromkeys(tokens))


def train_char(texts: Iterable[str]) -> HFTokenizer:
    """The character-level tokenizer `Tokenizer.train_char` describes; its bos and eos are ENDOFTEXT."""
    texts = _text_iterator(texts, "train_char")
    chars: set[str] = set()
    for i, text in enumerate(texts):
        check_text(text, f"train_char: texts[{i}]")  # HF's vocabulary would refuse it, naming no text
        chars.update(text)
    if not chars:
        raise ValueError("train_char got no characters: the texts are empty")
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    vocab[ENDOFTEXT] = len(vocab)
    vocab[UNK] = len(vocab)
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
    # [\s\S] rather than "." so newlines are characters too (Oniguruma's "." skips "\n").
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()  # join characters without spaces
    hf.add_special_tokens([ENDOFTEXT, UNK])  # special, as transformers makes the unk_token the config names
    return hf
