"""Run configuration: what to train (ModelConfig), how (TrainConfig) and on what (DataConfig).

All three are plain data so a run's `config.yaml` round-trips. `apply_overrides` turns CLI arguments of the form
`--train.lr 3e-4` or `--model.n_layer=4` into changes of a config dict.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from neurallayers.checks import check_types
from neurallayers.config import NEWER_FIELDS, ModelConfig, coerce_float_strings
from neurallayers.files import default_cache_dir

Schedule = Literal["cosine", "linear", "constant", "inverse_sqrt"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
NanPolicy = Literal["skip", "stop"]
Device = Literal["auto", "cpu", "cuda", "mps"]
OptimizerImpl = Literal["auto", "fused", "foreach", "loop"]
Distributed = Literal["auto", "ddp", "fsdp", "none"]
LoggerName = Literal["tensorboard", "mlflow", "wandb"]
Split = Literal["documents", "tail"]


@dataclass
class TrainConfig:
    """How to train: optimisation, precision, evaluation, checkpointing and sampling. Data only.

    The learning rate warms up linearly over `warmup_steps`, then follows `schedule` down to `min_lr` (by default
    lr / 10, at most 1e-4) at `max_steps`. A step is one optimizer update of `batch_size * grad_accum` sequences
    (per process).
    """

    max_steps: int = 1000
    batch_size: int = 16  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    # None: lr / 10 (nanoGPT's rule), at most 1e-4, the fixed default it replaces, so runs at lr >= 1e-3 decay as
    # before; that fixed floor refused a fine-tune's smaller lr and made an lr equal to it a constant rate
    min_lr: float | None = None
    warmup_steps: int = 100
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1  # applied to >= 2-D weights only (matmuls and embeddings), as nanoGPT does
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # auto: bf16 autocast on CUDA with bf16 and on CPUs with bf16 dot products (AVX512-BF16 or AMX: ~4x the fp32
    # matmul rate), fp16 + GradScaler on older CUDA, else fp32
    precision: Precision = "auto"
    eval_interval: int = 200  # steps between evaluations; 0 = only at the end
    eval_batches: int = 20
    log_interval: int = 10
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    # how far below the best val loss an evaluation must be to reset the patience count (transformers'
    # early_stopping_threshold, Lightning's min_delta); the best weights still follow any improvement
    early_stopping_min_delta: float = 0.0
    nan_policy: NanPolicy = "skip"
    max_consecutive_skips: int | None = 10  # skip: this many non-finite steps in a row stop the run; None: never
    seed: int = 1337
    device: str = "auto"  # one of Device, or "cuda:N" for one process on GPU N (torchrun gives each its own)
    compile: bool = False
    gradient_checkpointing: bool = False
    save_interval: int = 500  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # complete checkpoints kept under checkpoints/ (+1 to go back to, from before a divergence)
    # wall-clock budget of each session: stop cleanly, save, then evaluate (a row marked `time_budget`, which a resume
    # undoes) when it runs out; a resume gets it afresh (a job with a time limit resumes in the next), the
    # checkpoint's `elapsed` and the logs count the whole run
    max_minutes: float | None = None
    sample_prompts: list[str] = field(default_factory=lambda: ["\n"])
    sample_tokens: int = 200
    mask_prob: float = 0.15  # encoders (masked-LM training): share of the tokens of a window to predict
    optimizer_impl: OptimizerImpl = "auto"  # auto: fused AdamW when the device supports it, else foreach
    distributed: Distributed = "auto"  # under torchrun: auto = ddp
    loggers: list[str] = field(default_factory=list)  # extra trackers: tensorboard, mlflow, wandb
    # fine-tuning: a run directory or Hugging Face model folder whose weights, model config and tokenizer start the
    # run (see training.init_from); None trains from scratch
    init_from: str | None = None

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("max_steps", "batch_size", "grad_accum", "eval_batches", "log_interval", "keep_last"):
            _require(self, name, getattr(self, name) >= 1, "must be >= 1")
        for name in ("warmup_steps", "eval_interval", "save_interval", "sample_tokens", "seed"):
            _require(self, name, getattr(self, name) >= 0, "must be >= 0")
        _require(self, "seed", self.seed < 2**64, "must be < 2**64 (torch's seed range)")
        for name in ("lr", "weight_decay", "eps", "grad_clip", "early_stopping_min_delta"):
            _require(self, name, math.isfinite(getattr(self, name)), "must be a finite number")
        _require(self, "lr", self.lr > 0, "must be > 0")
        if self.min_lr is not None:
            _require(self, "min_lr", 0 <= self.min_lr <= self.lr,
                     f"must be in [0, lr={self.lr}], or None (lr / 10, at most 1e-4)")
        _require(self, "weight_decay", self.weight_decay >= 0, "must be >= 0")
        _require(self, "eps", self.eps > 0, "must be > 0")
        _require(self, "grad_clip", self.grad_clip >= 0, "must be >= 0 (0 turns clipping off)")
        _require(self, "early_stopping_min_delta", self.early_stopping_min_delta >= 0, "must be >= 0")
        _require(self, "mask_prob", 0 < self.mask_prob < 1, "must be in (0, 1)")
        _require(self, "device", self.device in get_args(Device) or re.fullmatch(r"cuda:\d+", self.device) is not None,
                 "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        if self.init_from is not None:
            _require(self, "init_from", bool(self.init_from.strip()), "must be a run or model folder, or None")
        for name in ("beta1", "beta2"):
            _require(self, name, 0 <= getattr(self, name) < 1, "must be in [0, 1)")
        if self.max_consecutive_skips is not None:
            _require(self, "max_consecutive_skips", self.max_consecutive_skips >= 1, "must be >= 1 or None (no limit)")
        if self.early_stopping_patience is not None:
            _require(self, "early_stopping_patience", self.early_stopping_patience >= 1, "must be >= 1 or None")
        if self.max_minutes is not None:
            _require(self, "max_minutes", self.max_minutes > 0 and math.isfinite(self.max_minutes),
                     "must be a positive number of minutes or None")
        # generate refuses a prompt of no tokens, which failed every sample, and only after training; whitespace
        # ("\n", the default) is text a tokenizer encodes
        for i, prompt in enumerate(self.sample_prompts):
            if not prompt:
                raise ValueError(f"TrainConfig.sample_prompts[{i}]='': a sample prompt needs at least one character "
                                 "(whitespace such as '\\n' will do); sample_prompts: [] writes no samples")
        allowed = get_args(LoggerName)
        bad = [n for n in self.loggers if n not in allowed and n != "jsonl"]
        _require(self, "loggers", not bad, f"unknown {bad}; allowed: {', '.join(allowed)} (jsonl is always on)")

    @property
    def final_lr(self) -> float:
        """The rate the schedule decays to: min_lr, or when it is None lr / 10, at most 1e-4."""
        return min(self.lr / 10, 1e-4) if self.min_lr is None else self.min_lr

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warmup, then the schedule to final_lr."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        low = self.final_lr
        if self.schedule == "inverse_sqrt":
            # 1/sqrt(step) from the end of warmup, or with no warmup over T5's (and transformers') timescale of 10,000
            # steps: sqrt(1 / (step + 1)) had halved the rate by the fourth step
            scale = self.warmup_steps or 10_000
            return max(low, self.lr * math.sqrt(scale / (step + 1 + scale - self.warmup_steps)))
        span = max(self.max_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        if self.schedule == "linear":
            return self.lr - (self.lr - low) * progress
        return low + 0.5 * (1 + math.cos(math.pi * progress)) * (self.lr - low)


@dataclass
class DataConfig:
    """What to train on and how to tokenize it. Data only."""

    source: str = "shakespeare"  # built-in corpus name, a file, folder, glob or JSON-lines file
    tokenizer: str = "bpe"  # "bpe" (trained on the corpus), "char", "gpt2", or a tokenizer.json / folder
    vocab_size: int | None = None  # bpe only; None = the model's vocab_size
    text_field: str = "text"  # JSON-lines field holding the text
    val_fraction: float = 0.1
    # documents: whole pieces of ~50k characters go to val, chosen by a seeded hash (val spread over the corpus);
    # tail: the last val_fraction of the token stream, as nanoGPT splits one text file (90/10 by position); a
    # folder's documents in order, each ending with eos
    split: Split = "documents"
    cache_dir: str | None = None  # None = $NEURALLAYERS_CACHE or ~/.cache/neurallayers
    # a bos before each document: None = where the tokenizer's own encoding starts a text with one (a Llama
    # tokenizer.json), as prompts are encoded; a run's config.yaml records what it used
    document_bos: bool | None = None
    # [CLS] ... [SEP] around each document, as the tokenizer frames a text: None = where it has neither bos nor eos
    # (BERT's); recorded as document_bos is (a run from before it was recorded had none)
    document_frame: bool | None = None

    def __post_init__(self) -> None:
        check_types(self)
        _require(self, "source", bool(self.source), "must be a corpus name or path")
        _require(self, "tokenizer", bool(self.tokenizer), "must be 'bpe', 'char', 'gpt2' or a tokenizer path")
        if self.vocab_size is not None:
            from neurallayers.data.tokenizer_training import MAX_BPE_VOCAB  # set only to train a BPE, which imports it

            _require(self, "vocab_size", self.vocab_size >= 257, "must be >= 257 for byte-level BPE, or None")
            _require(self, "vocab_size", self.vocab_size <= MAX_BPE_VOCAB, f"must be at most {MAX_BPE_VOCAB:,} "
                     "(a trained BPE stops at what its corpus holds anyway), or None")
        _require(self, "val_fraction", 0 <= self.val_fraction < 1, "must be in [0, 1)")

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or default_cache_dir()).expanduser()


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


@dataclass
class RunConfig:
    """A whole run: the model, the training recipe and the data. `config.yaml` of a run directory."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        # RunConfig(model={"preset": "tiny"}) built, then training failed on "'dict' object has no attribute 'causal'"
        for name, klass in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, klass):
                hint = f" (a mapping of its fields: RunConfig.from_dict({{{name!r}: ...}}))" \
                    if isinstance(value, dict) else ""
                raise ValueError(f"RunConfig.{name}={value!r}: expected a {klass.__name__}{hint}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, saved: str | os.PathLike | None = None) -> RunConfig:
        """Builds from `{model: {...}, train: {...}, data: {...}}`; `model` may be `{preset: name, ...overrides}`.

        Args:
            saved: the path of the saved run's config.yaml that `data` was read from (see from_yaml): a train or data
                field (or a section) this version refuses or does not know warns, naming it, and takes its default.

        Raises:
            ValueError: an unknown section or field (naming it and the closest valid name), or a bad value.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a run config must be a mapping with sections {', '.join(SECTIONS)}, "
                             f"got {type(data).__name__}")
        for key in data:
            if key not in SECTIONS:
                problem = f"unknown config section {key!r}{_did_you_mean(key, SECTIONS)}"
                if saved is None:
                    raise ValueError(f"{problem}; valid sections: {', '.join(SECTIONS)}")
                _warn_saved(saved, f"{problem}: not read (to resume training, remove it from the file)")
        data = {key: value for key, value in section_mappings(data).items() if key in SECTIONS}
        train = data.get("train")
        init_from = train.get("init_from") if isinstance(train, dict) else None
        if "model" not in data and not init_from:
            raise ValueError("the run config needs a 'model' section (fields of ModelConfig or {preset: name}), "
                             "or train.init_from")
        sections = {}
        for name, klass in SECTIONS.items():
            raw = data.get(name) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"config section {name!r} must be a mapping, got {type(raw).__name__}")
            raw = dict(raw)
            # `preset:` left empty is a preset of None, refused by name: read as no preset, it trained GPT-2's shape
            has_preset = name == "model" and "preset" in raw
            preset = raw.pop("preset") if has_preset else None
            if saved is not None and name != "model":
                raw = _known_keys(klass, raw, name, saved)
            _check_keys(klass, raw, name)
            raw = coerce_float_strings(klass, raw)
            if name == "model" and init_from and has_preset:
                raise ValueError(f"model.preset={preset!r} and train.init_from={init_from!r} both name the model; "
                                 "keep one (init_from's model may change only a few fields: see training.init_from)")
            if name == "model" and init_from and not _whole_model(raw):
                # the source's config, with the fields given here (a saved run's config.yaml gives every field, so
                # a resume does not read the source)
                from neurallayers.training.init_from import source_model_config

                sections[name] = source_model_config(str(init_from)).replace(**raw)
            elif has_preset:
                if _whole_model(raw):  # `--config runs/a/config.yaml --preset gpt2` trained runs/a's model, silently
                    raise ValueError(f"model.preset={preset!r}: the model section already gives every field (a saved "
                                     "run's config.yaml), which would override all of the preset's; leave out the "
                                     "preset, or the model section")
                sections[name] = ModelConfig.from_name(preset).replace(**raw)
            elif saved is not None and name != "model":
                sections[name] = _lenient_section(klass, raw, name, saved)
            else:
                sections[name] = klass(**raw)
        return cls(**sections)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, *, saved: bool = False) -> RunConfig:
        """A run config from a YAML file; an error names the file and the key as written there
        (`my.yaml: train.lr=-1: must be > 0`).

        Args:
            saved: read the file as a saved run's record, which load, eval, generate and serve read for its model
                section: a train or data field this version refuses or does not know (a rule added since the run
                was trained) warns, naming the key, and takes its default; the model section, which the weights
                depend on, must validate. False (a config to train with): refused at its first bad field.
        """
        path = Path(path)
        data = read_yaml(path)
        try:
            return cls.from_dict(data, saved=path if saved else None)
        except ValueError as e:
            raise ValueError(f"{path}: {file_words(str(e))}") from None

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Writes the config atomically (files.write_text_atomic)."""
        import yaml

        from neurallayers.files import write_text_atomic

        return write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def section_mappings(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each section given as its config object (`{"model": ModelConfig.from_name("tiny")}`, as the Python
    API builds them) written as the mapping of its fields, which a run config file would give."""
    out = dict(data)
    for name, klass in SECTIONS.items():
        value = out.get(name)
        if isinstance(value, klass):
            out[name] = value.to_dict() if isinstance(value, ModelConfig) else dataclasses.asdict(value)
        elif isinstance(value, tuple(SECTIONS.values())):
            raise ValueError(f"config section {name!r} is a {type(value).__name__}: give a {klass.__name__} or a "
                             "mapping of its fields")
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML run-config file (empty file: {}), with clear errors for a missing or bad file."""
    from neurallayers.config import read_yaml_file

    data = read_yaml_file(path, what="run config", load=_load_typed) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config is a mapping with sections {', '.join(SECTIONS)}")
    return data


def _load_typed(text: str) -> Any:
    """The YAML document `text`, each field's plain scalars read as its type wants, as apply_overrides reads an
    override: a text field (or list of texts) keeps the text written (YAML 1.1 read `[yes, 2024]` as [True, 2024] and
    `source: 2024` as an int), a count the decimal written (`010` is not 8, `1:30` not 90)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode):
            for key, section in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value in SECTIONS and isinstance(section, yaml.MappingNode):
                    for field_key, value in section.value:
                        if isinstance(field_key, yaml.ScalarNode):
                            _type_node(key.value, field_key.value, value)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _type_node(section: str, name: str, node: Any) -> None:
    """Retags the plain scalars of the value node of `section.name` (see _load_typed) before it is constructed."""
    import yaml

    text_tag = "tag:yaml.org,2002:str"
    kind = _text_field(section, name)
    plain = [node] if isinstance(node, yaml.ScalarNode) else []
    if kind == "list" and isinstance(node, yaml.SequenceNode):
        plain = [n for n in node.value if isinstance(n, yaml.ScalarNode)]
    for scalar in plain:
        if scalar.style is not None:  # quoted: a string already
            continue
        if kind in ("text", "list") or (kind == "opt" and scalar.tag != "tag:yaml.org,2002:null"):
            scalar.tag = text_tag
        elif _number_field(section, name) and scalar.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            if re.fullmatch(r"[-+]?\d+", scalar.value):
                scalar.value = str(int(scalar.value))  # decimal, not YAML 1.1's octal
            elif ":" in scalar.value:  # base 60: text, for the field's check to refuse
                scalar.tag = text_tag


def apply_overrides(config: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """A copy of the run-config dict `config` with CLI overrides applied.

    Args:
        config: `{model: ..., train: ..., data: ...}` as read from YAML (sections may be missing).
        args: `["--train.lr", "3e-4", "--model.n_layer=4", ...]`; values are parsed with `yaml.safe_load`
            (so `4` is an int, `true` a bool, `[a, b]` a list, `null` None); `--train.loggers` also
            takes a comma list (`tensorboard,mlflow`).

    Raises:
        ValueError: a malformed argument, an unknown section or field (with the closest valid name).
    """
    import yaml

    out = copy.deepcopy(section_mappings(config)) if config else {}
    for arg, key, value in override_pairs(args):
        section, _, name = key.partition(".")
        name, _, subkeys = name.partition(".")
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r} in {arg!r}{_did_you_mean(section, SECTIONS)}; "
                             f"valid sections: {', '.join(SECTIONS)}")
        known = _field_names(SECTIONS[section]) | ({"preset"} if section == "model" else set())
        if name not in known:
            raise ValueError(f"{section} has no field {name!r}{_field_hint(name, known, section, override=True)}; "
                             f"valid fields: {', '.join(sorted(known))}")
        text = not subkeys and _text_field(section, name)
        # `--train.loggers tensorboard,mlflow` (or one name), as transformers' --report_to takes it; `[a, b]` is YAML
        names = (section, name) in _COMMA_LIST_FIELDS and not subkeys and not value.lstrip().startswith("[")
        if names and value.strip().lower() == "none":  # transformers' --report_to none
            value = ""
        try:
            # a list of text reads each item as typed: `[yes, 2024]` is ["yes", "2024"], not [True, 2024]
            parsed = [x.strip() for x in value.split(",") if x.strip()] if names else "" if value == "" \
                else yaml.load(value, Loader=_text_loader()) if text == "list" else yaml.safe_load(value)
        except yaml.YAMLError as e:
            if not text:  # a text field takes what YAML cannot read: a glob '*.txt' (an alias to YAML), '@notes.txt'
                raise ValueError(f"cannot parse the value of {arg!r}: {e}") from None
            parsed = value
        if _number_field(section, name) and not subkeys:
            # YAML 1.1 reads `010` as 8 (octal) and `1:30` as 90 (base 60): a count is the decimal typed, and a
            # sexagesimal stays text for the field to refuse
            if re.fullmatch(r"[-+]?\d+", value.strip()):
                parsed = int(value)
            elif re.fullmatch(r"[-+]?\d+(:[0-5]?\d)+(\.\d*)?", value.strip()):
                parsed = value
        quoted = isinstance(parsed, str) and value.lstrip()[:1] in ("'", '"')  # `--data.tokenizer "'char'"`: char
        if text in ("text", "opt") and not quoted and not (parsed is None and text == "opt"):
            parsed = value  # a text field keeps the text: `--data.source 2024` (a file), `"notes #1.txt"` (no comment)
        sec = out.get(section)
        if not isinstance(sec, dict):
            sec = out[section] = {}
        if subkeys:
            _set_nested(sec, section, name, subkeys.split("."), parsed, arg)
        else:
            sec[name] = parsed
    return out


def override_pairs(args: list[str]) -> Iterator[tuple[str, str, str]]:
    """(argument, "section.field[.key]", value) of each `--section.field VALUE` or `--section.field=VALUE` in `args`.

    Raises:
        ValueError: an argument of another shape, or one with no value after it; `args` not a list (or tuple) of str.
    """
    _check_override_list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.partition("=")[0]:  # a value's dot (--lr=0.001) is no section's
            raise ValueError(f"override {arg!r} must look like --section.field VALUE or --section.field=VALUE"
                             f"{_bare_override_hint(arg)}")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ValueError(f"override {arg!r} has no value")
            value = args[i + 1]
            i += 1
        i += 1
        yield arg, key, value


def _check_override_list(args: object) -> None:
    """Overrides as the command line gives them, a list of str: from Python, `["--train.max_steps", 5]` failed in
    YAML's reader ("'int' object has no attribute 'read'"), a dict as a KeyError, a string letter by letter."""
    if isinstance(args, str):
        raise ValueError(f"overrides={args!r}: give a list, e.g. {args.split()!r}")
    if not isinstance(args, list | tuple):
        raise ValueError(f"overrides={args!r}: give a list of str, e.g. ['--train.lr', '3e-4']")
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise ValueError(f"overrides[{i}]={arg!r}: each item must be a str, as typed on the command line "
                             f"({_as_typed(arg)!r})")


def _as_typed(value: object) -> str:
    """How a command line spells the Python value `value` for YAML to read it back: True as true, None as null."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def _set_nested(sec: dict, section: str, name: str, path: list[str], value: Any, arg: str) -> None:
    """`--model.rope_scaling.factor 4`: sets one key inside a mapping field, keeping its other keys (those the
    section gives, else the preset's, else the field's default)."""
    if name not in _MAPPING_FIELDS.get(section, ()):
        raise ValueError(f"{arg!r}: {section}.{name} is not a mapping; give --{section}.{name} VALUE")
    base = sec[name] if name in sec else _section_default(sec, section, name)
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise ValueError(f"{arg!r}: {section}.{name} is {base!r}, not a mapping")
    node = sec[name] = copy.deepcopy(base)
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join([section, name, *path[:i + 1]])
            raise ValueError(f"{arg!r}: {where} is {child!r}, not a mapping")
        node = child
    node[path[-1]] = value


# list fields whose override may be a comma list of names (no item of theirs holds a comma)
_COMMA_LIST_FIELDS = {("train", "loggers")}

# fields whose value is a mapping, so an override may name a key inside it
_MAPPING_FIELDS = {"model": ("rope_scaling", "extra")}


def _section_default(sec: dict, section: str, name: str) -> Any:
    """The value `name` takes when the section does not give it: the preset's, or the field's default."""
    if section == "model" and "preset" in sec:
        return getattr(ModelConfig.from_name(str(sec["preset"])), name)
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ----- helpers -----

def _bare_override_hint(arg: str) -> str:
    """Why `--model tiny` or `--lr 3e-4` is not an override: a section without a field, or a field without its
    section."""
    name = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else ""
    if name == "model":
        return " (to choose a preset: --preset NAME or --model.preset NAME)"
    if name in SECTIONS:
        return f" (set one field of the {name} section: --{name}.FIELD VALUE)"
    owner = _section_of(name)
    return f" (did you mean --{owner}.{name}?)" if owner else ""


def _text_field(section: str, name: str) -> str | None:
    """"text" for a field of type str, "opt" for str | None (whose null stays None), "list" for list[str], else None:
    YAML 1.1 would read a file named 2024 as an int, `yes` as True, a date as a date, ` #1` as a comment."""
    if section == "model" and name == "preset":
        return "text"
    kind = next((f.type for f in dataclasses.fields(SECTIONS[section]) if f.name == name), None)
    return {"str": "text", "str | None": "opt", "list[str]": "list"}.get(kind)


def _number_field(section: str, name: str) -> bool:
    """A field typed int or float (or either | None)."""
    kind = next((f.type for f in dataclasses.fields(SECTIONS[section]) if f.name == name), None)
    return kind in ("int", "int | None", "float", "float | None")


def _text_loader():
    """A YAML loader that keeps structure (lists, quotes) and reads every plain scalar as the text it is."""
    import yaml

    class TextLoader(yaml.SafeLoader):
        yaml_implicit_resolvers = {}  # no bool/int/float/null/timestamp guessing from a scalar's look

    return TextLoader


def _field_names(klass: type) -> set[str]:
    return {f.name for f in dataclasses.fields(klass)}


def _whole_model(raw: dict[str, Any]) -> bool:
    """Whether a model section gives every field, as a saved run's config.yaml does (an older run's lacks
    NEWER_FIELDS, yet is still a whole model section)."""
    return _field_names(ModelConfig) - set(raw) <= NEWER_FIELDS


def _section_of(name: str, *, other_than: str | None = None) -> str | None:
    """The first section (model, train, data) with a field `name`, skipping `other_than`."""
    return next((s for s, klass in SECTIONS.items() if s != other_than and name in _field_names(klass)), None)


def _did_you_mean(name: str, choices: Any) -> str:
    # case-blind first: "Lr" is two edits from "lr" by difflib's ratio, too far for a hint
    same = [c for c in sorted(choices) if str(c).lower() == str(name).lower()]
    hint = same or difflib.get_close_matches(str(name), sorted(choices), n=1)  # a YAML key may be an int
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _field_hint(name: str, known: set[str], section: str, *, override: bool = False) -> str:
    """" (it is a train field: --train.x)" when another section has the field, else the closest name here."""
    other = _section_of(name, other_than=section)
    if other is None:
        return _did_you_mean(name, known)
    return f" (it is a {other} field: " + (f"--{other}.{name})" if override else f"put it under {other}:)")


def _check_keys(klass: type, raw: dict, section: str) -> None:
    known = _field_names(klass)
    for key in raw:
        if key not in known:
            raise ValueError(f"{section} has no field {key!r}{_field_hint(key, known, section)}; "
                             f"valid fields: {', '.join(sorted(known))}")


_SECTION_OF = {klass.__name__: name for name, klass in SECTIONS.items()}
_CLASS_FIELD = re.compile(r"\b(ModelConfig|TrainConfig|DataConfig)\.(\w+)")


def file_words(message: str) -> str:
    """`message` with each config field it names as its class does (`TrainConfig.lr`) named as a run-config file
    writes it (`train.lr`); `ModelConfig.from_dict`, no field, stays."""
    def named(m: re.Match) -> str:
        section = _SECTION_OF[m[1]]
        return f"{section}.{m[2]}" if m[2] in _field_names(SECTIONS[section]) else m[0]

    return _CLASS_FIELD.sub(named, message)


def _known_keys(klass: type, raw: dict, section: str, saved: str | os.PathLike) -> dict:
    """A saved run's section without the fields this version does not know (removed or renamed since), each named
    in a warning."""
    known = _field_names(klass)
    for key in raw:
        if key not in known:
            _warn_saved(saved, f"{section} has no field {key!r}{_field_hint(key, known, section)}: not read (to "
                        "resume training, remove it from the file)")
    return {key: value for key, value in raw.items() if key in known}


def _lenient_section(klass: type, raw: dict, section: str, saved: str | os.PathLike) -> Any:
    """A saved run's train or data section, each field this version refuses left at its default with a warning; an
    error that names no single field of the section is raised."""
    while True:
        try:
            return klass(**raw)
        except ValueError as e:
            found = re.match(rf"{klass.__name__}\.(\w+)", str(e))
            if found is None or found[1] not in raw:
                raise
            del raw[found[1]]
            key, default = f"{section}.{found[1]}", _section_default(raw, section, found[1])
            _warn_saved(saved, f"{file_words(str(e))}; {key} takes its default {default!r} here (to resume "
                        f"training, set it in the file or with --{key})")


class SavedConfigWarning(UserWarning):
    """A field of a saved run's config.yaml that this version refuses or does not know (see RunConfig.from_yaml)."""


_WARNED_SAVED: set[str] = set()


def _warn_saved(saved: str | os.PathLike, message: str) -> None:
    """A field of a saved run's config.yaml that this version cannot use, named once a process (eval reads the file
    twice, a server on each reload): the model and tokenizer load regardless."""
    import warnings

    key = f"{os.path.abspath(saved)}: {message}"  # another folder's file of the same name is another run
    if key not in _WARNED_SAVED:
        _WARNED_SAVED.add(key)
        warnings.warn(f"{saved}: {message}", SavedConfigWarning, stacklevel=2)


def _require(obj: Any, name: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {what}")
