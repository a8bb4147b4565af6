"""Hugging Face tokenizer folders, read and written as transformers does: tokenizer.json or the vocabulary files
(vocab.json + merges.txt, BERT's vocab.txt), tokenizer_config.json, special_tokens_map.json, added tokens and chat
templates."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from neurallayers.checks import is_int
from neurallayers.data.special_tokens import ENDOFTEXT, NAMED_TOKENS, UNK, make_special
from neurallayers.files import write_text_atomic

if TYPE_CHECKING:
    from neurallayers.data.tokenizers import Tokenizer

KINDS = ("bpe", "char", "gpt2", "file")  # a Tokenizer's kind, kept in tokenizer_config.json as neurallayers_kind
_OWNER_KEY = "neurallayers_tokenizer_file"  # tokenizer_config.json's: the .json file it is for, if not tokenizer.json
_VOCAB_FILES = ("vocab.json", "merges.txt", "vocab.txt", "tokenizer.model")  # a folder's other tokenizer files
_LOAD_FORMS = ("'gpt2', a folder with tokenizer.json (or vocab.json + merges.txt, or a BERT vocab.txt), or a path to "
               "a tokenizer.json file")
HF_SETTINGS = ("padding_side", "truncation_side")  # read by transformers only; "left" or "right"
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token", "mask_token")

# Fallbacks for a bare tokenizer.json without tokenizer_config.json: common spellings, first match wins.
_EOS_GUESSES = (ENDOFTEXT, "</s>", "<|end_of_text|>", "<eos>")
_BOS_GUESSES = ("<s>", "<|begin_of_text|>", "<bos>")
_PAD_GUESSES = ("<pad>", "[PAD]", "<|pad|>")


def is_id_list(value, vocab_size: int) -> bool:
    """Whether `value` is a list of int token ids in [0, vocab_size) (bools are not ids)."""
    return isinstance(value, list) and all(is_int(t) and 0 <= t < vocab_size for t in value)


def save_folder(tokenizer: Tokenizer, path: str | os.PathLike) -> Path:
    """`Tokenizer.save`: tokenizer.json and tokenizer_config.json (and the chat template and special tokens map files
    a folder transformers wrote holds, brought up to date)."""
    path = Path(path)
    for name in tokenizer.named_chat_templates:  # before anything is written: not half a folder
        _template_file_name(name)
    json_path = path if path.suffix == ".json" else path / "tokenizer.json"
    _check_config_owner(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # lets transformers.AutoTokenizer open the folder
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "chat_template": _config_templates(tokenizer),
        "neurallayers_kind": tokenizer.kind,
    }
    if tokenizer.kind == "char":
        config["unk_token"] = UNK
    for key, token in tokenizer.named_tokens.items():
        config.setdefault(key, token)
    if tokenizer.mask_token is not None:  # transformers' fill-mask pipeline reads it from here
        config["mask_token"] = tokenizer.mask_token
    if "sep_token" in config and _types_pairs(tokenizer.hf):  # else transformers' PreTrainedTokenizerFast returns no
        # token_type_ids: a converted BERT pair classifier (a cross-encoder) scored every pair as one text. Only
        # BERT's kind ([SEP]): Llama's post-processor types pairs too, and its generate() refuses token_type_ids
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    if tokenizer.bos_id is not None:  # what the post-processor does: a Llama-class tokenizer in transformers rebuilds
        # its post-processor from this flag, and takes it as true where it is missing
        config["add_bos_token"] = tokenizer.adds_bos
    if tokenizer.model_max_length is not None:
        config["model_max_length"] = tokenizer.model_max_length
    named = {v for v in config.values() if isinstance(v, str)}
    # the other special tokens (Qwen's <|im_start|>): else transformers' all_special_tokens lacks them (4 and 5
    # read this key)
    if more := [t.content for _, t in sorted(tokenizer.hf.get_added_tokens_decoder().items())
                if t.special and t.content not in named]:
        config["additional_special_tokens"] = more
    if tokenizer.clean_up_tokenization_spaces:
        config["clean_up_tokenization_spaces"] = True
    if tokenizer.hf.encode_special_tokens:
        config["split_special_tokens"] = True
    config.update(tokenizer.hf_settings)
    if tokenizer.extra_eos_ids:  # kept with the tokenizer, so a run directory converted from HF still stops there
        config["neurallayers_extra_eos_ids"] = list(tokenizer.extra_eos_ids)
    if json_path.name != "tokenizer.json":  # whose settings these are: another file saved beside it is refused
        config[_OWNER_KEY] = json_path.name
    write_text_atomic(json_path, tokenizer.hf.to_str(pretty=True))
    write_text_atomic(json_path.parent / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
    _write_template_files(json_path.parent, tokenizer)
    _refresh_special_tokens_map(json_path.parent, config)
    return json_path


def _check_config_owner(json_path: Path) -> None:
    """Refuses to save `json_path` where the tokenizer_config.json beside it holds the settings of another tokenizer
    still there: a second .json file saved in a folder overwrote the first's kind, specials and chat template (a model
    folder's too). A folder's tokenizer.json owns a config that names no file (transformers' and ours)."""
    folder = json_path.parent
    config = _owner_config(folder / "tokenizer_config.json")
    named = config.get(_OWNER_KEY)
    owner = Path(named).name if isinstance(named, str) else "tokenizer.json"
    if (folder / owner).is_file():
        shown = owner
    elif named is None and config and any((folder / f).exists() for f in _VOCAB_FILES):
        shown = "its vocabulary files"  # a folder of GPT-2's vocab.json + merges.txt, or BERT's vocab.txt
    else:  # no config, or the tokenizer it was for is gone: nothing to keep
        shown = None
    if shown is not None and owner != json_path.name:
        raise ValueError(f"{str(folder / 'tokenizer_config.json')!r} holds the settings of {shown}: save "
                         f"{json_path.name} into a folder of its own (a tokenizer's settings are the "
                         "tokenizer_config.json beside it)")


def _owner_config(path: Path) -> dict:
    """tokenizer_config.json as a dict; {} where there is none, or none readable (a save replaces it, as before)."""
    try:
        return _read_config(path)
    except (OSError, ValueError):  # not valid JSON (nested too deep too), or not an object
        return {}


def check_load_argument(path_or_name: object) -> None:
    """What Tokenizer.load takes, in one line: None was os.fspath's "expected str, bytes or os.PathLike object", and
    "" (Path("") is the current folder) loaded the working folder's tokenizer, as nl.load refuses it."""
    if not isinstance(path_or_name, str | os.PathLike):
        raise ValueError(f"Tokenizer.load({path_or_name!r}): expected {_LOAD_FORMS} (a str or pathlib.Path), "
                         f"got {type(path_or_name).__name__}")
    if isinstance(path_or_name, str) and not path_or_name.strip():
        raise ValueError(f"the tokenizer path is empty; expected {_LOAD_FORMS}")


def read_folder(path_or_name: str | os.PathLike) -> tuple[HFTokenizer, dict]:
    """The HF tokenizer and the tokenizer_config.json settings (special_tokens_map.json's and the chat template files'
    merged in, as transformers reads them) of a folder or tokenizer.json file, for `Tokenizer.load`."""
    path = Path(path_or_name)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {str(path)!r}; expected {_LOAD_FORMS}")
    folder = path if path.is_dir() else path.parent
    config = _read_config(folder / "tokenizer_config.json")
    owner, name = config.get(_OWNER_KEY), "tokenizer.json" if path.is_dir() else path.name
    if isinstance(owner, str) and owner != name:  # saved for another .json file beside this one
        warnings.warn(f"{str(folder / 'tokenizer_config.json')!r} holds the settings of {owner}, not of {name}: "
                      "read without it", stacklevel=3)
        config = {}
    if "added_tokens_decoder" not in config:  # an older folder: transformers reads its specials from there
        config.update(_read_config(folder / "special_tokens_map.json"))
    if path.is_dir():
        _read_chat_templates(path, config)
    if path.is_dir() and not (path / "tokenizer.json").exists():
        if (path / "vocab.json").exists() and (path / "merges.txt").exists():
            # add_prefix_space: a space before the text, as transformers' GPT-2 tokenizer reads the setting (the
            # class's default where it names none: Blenderbot's is on)
            prefix = _prefix_space(config) or config.get("add_prefix_space") is True
            hf = byte_level_bpe_from_files(path / "vocab.json", path / "merges.txt", add_prefix_space=prefix)
            hf = _with_added_tokens(hf, path, config)
            roberta = (_class_name(config) or _class_of_model(folder)) in _ROBERTA_CLASSES
            default = ENDOFTEXT if hf.token_to_id(ENDOFTEXT) is not None else None  # GPT-2's defaults
            defaults = {"bos_token": default, "eos_token": default} if not roberta else {  # the class's, where known
                key: token for key, token in _ROBERTA_DEFAULTS.items() if hf.token_to_id(token) is not None}
            for key, token in defaults.items():
                config.setdefault(key, token)
            hf.post_processor = _vocab_files_processor(hf, config, roberta=roberta, prefix=prefix)
            return hf, config
        if (path / "vocab.txt").exists():  # a BERT folder written without tokenizer.json (older fine-tunes)
            hf = _with_added_tokens(_wordpiece_from_vocab(path / "vocab.txt", config), path, config)
            return hf, config
        raise ValueError(f"{str(path)!r} holds neither tokenizer.json nor vocab.json + merges.txt; "
                         f"expected {_LOAD_FORMS}")
    json_path = path / "tokenizer.json" if path.is_dir() else path
    if json_path.suffix != ".json":
        raise ValueError(f"{str(path)!r} is not a .json file; expected {_LOAD_FORMS}")
    try:
        hf = HFTokenizer.from_file(str(json_path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{str(json_path)!r} is not a valid tokenizer.json: {e}") from None
    without_padding(hf)
    if isinstance(config.get("added_tokens_decoder"), dict):
        # transformers re-adds these over tokenizer.json's: their flags win (a token marked special only there is
        # skipped by decode; an lstrip set only there takes the space before the token)
        hf = _with_added_tokens(hf, folder, config, strict=False)
    if config.get("add_prefix_space") is False and _class_name(config) in _SENTENCEPIECE_CLASSES:
        hf = _without_metaspace_prefix(hf)
    if _class_name(config) in _BERT_CLASSES and isinstance(hf.normalizer, normalizers.BertNormalizer):
        hf.normalizer = _bert_normalizer(hf.normalizer, config)
    prefix = _prefix_space(config)
    if prefix is not None and isinstance(hf.pre_tokenizer, pre_tokenizers.ByteLevel):
        # transformers' GPT-2 style classes set the prefix space from tokenizer_config.json (or their default) over
        # tokenizer.json's, and transformers 5 saves such a class's add_prefix_space=True to the config only
        hf.pre_tokenizer.add_prefix_space = prefix
    return hf, config


def from_config(cls: type[Tokenizer], hf: HFTokenizer, config: dict) -> Tokenizer:
    """A `cls` over `hf` with the special tokens and settings `config` (as `read_folder` gives it) names."""

    def special(key: str, guesses: tuple[str, ...]) -> str | None:
        if key in config:  # an explicit null means "none", so no guessing then
            token = config[key]
            token = token.get("content") if isinstance(token, dict) else token  # old HF AddedToken form
            # an id was HF's TypeError naming neither file nor key; a dict without "content" was read as no token
            if config[key] is not None and not isinstance(token, str):
                raise ValueError(f"tokenizer_config.json: {key}={config[key]!r} must be a token's text (a str, or "
                                 '{"content": str}) or null')
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
    make_special(hf, [t.get("content") if isinstance(t, dict) else t for t in named])
    # transformers then encodes special tokens typed in a text as text (its tokenizer.json does not say so)
    hf.encode_special_tokens = config.get("split_special_tokens") is True
    max_len = config.get("model_max_length")
    kind = config.get("neurallayers_kind", "file")
    templates = _chat_templates(config.get("chat_template"))
    tokenizer = cls(
        hf,
        kind=kind if kind in KINDS else "file",
        bos_token=special("bos_token", _BOS_GUESSES),
        eos_token=special("eos_token", _EOS_GUESSES),
        pad_token=special("pad_token", _PAD_GUESSES),
        chat_template=templates.pop("default", None),
        # HF writes a 1e30 sentinel when the length is unknown.
        model_max_length=int(max_len) if isinstance(max_len, int | float) and max_len < 1e12 else None,
        clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces") is True,
    )
    extra = config.get("neurallayers_extra_eos_ids", [])
    if not is_id_list(extra, tokenizer.vocab_size):
        raise ValueError(f"tokenizer_config.json: neurallayers_extra_eos_ids={extra!r} is not a list of ids "
                         f"in [0, {tokenizer.vocab_size})")
    tokenizer.extra_eos_ids = list(extra)
    tokenizer.named_chat_templates = templates
    tokenizer.hf_settings = {k: config[k] for k in HF_SETTINGS if config.get(k) in ("left", "right")}
    for key in NAMED_TOKENS:  # kept, so a save writes them back (a RoBERTa-style sep "</s>" was lost)
        token = config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and hf.token_to_id(token) is not None:
            tokenizer.hf_settings[key] = token
    return tokenizer


def _types_pairs(hf: HFTokenizer) -> bool:
    """Whether encoding a pair of texts gives the second its own token type (BERT's post-processor)."""
    try:
        return any(hf.encode("a", "b").type_ids)
    except Exception:  # a processor that takes no pairs
        return False


def _chat_templates(template) -> dict[str, str]:
    """tokenizer_config.json's chat_template (or the template files'), by name: a string is the "default"; a list of
    {"name", "template"} is transformers' form for models with tool-use or RAG variants, all of them kept (only the
    default was, so load -> save lost the others), of which chat uses "default".

    Raises:
        ValueError: a list entry that is not {"name": str, "template": str} (transformers fails on it with a KeyError).
    """
    if isinstance(template, str):
        return {"default": template}
    if not isinstance(template, list):
        return {}
    named = {}
    for i, entry in enumerate(template):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("template"), str)):
            raise ValueError(f"tokenizer_config.json: chat_template[{i}] must be {{\"name\": str, \"template\": str}}, "
                             f"got {str(entry)[:80]}")
        named[entry["name"]] = entry["template"]
    if named and "default" not in named:  # transformers refuses to choose; chat would use `role: content` lines
        import logging

        logging.getLogger("neurallayers").warning(
            "the tokenizer lists chat templates %s and none named 'default': chats use `role: content` lines "
            "instead", ", ".join(repr(k) for k in named))
    return named


def _config_templates(tokenizer: Tokenizer) -> str | list[dict] | None:
    """The chat templates as tokenizer_config.json holds them: a string, or with named ones transformers' list (which
    transformers before 4.5x reads; later ones read the files `_write_template_files` writes beside it first)."""
    named = tokenizer.named_chat_templates
    if not named:
        return tokenizer.chat_template
    default = [] if tokenizer.chat_template is None else [{"name": "default", "template": tokenizer.chat_template}]
    return default + [{"name": name, "template": text} for name, text in named.items()]


def _write_template_files(folder: Path, tokenizer: Tokenizer) -> None:
    """chat_template.jinja and additional_chat_templates/<name>.jinja, as transformers 5 saves named templates (its
    loader reads these over tokenizer_config.json, so stale files of an earlier save are rewritten or removed)."""
    jinja, named_dir = folder / "chat_template.jinja", folder / "additional_chat_templates"
    named = tokenizer.named_chat_templates
    files = {name: named_dir / _template_file_name(name) for name in named}
    if jinja.exists() or named:  # written for named ones: else transformers 5 reads the named files without a default
        if tokenizer.chat_template is None:
            jinja.unlink(missing_ok=True)
        else:
            write_text_atomic(jinja, tokenizer.chat_template)
    if named:
        named_dir.mkdir(exist_ok=True)
    for name, path in files.items():
        write_text_atomic(path, named[name])
    if named_dir.is_dir():
        for stale in set(named_dir.glob("*.jinja")) - set(files.values()):
            stale.unlink()
        if not any(named_dir.iterdir()):
            named_dir.rmdir()


def _template_file_name(name: str) -> str:
    """The file a named chat template is saved to; refuses a name that is not a plain file name ("../x" wrote outside
    the folder)."""
    if name == "default":
        raise ValueError("named_chat_templates holds 'default': the default template is chat_template")
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"chat template name {name!r} cannot be saved as additional_chat_templates/<name>.jinja; a "
                         "name must be a plain file name (no '/' or '\\')")
    return f"{name}.jinja"


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


def byte_level_bpe_from_files(vocab: Path, merges: Path, *, add_prefix_space: bool = False) -> HFTokenizer:
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


def _with_added_tokens(hf: HFTokenizer, folder: Path, config: dict, *, strict: bool = True) -> HFTokenizer:
    """`hf` with the tokens the folder adds, at the ids it gives and with the flags (special, lstrip, rstrip,
    single_word, normalized) it gives them, as transformers reads them: tokenizer_config.json's added_tokens_decoder,
    else added_tokens.json (a pad token a fine-tune added: without it "<pad>" was encoded as text, and the tokenizer had
    no pad).

    Raises:
        ValueError: where `strict` (a folder of vocabulary files), an added token whose id is neither its id in the
            vocabulary nor the next free one; else (over a tokenizer.json) that token is left as the file has it, with
            a warning.
    """
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
    had = {i: _flags(t) for i, t in hf.get_added_tokens_decoder().items()}
    # Added in runs of one kind (special or not) per call: one call a token took quadratic time (8,000 tokens 17 s,
    # 100,000 about 45 minutes: a 4 MB tokenizer_config.json stalled a load or a /reload). `pending` holds the ids the
    # run's new tokens will take, in order, as the one-at-a-time adds gave them.
    pending: dict[str, int] = {}
    run: list[AddedToken] = []
    size = hf.get_vocab_size(with_added_tokens=True)
    for token_id, spec in sorted(listed.items()):
        content = spec["content"]
        known = pending.get(content, hf.token_to_id(content))
        if token_id != (size if known is None else known):
            problem = (f"{str(folder)!r}: {source} gives {content!r} id {token_id}, which is neither its id in the "
                       "vocabulary nor the next free one")
            if strict:
                raise ValueError(problem)
            warnings.warn(f"{problem}; kept as tokenizer.json has it", stacklevel=4)
            continue
        flags = {k: bool(spec[k]) for k in ("lstrip", "rstrip", "single_word", "normalized") if k in spec}
        token = AddedToken(content, special=bool(spec.get("special", False)), **flags)
        if had.get(token_id) == _flags(token):  # as tokenizer.json has it (nearly always): re-adding costs time
            continue
        if run and run[-1].special != token.special:
            _add_run(hf, run)
            run = []
        run.append(token)
        if known is None:
            pending[content] = size
            size += 1
    _add_run(hf, run)
    return hf


def _add_run(hf: HFTokenizer, tokens: list[AddedToken]) -> None:
    """Adds `tokens`, all special or all not, in one call."""
    if tokens:
        (hf.add_special_tokens if tokens[0].special else hf.add_tokens)(tokens)


def _flags(token: AddedToken) -> tuple:
    return token.content, token.special, token.lstrip, token.rstrip, token.single_word, token.normalized


# transformers' byte-level BPE tokenizer classes that build their pre-tokenizer from add_prefix_space, with its default
# (DeBERTa's, LED's, MVP's, LUKE's and Whisper's read it too: they were left at tokenizer.json's; Blenderbot's is on)
_BYTE_LEVEL_CLASSES = {name: False for name in ("GPT2Tokenizer", "RobertaTokenizer", "BartTokenizer",
                                                "LongformerTokenizer", "GPTNeoXTokenizer", "CodeGenTokenizer",
                                                "DebertaTokenizer", "LEDTokenizer", "MvpTokenizer", "LukeTokenizer",
                                                "WhisperTokenizer")} | {"BlenderbotTokenizer": True}


# transformers' classes that frame a text as RoBERTa does, "<s> $A </s>" (BART's, Longformer's, LED's and MVP's are
# RoBERTa's there), with their default special tokens
_ROBERTA_CLASSES = ("RobertaTokenizer", "BartTokenizer", "LongformerTokenizer", "LEDTokenizer", "MvpTokenizer")
_ROBERTA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                     "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}


def _vocab_files_processor(hf: HFTokenizer, config: dict, *, roberta: bool, prefix: bool):
    """The post-processor transformers' class gives a folder of vocab.json + merges.txt (add_special_tokens=True):
    RoBERTa's kind "<s> $A </s>" (a pair "<s> $A </s> </s> $B </s>"); else bos / eos as tokenizer_config.json's
    add_bos_token / add_eos_token say (OPT's folders set add_bos_token: its prompts start with "</s>"), which
    transformers reads only where there is no tokenizer.json. Here neither was added."""

    def token_id(key: str) -> tuple[str, int] | None:
        token = config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        i = hf.token_to_id(token) if isinstance(token, str) else None
        return None if i is None else (token, i)

    if roberta:
        sep, cls = token_id("sep_token"), token_id("cls_token")
        if sep is None or cls is None:
            return hf.post_processor
        return processors.RobertaProcessing(sep, cls, trim_offsets=config.get("trim_offsets") is not False,
                                            add_prefix_space=prefix)
    bos = token_id("bos_token") if config.get("add_bos_token") is True else None
    eos = token_id("eos_token") if config.get("add_eos_token") is True else None
    if bos is None and eos is None:
        return hf.post_processor

    def framed(seq: str, type_id: int) -> list[str]:  # as transformers' update_post_processor writes it
        return [f"{token}:{type_id}" for token in (bos and bos[0], seq, eos and eos[0]) if token]

    return processors.TemplateProcessing(single=framed("$A", 0), pair=framed("$A", 0) + framed("$B", 1),
                                         special_tokens=list(dict.fromkeys(t for t in (bos, eos) if t)))


# transformers' SentencePiece-style BPE classes that build their "▁" prefix and decoder from add_prefix_space
_SENTENCEPIECE_CLASSES = ("LlamaTokenizer",)  # CodeLlama's keeps its decoder's strip


def _class_of_model(folder: Path) -> str | None:
    """The tokenizer class transformers' AutoTokenizer picks from config.json's model_type where tokenizer_config.json
    names none (folders written before transformers saved tokenizer_class): here, RoBERTa's kind."""
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError, RecursionError):  # no config.json, not an object, nested too deep
        return None
    return _MODEL_TYPE_CLASSES.get(model_type) if isinstance(model_type, str) else None


_MODEL_TYPE_CLASSES = {"roberta": "RobertaTokenizer", "bart": "BartTokenizer", "longformer": "LongformerTokenizer",
                       "led": "LEDTokenizer", "mvp": "MvpTokenizer"}


def _class_name(config: dict) -> str | None:
    name = config.get("tokenizer_class")
    return name.removesuffix("Fast") if isinstance(name, str) else None


def _without_metaspace_prefix(hf: HFTokenizer) -> HFTokenizer:
    """`hf` without the "▁" a SentencePiece-style tokenizer.json puts before the text (Metaspace's prepend scheme, or
    the Prepend normalizer of older files) and without the decoder's strip of it, as transformers' LlamaTokenizer
    builds itself for add_prefix_space=false: "Hello" encoded as "▁Hello" and " Hello" decoded as "Hello" here."""
    spec = json.loads(hf.to_str())

    def edit(part: dict | None, key: str, drop) -> dict | None:
        if part is None:
            return None
        if part.get("type") == "Sequence":
            kept = [edit(p, key, drop) for p in part[key] if not drop(p)]
            return {**part, key: kept}
        if drop(part):
            return None
        return {**part, "prepend_scheme": "never"} if part.get("type") == "Metaspace" else part

    spec["normalizer"] = edit(spec["normalizer"], "normalizers",
                              lambda p: p.get("type") == "Prepend" and p.get("prepend") == "▁")
    spec["pre_tokenizer"] = edit(spec["pre_tokenizer"], "pretokenizers", lambda p: False)
    spec["decoder"] = edit(spec["decoder"], "decoders", lambda p: p.get("type") == "Strip" and p.get("content") == " "
                           and (p.get("start"), p.get("stop")) == (1, 0))
    return copy_hf(hf, json.dumps(spec))


# transformers' BERT-style classes that build their normalizer from tokenizer_config.json (do_lower_case, strip_accents,
# tokenize_chinese_chars; lowercase when it names none) over tokenizer.json's, as transformers 4's fast classes did too
_BERT_CLASSES = ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer", "MPNetTokenizer", "FunnelTokenizer",
                 "SqueezeBertTokenizer", "MobileBertTokenizer", "LayoutLMTokenizer", "LxmertTokenizer",
                 "SplinterTokenizer")


def _bert_normalizer(old: normalizers.BertNormalizer, config: dict) -> normalizers.BertNormalizer:
    """The BertNormalizer transformers gives a BERT-style class: a cased tokenizer.json under a config without
    do_lower_case is lowercased there (the model was trained so), and a config's do_lower_case=false edited to fix
    casing wins. A value that is not a bool (transformers fails on it) keeps tokenizer.json's."""

    def flag(key: str, default, current, allowed: tuple) -> object:
        value = config.get(key, default)
        return value if isinstance(value, bool) or value in allowed else current

    return normalizers.BertNormalizer(
        clean_text=old.clean_text, lowercase=flag("do_lower_case", True, old.lowercase, ()),
        strip_accents=flag("strip_accents", None, old.strip_accents, (None,)),
        handle_chinese_chars=flag("tokenize_chinese_chars", True, old.handle_chinese_chars, ()))


def _prefix_space(config: dict) -> bool | None:
    """The add_prefix_space transformers gives the ByteLevel pre-tokenizer of the folder's class: the config's, else the
    class's default; None for a class that keeps tokenizer.json's."""
    name = _class_name(config)
    default = _BYTE_LEVEL_CLASSES.get(name) if name is not None else None
    if default is None:
        return None
    value = config.get("add_prefix_space")
    return value if isinstance(value, bool) else default


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


def copy_hf(hf: HFTokenizer, spec: str | None = None) -> HFTokenizer:
    """A copy of `hf` (or a tokenizer read from `spec`, its edited JSON) that keeps whether special tokens typed in a
    text are encoded as text, which tokenizer.json does not hold (split_special_tokens)."""
    out = HFTokenizer.from_str(hf.to_str() if spec is None else spec)
    out.encode_special_tokens = hf.encode_special_tokens
    return out


def without_padding(hf: HFTokenizer) -> HFTokenizer:
    """Turns off the padding and truncation a tokenizer.json may carry (MiniLM's pads every input to 128): encode()
    gives the text's ids only; batching code (embeddings.tokenize_batch) pads and truncates on its own."""
    hf.no_padding()
    hf.no_truncation()
    return hf


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
    except RecursionError:  # json recurses a level a bracket: '[[[[...' was a traceback
        raise ValueError(f"{str(path)!r} is not valid JSON: nested too deep (no config file is)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object")
    return config
