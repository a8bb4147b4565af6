"""ModelConfig: one data-only description of every model family (GPT-2, Llama, BERT style).

Fields are plain data so a config round-trips through YAML and checkpoints. Architecture switches are typed
strings; `__post_init__` validates every field and fills the derived ones. Invalid values raise `ValueError`
naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from neurallayers.checks import check_types, field_types, is_finite, is_int, is_integral

Norm = Literal["layernorm", "rmsnorm"]
MLPKind = Literal["gelu", "swiglu", "geglu"]
Position = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
NormPlacement = Literal["pre", "post"]
AttentionKernel = Literal["sdpa", "eager"]
GeluApprox = Literal["tanh", "none"]
RopeScalingType = Literal["linear", "dynamic", "llama3", "yarn"]
Head = Literal["none", "mlm", "sequence_classification", "token_classification"]
DERIVED = ("n_kv_head", "head_dim", "intermediate_size")  # None: computed from other fields in __post_init__
# Fields added after runs (config.yaml) and batch progress records were first saved: an older file lacks them, and
# their None default keeps the shape models had before them, so such a file still describes the whole model.
NEWER_FIELDS = frozenset({"final_norm", "qkv_bias", "sliding_window_layers"})
FP32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max

_ROPE_SCALING_KEYS = {
    "linear": {"type", "factor"},
    "dynamic": {"type", "factor", "original_max_position_embeddings"},
    "llama3": {"type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    # transformers' keys (_compute_yarn_parameters); those after the first three are optional, None as if left out
    "yarn": {"type", "factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"},
}
_ROPE_SCALING_FLOATS = ("factor", "low_freq_factor", "high_freq_factor", "attention_factor", "beta_fast", "beta_slow",
                        "mscale", "mscale_all_dim")
# transformers 5 writes rope_theta inside its rope_parameters; here it is a field beside rope_scaling
_THETA_HINT = " (rope_theta is a field of its own, beside rope_scaling)"
_ROPE_SCALING_NEEDS = {"llama3": ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                       "yarn": ("original_max_position_embeddings",)}


@dataclass
class ModelConfig:
    """Every architecture switch of the decoder and encoder families.

    Derived fields (`n_kv_head`, `head_dim`, `intermediate_size`) are filled from the others when left as None.
    The config remembers which ones it derived: `to_dict()` writes those as None and `replace()` derives them
    again from the new values, so `replace(n_embd=...)` never keeps a head_dim computed from the old n_embd.
    A derived field given a value (here or in `replace`) is explicit from then on and kept as it is.
    """

    name: str = "custom"
    causal: bool = True  # False: bidirectional encoder (BERT style)
    vocab_size: int = 50257
    block_size: int = 1024  # context length
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # None: = n_head (MHA); 1: MQA; between: GQA
    head_dim: int | None = None  # None: n_embd // n_head
    intermediate_size: int | None = None  # None: 4*n_embd (gelu) or the Llama rule (gated)
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"
    # A norm after the last block. None (see `has_final_norm`): pre-norm stacks and every decoder have one (decoders
    # always had it, so runs saved before this field load as they were); False gives GPT-1's post-norm decoder. It
    # stays None rather than being filled in, so dataclasses.replace(cfg, causal=False, ...) decides it again.
    final_norm: bool | None = None
    mlp: MLPKind = "gelu"
    gelu_approx: GeluApprox = "tanh"  # GPT-2 uses the tanh approximation, BERT the exact erf form
    position: Position = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"type": "linear" | "dynamic" | "llama3" | "yarn", "factor": ..., ...}
    sliding_window: int | None = None  # Mistral style: attend to at most this many previous tokens
    # The layers (0-based, increasing) that attend within sliding_window, the others to every token (Qwen2's
    # max_window_layers, transformers' layer_types); None: every layer (see `window_of`).
    sliding_window_layers: list[int] | None = None
    bias: bool = True
    # Biases on the q, k and v projections alone (see `has_qkv_bias`); None: as `bias`. True with bias False is Qwen2.
    qkv_bias: bool | None = None
    tie_embeddings: bool = True
    layer_scale: float | None = None  # initial LayerScale value; None: off
    drop_path: float = 0.0  # stochastic depth rate of the last layer, linear from 0 over depth
    dropout: float = 0.0  # embedding and residual dropout
    attn_dropout: float = 0.0
    attention: AttentionKernel = "sdpa"
    init_std: float = 0.02
    scale_residual_init: bool = True  # GPT-2: residual projections start at init_std / sqrt(2 * n_layer)
    # Encoder (BERT) only
    type_vocab_size: int = 0
    pad_token_id: int | None = None
    pooler: bool = False
    num_labels: int = 2
    head: Head = "none"  # encoder task head on top of the bare encoder
    # free-form metadata (e.g. source checkpoint); models read only a Hugging Face classifier's problem_type and
    # classifier_dropout there
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _coerce_float_strings(self)
        check_types(self)
        # Not a dataclass field (so not data, not compared): which derived fields were left to derivation.
        self._derived = frozenset(name for name in DERIVED if getattr(self, name) is None)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "num_labels"):
            _require(name, getattr(self, name), getattr(self, name) >= 1, "must be >= 1")
        for name in ("dropout", "attn_dropout", "drop_path"):
            v = getattr(self, name)
            _require(name, v, 0.0 <= v < 1.0, "must be in [0, 1)")
        # Finite too: an infinite eps or theta builds a model whose norms output zeros or whose RoPE rotates nothing.
        for name in ("norm_eps", "init_std", "rope_theta"):
            v = getattr(self, name)
            _require(name, v, is_finite(v) and v > 0, "must be > 0 and finite")
        _require("type_vocab_size", self.type_vocab_size, self.type_vocab_size >= 0, "must be >= 0")
        self.extra = _yaml_data(self.extra, self.extra)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        _require("n_kv_head", self.n_kv_head, 1 <= self.n_kv_head <= self.n_head,
                 f"must be in [1, n_head={self.n_head}]")
        _require(
            "n_kv_head", self.n_kv_head, self.n_head % self.n_kv_head == 0, f"must divide n_head={self.n_head}"
        )
        if self.head_dim is None:
            _require(
                "n_embd", self.n_embd, self.n_embd % self.n_head == 0, f"must be divisible by n_head={self.n_head}"
            )
            self.head_dim = self.n_embd // self.n_head
        _require("head_dim", self.head_dim, self.head_dim >= 1, "must be >= 1")
        if self.position == "rope":
            _require("head_dim", self.head_dim, self.head_dim % 2 == 0, "must be even for rope positions")
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.n_embd, self.mlp)
        # Only a post-norm decoder has the choice: a pre-norm stack's output is the un-normalised residual stream,
        # and BERT (a post-norm encoder) has no final norm, which its Hugging Face export relies on.
        _require("final_norm", self.final_norm, self.final_norm is not False or self.norm_placement == "post",
                 "False needs norm_placement='post' (a pre-norm stack needs its final norm)")
        post_encoder = self.norm_placement == "post" and not self.causal
        _require("final_norm", self.final_norm, not (self.final_norm and post_encoder),
                 "a post-norm encoder (causal=False, BERT) has no final norm: leave it None")
        _require("intermediate_size", self.intermediate_size, self.intermediate_size >= 1, "must be >= 1")
        # every other linear with a bias and q, k, v without: no family has that shape, and no export writes it
        _require("qkv_bias", self.qkv_bias, not (self.qkv_bias is False and self.bias),
                 "False needs bias=False (q, k and v without biases where every other layer has one); leave it None")
        if self.sliding_window is not None:
            _require("sliding_window", self.sliding_window, self.sliding_window >= 1, "must be >= 1 or None")
            _require("sliding_window", self.sliding_window, self.causal, "needs causal=True")
        if self.sliding_window_layers is not None:
            layers = self.sliding_window_layers
            _require("sliding_window_layers", layers, self.sliding_window is not None, "needs a sliding_window")
            ok = all(0 <= i < self.n_layer for i in layers) and layers == sorted(set(layers))
            _require("sliding_window_layers", layers, ok and len(layers) >= 1,
                     f"must list layer indices in [0, n_layer={self.n_layer}), increasing, at least one")
            _require("sliding_window_layers", layers, len(layers) < self.n_layer,
                     "lists every layer: leave it None (every layer slides)")
        if self.layer_scale is not None:
            ok = is_finite(self.layer_scale) and self.layer_scale > 0
            _require("layer_scale", self.layer_scale, ok, "must be > 0 or None, and finite")
        # These become fp32 numbers, inf past fp32's range: init_std 1e39 built a model of NaN logits, norm_eps one
        # whose output was the same for every token, layer_scale a traceback from torch.full.
        for name in ("norm_eps", "init_std", "layer_scale"):
            v = getattr(self, name)
            _require(name, v, v is None or v <= FP32_MAX, f"must be at most {FP32_MAX:.4g}, fp32's largest number")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_rope_scaling(self.rope_scaling, self.position)
            if self.rope_scaling["type"] == "dynamic":  # its base grows by the power head_dim / (head_dim - 2)
                _require("head_dim", self.head_dim, self.head_dim > 2, "must be > 2 for dynamic rope scaling")
            if self.rope_scaling["type"] == "yarn":  # its ramp divides by log(rope_theta)
                _require("rope_theta", self.rope_theta, self.rope_theta != 1, "must not be 1 with yarn rope scaling")
        if self.pad_token_id is not None:
            _require(
                "pad_token_id", self.pad_token_id, 0 <= self.pad_token_id < self.vocab_size,
                f"must be a valid token id: in [0, vocab_size={self.vocab_size}), or None"
            )
        _check_weight_sizes(self)
        if self.causal:  # encoder-only settings a decoder would silently not build
            encoders = "is an encoder's (causal=False)"
            _require("head", self.head, self.head == "none", f"{encoders}; a decoder has its LM head: leave 'none'")
            _require("pooler", self.pooler, not self.pooler, f"{encoders}; a decoder needs False")
            _require("type_vocab_size", self.type_vocab_size, self.type_vocab_size == 0,
                     f"{encoders}; a decoder needs 0")
        else:  # the encoder builds no ALiBi bias: such a config validated, then failed when built (info, train)
            allowed = ", ".join(repr(p) for p in get_args(Position) if p != "alibi")
            _require("position", self.position, self.position != "alibi",
                     f"an encoder (causal=False) takes {allowed}; ALiBi is a decoder's")
        _ints_as_floats(self)  # last: an error quotes the value as it was typed

    # ----- derived figures -----
    @property
    def kv_dim(self) -> int:
        return self.n_kv_head * self.head_dim

    def window_of(self, layer: int) -> int | None:
        """The attention window of block `layer`: sliding_window where that layer slides, else None (every token)."""
        if self.sliding_window_layers is None or layer in self.sliding_window_layers:
            return self.sliding_window
        return None

    def param_count(self, *, include_embeddings: bool = True) -> int:
        """Exact parameter count of the model this config builds (embeddings counted once when tied).

        Counted on models of one and two layers, as every block has the same parameters: building all n_layer
        blocks made `info` on a mistyped depth (`n_layer: 1000000`) run for minutes, or forever."""
        one, two = (self._meta_param_count(n, include_embeddings) for n in (1, 2))
        return one + (self.n_layer - 1) * (two - one)

    def _meta_param_count(self, n_layer: int, include_embeddings: bool) -> int:
        import torch

        from neurallayers.models import build_model  # local: models import config

        with torch.device("meta"):
            # every layer has the same parameters whichever slide (the list would name layers past n_layer)
            model = build_model(dataclasses.replace(self, n_layer=n_layer, sliding_window_layers=None))
        n = sum(p.numel() for p in model.parameters())
        if not include_embeddings:  # token, position and (BERT's) token-type tables, as transformers counts them
            n -= sum(p.numel() for name, p in model.named_parameters()
                     if any(table in name.split(".") for table in ("wte", "wpe", "wtt")))
        return n

    def flops_per_token(self, seq_len: int | None = None, *, training: bool = False, mask_prob: float = 0.15) -> float:
        """Matmul FLOPs per token of a forward over `seq_len` tokens (None: block_size); x3 with `training`, where a
        masked LM's head runs only at the `mask_prob` share of the tokens it predicts (training's logits_at_labels).

        PaLM's and nanoGPT's convention, 2N + 4 L H Q T forward (6N + 12 L H Q T training): 2 FLOPs per weight of
        every linear layer (the LM or MLM head included; embedding lookups, norms, biases, activations and RoPE
        none), and QK^T and AV against all `seq_len` keys for every token, though a causal query attends to half of
        them on average; in a sliding layer, against min(seq_len, sliding_window) (the model scores all keys and
        masks the rest: FLOPs it does not use). An encoder's pooler and classifiers are left out (a sequence
        classifier runs once a sequence, a token classifier costs 2 x n_embd x num_labels a token). torch's
        FlopCounterMode counts the same on an "eager" attention model, forward and backward (it counts nothing for the
        CPU sdpa kernel)."""
        t = self._tokens("flops_per_token", seq_len)
        _require("flops_per_token mask_prob", mask_prob, is_finite(mask_prob) and 0 <= mask_prob <= 1,
                 "must be a number in [0, 1] (the share of tokens a masked LM predicts)")
        d, h = self.n_embd, self.n_head * self.head_dim
        attn_proj = 2 * d * (h + 2 * self.kv_dim) + 2 * h * d
        mlp_mult = 3 if self.mlp in ("swiglu", "geglu") else 2
        mlp = 2 * mlp_mult * d * self.intermediate_size
        # QK^T and AV, per token, against as many keys as each layer sees: a sliding layer no more than its window
        sliding = self.n_layer if self.sliding_window_layers is None else len(self.sliding_window_layers)
        sliding *= 1 if self.sliding_window else 0
        keys = sliding * min(t, self.sliding_window or t) + (self.n_layer - sliding) * t  # summed over the layers
        attn_scores = 2 * 2 * h * keys
        if self.causal:
            head = 2 * d * self.vocab_size
        elif self.head == "mlm":  # BERT's prediction head: a d x d transform, then the vocabulary projection
            head = 2 * d * (d + self.vocab_size)
        else:
            head = 0
        body = self.n_layer * (attn_proj + mlp) + attn_scores
        if not training:
            return body + head
        if not self.causal and self.head == "mlm":  # training scores only the masked positions
            head *= mask_prob
        return 3 * (body + head)

    def kv_cache_bytes(self, seq_len: int | None = None, *, batch_size: int = 1, bytes_per_value: int = 2) -> int:
        t = self._tokens("kv_cache_bytes", seq_len)
        for name, v in (("batch_size", batch_size), ("bytes_per_value", bytes_per_value)):
            _require(f"kv_cache_bytes {name}", v, _count(v), "must be an int >= 1")
        return 2 * self.n_layer * batch_size * t * self.kv_dim * bytes_per_value

    def _tokens(self, method: str, seq_len: int | None) -> int:
        """seq_len, or block_size for None: 0 once meant block_size too (a computed length of 0 counted a full
        context, silently), and a negative or fractional length gave a negative or fractional count."""
        if seq_len is None:
            return self.block_size
        _require(f"{method} seq_len", seq_len, _count(seq_len),
                 f"must be an int >= 1, or None for block_size={self.block_size}")
        return int(seq_len)

    # ----- (de)serialisation -----
    @property
    def has_final_norm(self) -> bool:
        """Whether a norm follows the last block: `final_norm`, or where it is None, every decoder and every pre-norm
        stack (a post-norm encoder, BERT, has none)."""
        if self.final_norm is not None:
            return self.final_norm
        return self.causal or self.norm_placement == "pre"

    @property
    def has_qkv_bias(self) -> bool:
        """Whether the q, k and v projections have biases: `qkv_bias`, or where it is None, `bias`."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data; derived fields the user left unset are None, so they are derived again
        from whatever the dict holds when it is read back (`from_dict`, YAML, dict-level overrides)."""
        data = dataclasses.asdict(self)
        data.update(dict.fromkeys(self._derived))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):  # was a TypeError from iterating it
            raise ValueError(f"ModelConfig.from_dict takes a mapping of fields, got {type(data).__name__}")
        for key in data:
            if not isinstance(key, str):  # a YAML key such as `1:` (difflib would fail on it)
                raise ValueError(f"ModelConfig field names are strings, got {key!r}; valid fields: "
                                 f"{', '.join(sorted(known))}")
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"ModelConfig has no field {key!r}{did}; valid fields: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A new config with `changes` applied; derived fields not set explicitly are derived again."""
        data = self.to_dict()
        data.update(changes)
        return ModelConfig.from_dict(data)

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump({"model": self.to_dict()}, sort_keys=False))

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a YAML file: either a bare mapping of fields or a `model:` section (a run's config.yaml)."""
        path = Path(path)
        data = read_yaml_file(path) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        if "model" in data:  # a run config's section (`model: tiny` read as a field named model otherwise)
            if not isinstance(data["model"], dict):
                raise ValueError(f"{path}: 'model' must be a mapping of config fields (or {{preset: name, ...}}), "
                                 f"got {type(data['model']).__name__}")
            data = data["model"]
        if "preset" in data:
            preset = data.pop("preset")
            return cls.from_name(preset).replace(**data)
        return cls.from_dict(data)

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        from neurallayers.presets import PRESETS

        if not isinstance(name, str):  # `preset: 3` or `preset:` (None) in a YAML file
            raise ValueError(f"a preset is named by a string, got {name!r}; available: {', '.join(PRESETS)}")
        if name not in PRESETS:
            hint = difflib.get_close_matches(name, list(PRESETS), n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown preset {name!r}{did}; available: {', '.join(PRESETS)}")
        return cls.from_dict({"name": name, **PRESETS[name]})

    @classmethod
    def from_checkpoint(cls, run_dir: str | Path) -> ModelConfig:
        return cls.from_file(Path(run_dir) / "config.yaml")

    @classmethod
    def resolve(cls, spec: str | Path | ModelConfig | dict) -> ModelConfig:
        """A preset name, a YAML file, a run directory, a mapping of fields (as from_dict), or a config already."""
        if isinstance(spec, ModelConfig):
            return spec
        if isinstance(spec, dict):  # as a run config's model section: {"preset": name, field: value, ...}
            fields = dict(spec)
            if "preset" not in fields:
                return cls.from_dict(fields)
            # `preset:` left empty (None) or "" named no preset: it built ModelConfig's defaults, GPT-2's shape
            return cls.from_name(fields.pop("preset")).replace(**fields)
        if not isinstance(spec, str | Path):
            raise ValueError(f"a model config is a ModelConfig, a preset name, a YAML path, a run directory or a "
                             f"mapping of fields, got {type(spec).__name__}")
        path = Path(spec)
        if path.is_dir():
            return cls.from_checkpoint(path)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            return cls.from_file(path)
        return cls.from_name(str(spec))


def default_intermediate_size(n_embd: int, mlp: str) -> int:
    if mlp == "gelu":
        return 4 * n_embd
    # Llama: 2/3 of 4d keeps the parameter count of a 4d GELU MLP; rounded up to a multiple of 64 for speed.
    hidden = int(2 * 4 * n_embd / 3)
    return 64 * math.ceil(hidden / 64)


def _count(value: Any) -> bool:
    """An int >= 1 (a numpy one too), not a bool."""
    return is_integral(value) and value >= 1


def _require(name: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"ModelConfig.{name}={value!r}: {what}")


def _yaml_data(value: Any, extra: dict, where: str = "extra") -> Any:
    """`value`, at `where` in `extra`, as config.yaml gives it back: a tuple came back a list (a resume then refused the
    run: "the model config differs from the saved one"), NaN unequal to itself, an object was yaml's RepresenterError
    on save."""
    if isinstance(value, list | tuple):
        return [_yaml_data(v, extra, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            ok = key is None or isinstance(key, str | int | float)
            _require("extra", extra, ok, f"the keys of {where} must be str, int or float, not {key!r}")
        return {k: _yaml_data(v, extra, f"{where}[{k!r}]") for k, v in value.items()}
    ok = value is None or isinstance(value, str | int) or (isinstance(value, float) and not math.isnan(value))
    _require("extra", extra, ok, f"{where}={value!r} must be YAML data: str, int, float (not NaN), bool, None, lists "
                                 "and mappings")
    return value


# Values in one tensor: torch counts a tensor's bytes in an int64, at most 8 bytes a value.
MAX_TENSOR_VALUES = 2**60


def _check_weight_sizes(cfg: ModelConfig) -> None:
    """Refuse a shape whose weights torch cannot create: `info` and build_model failed with "Storage size calculation
    overflowed" (or a C++ trace). Names the largest field of that weight the user set, not one derived from it."""
    width = cfg.n_head * cfg.head_dim + 2 * cfg.kv_dim  # the fused q, k, v projection's outputs
    gated = 2 if cfg.mlp in ("swiglu", "geglu") else 1
    tensors = [("token embedding weight", ("vocab_size", "n_embd"), cfg.vocab_size * cfg.n_embd),
               ("position table", ("block_size", "n_embd"), cfg.block_size * cfg.n_embd),
               ("token-type table", ("type_vocab_size", "n_embd"), cfg.type_vocab_size * cfg.n_embd),
               ("attention projection", ("n_embd", "n_head", "head_dim"), cfg.n_embd * width),
               ("MLP weight", ("n_embd", "intermediate_size"), cfg.n_embd * gated * cfg.intermediate_size)]
    if cfg.causal:  # one tensor over all layers: a decoder that cannot hold one full-context sequence cannot generate
        tensors.append(("KV cache of one sequence", ("n_layer", "block_size", "n_kv_head", "head_dim"),
                        cfg.n_layer * cfg.block_size * cfg.kv_dim))
    for what, fields, size in tensors:
        if size > MAX_TENSOR_VALUES:
            name = max([f for f in fields if f not in cfg._derived] or fields, key=lambda f: getattr(cfg, f))
            _require(name, getattr(cfg, name), False, f"the {what} would hold more than 2**60 values, the most a "
                                                      f"torch tensor can")


def _check_rope_scaling(scaling: dict, position: str) -> dict:
    _require("rope_scaling", scaling, position == "rope", "needs position='rope'")
    kind = scaling.get("type", scaling.get("rope_type"))
    allowed = get_args(RopeScalingType)
    typo = "" if "type" in scaling or "rope_type" in scaling else _key_hint(set(scaling), {"type"})
    if kind == "default":  # transformers 5's rope_parameters of plain RoPE
        typo = " ('default' is plain RoPE: leave rope_scaling None and set rope_theta)"
    _require("rope_scaling", scaling, kind in allowed,
             f"'type' must be one of {', '.join(map(repr, allowed))}{typo}")
    # transformers writes both spellings in some configs; two that disagree were resolved silently to the later one
    both = "type" in scaling and "rope_type" in scaling
    _require("rope_scaling", scaling, not both or scaling["type"] == scaling["rope_type"],
             "'type' and 'rope_type' name different scalings; give one")
    scaling = {("type" if k == "rope_type" else k): v for k, v in scaling.items()}
    extra = set(scaling) - _ROPE_SCALING_KEYS[kind]
    _require("rope_scaling", scaling, not extra,
             f"unknown keys {sorted(extra, key=str)} for type {kind!r}{_key_hint(extra, _ROPE_SCALING_KEYS[kind])}"
             + _THETA_HINT * ("rope_theta" in extra))
    missing = set(_ROPE_SCALING_NEEDS.get(kind, ())) - set(scaling)
    _require("rope_scaling", scaling, not missing, f"{kind} scaling needs {sorted(missing)}")
    # Checked here, as the rotation reads them: a bad value there is a traceback, NaN or zero rotations.
    factor = scaling.get("factor")
    _require("rope_scaling.factor", factor, is_finite(factor) and factor >= 1, "must be a finite number >= 1")
    if "original_max_position_embeddings" in scaling:
        old_len = scaling["original_max_position_embeddings"]
        _require("rope_scaling.original_max_position_embeddings", old_len, is_int(old_len) and old_len >= 1,
                 "must be a positive int")
    if kind == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            v = scaling[key]
            _require(f"rope_scaling.{key}", v, is_finite(v) and v > 0, "must be a finite number > 0")
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        _require("rope_scaling.high_freq_factor", high, high > low, f"must be > low_freq_factor={low!r}")
    if kind == "yarn":
        _check_yarn(scaling)
    return scaling


def _check_yarn(scaling: dict) -> None:
    """YaRN's optional keys; transformers only warns on most of these, then divides by zero (beta 0 is its default,
    but a negative one is log of a negative), takes a log of one, or zeroes q and k (attention_factor 0)."""
    for key, low, default in (("attention_factor", "> 0", "from factor"), ("beta_fast", "> 0", "32"),
                              ("beta_slow", "> 0", "1"), ("mscale", ">= 0", "unused"),
                              ("mscale_all_dim", ">= 0", "unused")):
        v = scaling.get(key)
        ok = v is None or (is_finite(v) and (v > 0 if low == "> 0" else v >= 0))
        _require(f"rope_scaling.{key}", v, ok, f"must be a finite number {low}, or None ({default})")
    fast, slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1
    _require("rope_scaling.beta_fast", scaling.get("beta_fast"), fast >= slow,
             f"must be >= beta_slow={slow!r} (the ramp runs from the fast-turning dims to the slow ones)")
    truncate = scaling.get("truncate", True)
    _require("rope_scaling.truncate", truncate, isinstance(truncate, bool), "must be true or false")


def _key_hint(unknown: set, valid: set[str]) -> str:
    """The hint " (did you mean 'factor' for 'factr'?)" for the first unknown key close to a valid one, else ""."""
    for key in sorted(k for k in unknown if isinstance(k, str)):
        if close := difflib.get_close_matches(key, sorted(valid), n=1):
            return f" (did you mean {close[0]!r} for {key!r}?)"
    return ""


def dynamic_scaling_unused(cfg: ModelConfig) -> str | None:
    """Why a dynamic NTK scaling changes nothing (the base grows only past the original length, and no sequence
    within block_size passes it), or None. Not an error: runs saved with one, and Hugging Face configs with factor
    1.0, are plain RoPE; the model builder warns."""
    scaling = cfg.rope_scaling or {}
    if scaling.get("type") != "dynamic":
        return None
    old_len = scaling.get("original_max_position_embeddings", cfg.block_size)
    if old_len < cfg.block_size:
        return None
    default = "" if "original_max_position_embeddings" in scaling else " (the block_size default)"
    hint = f"below block_size (e.g. block_size / factor = {int(cfg.block_size // scaling['factor'])})" \
        if cfg.block_size // scaling["factor"] < cfg.block_size else "below block_size"
    return (f"rope_scaling dynamic acts only past original_max_position_embeddings={old_len}{default}, which no "
            f"sequence within block_size={cfg.block_size} passes: it changes nothing (to scale, set "
            f"original_max_position_embeddings {hint})")


def coerce_float_strings(klass: type, raw: dict) -> dict:
    """`raw` (fields of the dataclass `klass`) with numeric strings made floats where the field is a float: YAML 1.1
    reads `1e-6` and `5e5` as strings. A string that is no number is left for validation to report."""
    hints = field_types(klass)
    out = dict(raw)
    for key, value in raw.items():
        tp = hints.get(key)
        if isinstance(value, str) and (tp is float or float in get_args(tp)):
            out[key] = _float_or_same(value)
    return out


def _coerce_float_strings(cfg: ModelConfig) -> None:
    """coerce_float_strings on a ModelConfig's own fields and rope_scaling's factors, so that a model YAML reads the
    same on its own as in a run config's model section."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for name, value in coerce_float_strings(type(cfg), fields).items():
        if value is not fields[name]:
            setattr(cfg, name, value)
    if isinstance(cfg.rope_scaling, dict):
        cfg.rope_scaling = {k: _float_or_same(v) if k in _ROPE_SCALING_FLOATS and isinstance(v, str) else v
                            for k, v in cfg.rope_scaling.items()}


def _ints_as_floats(cfg: ModelConfig) -> None:
    """A float field given an int holds the float: torch's `10**30 ** tensor` (RoPE's theta) overflows where the
    float does not. Runs after validation, which refused ints past float's range."""
    hints = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints.get(f.name)
        if type(value) is int and (tp is float or float in get_args(tp)):
            setattr(cfg, f.name, float(value))
    if isinstance(cfg.rope_scaling, dict):  # yarn's factor too; one past float's range is left for validation
        cfg.rope_scaling = {k: _float_or_same(v) if k in _ROPE_SCALING_FLOATS and type(v) is int else v
                            for k, v in cfg.rope_scaling.items()}


def _float_or_same(value: str | int) -> float | str | int:
    try:
        return float(value)
    except (ValueError, OverflowError):
        return value  # left for validation to report


def read_yaml_file(path: str | Path, *, what: str = "config file", load: Callable[[str], Any] | None = None) -> Any:
    """The YAML document in `path`, read by `load` (default yaml.safe_load); a missing file or bad YAML is one clear
    line (file, problem, line, column)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        _check_aliases(text)
        return (load or yaml.safe_load)(text)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); a {what} is a YAML file") from None
    except (RecursionError, _UnsafeYAML) as e:  # yaml's composer recurses a level a bracket: a traceback before
        why = "it is nested too deep" if isinstance(e, RecursionError) else str(e)
        raise ValueError(f"{path} is not a {what} YAML reads safely: {why}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path} is not valid YAML: {problem}{where}") from None


# A config holds hundreds of values; YAML's "billion laughs" (a list of ten aliases of a list of ten aliases ...)
# expands a 1 kB file to 10**9, which safe_load builds as shared objects and every walk of the data (the checks of
# `extra`) visits one by one.
MAX_YAML_VALUES = 100_000


class _UnsafeYAML(ValueError):
    """A YAML document whose aliases expand too far or contain themselves."""


def _check_aliases(text: str) -> None:
    """Refuses a YAML document whose aliases expand to over MAX_YAML_VALUES values, or whose alias sits inside its own
    anchor (a list holding itself: the checks of `extra` recursed until Python's limit). Counted on yaml's node
    graph, each node once, before anything is built."""
    import yaml

    if "*" not in text:  # no alias, nothing to expand
        return
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return
    sizes: dict[int, int] = {}  # id(node) -> its values with aliases expanded
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:  # depth first without recursion: post-order sums, a node met again while open is its own ancestor
        node, done = stack.pop()
        children = _yaml_children(node)
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise _UnsafeYAML(f"it holds aliases that expand to over {MAX_YAML_VALUES:,} values (a config holds "
                                  "hundreds)")
        elif id(node) in open_nodes:
            raise _UnsafeYAML(f"it holds an alias inside its own anchor (line {node.start_mark.line + 1}), data that "
                              "contains itself")
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)


def _yaml_children(node: Any) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []
