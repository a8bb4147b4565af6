"""Hugging Face BERT (`model_type: "bert"`) <-> NeuralLayers encoder: config and weights.

One literal weight-name map drives both directions. Hugging Face keys are accepted with or without the `bert.`
prefix (sentence-transformers folders such as all-MiniLM-L6-v2 save the bare BertModel without it); head models
(masked LM, sequence / token classification) are written with it, as `save_pretrained` does.
"""

from __future__ import annotations

import torch

from neurallayers.config import ModelConfig
from neurallayers.interop.hf_config import config_architecture, config_number
from neurallayers.interop.weight_maps import check_floating

# ours <-> Hugging Face. "{i}" is the layer index. A tuple on the HF side is concatenated along dim 0 on ours:
# BERT's separate query, key and value become the rows of our fused qkv projection.
_LAYER = "encoder.layer.{i}."
BASE_MAP: tuple[tuple[str, str | tuple[str, ...]], ...] = (
    ("wte.weight", "embeddings.word_embeddings.weight"),
    ("wpe.weight", "embeddings.position_embeddings.weight"),
    ("wtt.weight", "embeddings.token_type_embeddings.weight"),
    ("emb_norm.weight", "embeddings.LayerNorm.weight"),
    ("emb_norm.bias", "embeddings.LayerNorm.bias"),
    ("blocks.{i}.attn.qkv.weight", (_LAYER + "attention.self.query.weight", _LAYER + "attention.self.key.weight",
                                    _LAYER + "attention.self.value.weight")),
    ("blocks.{i}.attn.qkv.bias", (_LAYER + "attention.self.query.bias", _LAYER + "attention.self.key.bias",
                                  _LAYER + "attention.self.value.bias")),
    ("blocks.{i}.attn.proj.weight", _LAYER + "attention.output.dense.weight"),
    ("blocks.{i}.attn.proj.bias", _LAYER + "attention.output.dense.bias"),
    ("blocks.{i}.norm1.weight", _LAYER + "attention.output.LayerNorm.weight"),
    ("blocks.{i}.norm1.bias", _LAYER + "attention.output.LayerNorm.bias"),
    ("blocks.{i}.mlp.fc.weight", _LAYER + "intermediate.dense.weight"),
    ("blocks.{i}.mlp.fc.bias", _LAYER + "intermediate.dense.bias"),
    ("blocks.{i}.mlp.proj.weight", _LAYER + "output.dense.weight"),
    ("blocks.{i}.mlp.proj.bias", _LAYER + "output.dense.bias"),
    ("blocks.{i}.norm2.weight", _LAYER + "output.LayerNorm.weight"),
    ("blocks.{i}.norm2.bias", _LAYER + "output.LayerNorm.bias"),
    ("pooler.weight", "pooler.dense.weight"),
    ("pooler.bias", "pooler.dense.bias"),
)
HEAD_MAP: tuple[tuple[str, str], ...] = (
    ("head.dense.weight", "cls.predictions.transform.dense.weight"),
    ("head.dense.bias", "cls.predictions.transform.dense.bias"),
    ("head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("head.bias", "cls.predictions.bias"),
    ("head.decoder.weight", "cls.predictions.decoder.weight"),  # only when not tied to the word embedding
    ("classifier.weight", "classifier.weight"),
    ("classifier.bias", "classifier.bias"),
)
# Hugging Face keys that carry no weights of ours: buffers, aliases of tied weights, the pretraining NSP head.
_IGNORED_PREFIXES = ("embeddings.position_ids", "cls.predictions.decoder.bias", "cls.seq_relationship.")
# BERT keys of parts this model may not have (a pooler, a head other than config.head), skipped by their exact names:
# any key under their prefixes was skipped, so an extra layer of a custom head was dropped without a word
_OPTIONAL_KEYS = frozenset(["pooler.dense.weight", "pooler.dense.bias", *(hf for _, hf in HEAD_MAP)])
# An untied masked-LM head: transformers 5 adds `cls.predictions.decoder.bias` (its own parameter then), older
# versions always tie it to `cls.predictions.bias`. Read either, write both.
_UNTIED_BIAS = ("cls.predictions.decoder.bias", "cls.predictions.bias")

ARCHITECTURES = {  # HF architecture -> (our head, has a pooler)
    "BertModel": ("none", True),
    "BertForMaskedLM": ("mlm", False),
    "BertForPreTraining": ("mlm", True),
    "BertForSequenceClassification": ("sequence_classification", True),
    "BertForTokenClassification": ("token_classification", False),
}
HEAD_ARCHITECTURE = {"none": "BertModel", "mlm": "BertForMaskedLM",
                     "sequence_classification": "BertForSequenceClassification",
                     "token_classification": "BertForTokenClassification"}
# HF name -> our gelu_approx: transformers' ACT2FN names for the exact (erf) GELU and for the tanh approximation
HIDDEN_ACT = {"gelu": "none", "gelu_python": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
              "gelu_python_tanh": "tanh", "gelu_fast": "tanh", "gelu_accurate": "tanh"}
EXPORTED_ACT = {"none": "gelu", "tanh": "gelu_pytorch_tanh"}  # the one name written for each


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a Hugging Face BertConfig dict (config.json).

    Raises:
        ValueError: not a BERT config, or a BERT variant we do not build (relative positions, decoder use,
            an activation other than GELU, an architecture without a matching head).
    """
    if not isinstance(hf, dict):
        raise ValueError(f"expected a config.json dict, got {type(hf).__name__}")
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"config model_type={hf.get('model_type')!r}: this converter reads 'bert'")
    arch = config_architecture(hf, "BertModel")
    if arch not in ARCHITECTURES:
        raise ValueError(f"config architectures={hf['architectures']!r}: supported BERT architectures are "
                         f"{', '.join(ARCHITECTURES)}")
    head, pooler = ARCHITECTURES[arch]
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in HIDDEN_ACT:  # a list or an object: unhashable
        raise ValueError(f"config hidden_act={act!r}: supported are {', '.join(HIDDEN_ACT)}")
    pos_type = hf.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"config position_embedding_type={pos_type!r}: only 'absolute' is supported")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("config is_decoder/add_cross_attention: BERT used as a decoder is not supported")
    id2label = hf.get("id2label")
    extra: dict = {"hf_model_type": "bert", "hf_architecture": arch}
    if id2label:
        extra["id2label"] = {str(k): str(v) for k, v in id2label.items()}
    if hf.get("problem_type"):  # multi_label_classification: the pipeline scores each label by a sigmoid
        extra["problem_type"] = str(hf["problem_type"])
    if hf.get("classifier_dropout") is not None:  # the task heads' own dropout (null: hidden_dropout_prob's)
        rate = config_number(hf, "classifier_dropout", 0.0)
        if not 0 <= rate <= 1:
            raise ValueError(f"config classifier_dropout={rate!r}: expected a number in [0, 1]")
        extra["classifier_dropout"] = rate
    n_embd = hf.get("hidden_size", 768)
    return ModelConfig(
        name=str(hf.get("_name_or_path") or "bert"), causal=False, vocab_size=hf.get("vocab_size", 30522),
        block_size=hf.get("max_position_embeddings", 512), n_layer=hf.get("num_hidden_layers", 12),
        n_head=hf.get("num_attention_heads", 12), n_embd=n_embd,
        intermediate_size=hf.get("intermediate_size", 3072), norm="layernorm",  # BertConfig's, whatever the width
        norm_eps=config_number(hf, "layer_norm_eps", 1e-12), norm_placement="post", mlp="gelu",
        gelu_approx=HIDDEN_ACT[act],
        position="learned", bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=config_number(hf, "hidden_dropout_prob", 0.1),
        attn_dropout=config_number(hf, "attention_probs_dropout_prob", 0.1),
        init_std=config_number(hf, "initializer_range", 0.02), scale_residual_init=False,
        type_vocab_size=hf.get("type_vocab_size", 2), pad_token_id=hf.get("pad_token_id", 0), pooler=pooler,
        num_labels=len(id2label) if id2label else hf.get("num_labels", 2), head=head, extra=extra,
    )


def config_to_hf(cfg: ModelConfig) -> dict:
    """A BertConfig dict (model_type "bert", architectures from `cfg.head`) for `cfg`.

    Raises:
        ValueError: `cfg` has a switch BERT cannot express (pooler=False is one for the bare encoder and sequence
            classification, whose BERT classes always have a pooler); the message names every such field.
    """
    wanted = {"causal": False, "norm": "layernorm", "norm_placement": "post", "mlp": "gelu", "position": "learned",
              "bias": True, "layer_scale": None, "n_kv_head": cfg.n_head, "head_dim": cfg.n_embd // cfg.n_head}
    bad = [f"{k}={getattr(cfg, k)!r} (BERT needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.type_vocab_size < 1:
        bad.append(f"type_vocab_size={cfg.type_vocab_size} (BERT needs >= 1)")
    arch = HEAD_ARCHITECTURE[cfg.head]
    if ARCHITECTURES[arch][1] and not cfg.pooler:  # transformers would give it a random pooler
        bad.append(f"pooler=False with head={cfg.head!r} ({arch} always has a pooler)")
    if bad:
        raise ValueError("config cannot be written as a Hugging Face BERT: " + "; ".join(bad))
    out = {
        "architectures": [arch], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.intermediate_size, "hidden_act": EXPORTED_ACT[cfg.gelu_approx],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout, "max_position_embeddings": cfg.block_size,
        "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.init_std, "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": cfg.pad_token_id, "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings,
        "classifier_dropout": cfg.extra.get("classifier_dropout"),  # None: the heads drop at hidden_dropout_prob
    }
    if cfg.head in ("sequence_classification", "token_classification"):
        names = cfg.extra.get("id2label") or {}
        id2label = {str(i): str(names.get(str(i), f"LABEL_{i}")) for i in range(cfg.num_labels)}
        out.update(num_labels=cfg.num_labels, id2label=id2label, label2id={v: int(k) for k, v in id2label.items()})
        if cfg.extra.get("problem_type"):
            out["problem_type"] = cfg.extra["problem_type"]
    return out


def _reference(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict `build_model(cfg)` has, on the meta device (names and shapes, no memory)."""
    from neurallayers.models.encoder import build_encoder

    with torch.device("meta"):
        return build_encoder(cfg).state_dict()


def _entries(cfg: ModelConfig, ours: dict) -> list[tuple[str, str | tuple[str, ...]]]:
    """The map expanded for this config: (our key, canonical HF key(s)), canonical = without `bert.`, our keys
    with the head model's `encoder.` prefix; only the keys that are in `ours`."""
    prefix = "" if cfg.head == "none" else "encoder."
    entries = []
    for our, hf in BASE_MAP:
        for i in range(cfg.n_layer) if "{i}" in our else [None]:
            fill = (lambda s, i=i: s.format(i=i)) if i is not None else (lambda s: s)
            entries.append((prefix + fill(our), tuple(map(fill, hf)) if isinstance(hf, tuple) else fill(hf)))
    entries += HEAD_MAP
    if not cfg.tie_embeddings:
        entries = [(our, _UNTIED_BIAS[0] if hf == _UNTIED_BIAS[1] else hf) for our, hf in entries]
    entries = [(our, hf) for our, hf in entries if our in ours]
    missing = set(ours) - {our for our, _ in entries}
    if missing:  # a model switch this map does not cover
        raise ValueError(f"no BERT name for our weights {sorted(missing)}")
    return entries


# TF-era names that checkpoints such as bert-base-uncased still hold; transformers renames them on load
_LEGACY_NORM_NAMES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def _canonical(key: str) -> str:
    for old, new in _LEGACY_NORM_NAMES:
        key = key.replace(old, new)
    return key[len("bert."):] if key.startswith("bert.") else key


def to_ours(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict (for `build_model(cfg)`) from a Hugging Face BERT state dict.

    Raises:
        ValueError: missing keys, unknown keys or wrong shapes, each named.
    """
    sd, file_key = {}, {}  # canonical name -> tensor, and -> the file's own name of it (for messages)
    for key, value in hf_sd.items():
        canon = _canonical(key)
        if canon in sd:
            raise ValueError(f"weight {canon!r} appears both with and without the 'bert.' prefix")
        sd[canon], file_key[canon] = value, key
    if _UNTIED_BIAS[0] not in sd and _UNTIED_BIAS[1] in sd:
        sd[_UNTIED_BIAS[0]], file_key[_UNTIED_BIAS[0]] = sd[_UNTIED_BIAS[1]], file_key[_UNTIED_BIAS[1]]
    ref = _reference(cfg)
    out, used, missing = {}, set(), []
    for our, hf in _entries(cfg, ref):
        names = hf if isinstance(hf, tuple) else (hf,)
        absent = [n for n in names if n not in sd]
        if absent:
            missing += absent
            continue
        used.update(names)
        out[our] = torch.cat([sd[n] for n in names], dim=0) if isinstance(hf, tuple) else sd[hf]
    if missing:
        raise ValueError(f"BERT checkpoint is missing {len(missing)} weights: {missing[:8]}")
    check_floating({file_key[k]: sd[k] for k in used}, [file_key[k] for k in used], "BERT weights")
    unknown = [k for k in sd if k not in used and not k.startswith(_IGNORED_PREFIXES) and k not in _OPTIONAL_KEYS]
    if unknown:
        raise ValueError(f"BERT checkpoint has {len(unknown)} weights with no place in this model: {unknown[:8]}")
    _check_shapes(out, ref)
    return out


def to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT state dict (the keys `save_pretrained` writes) from ours: the inverse of `to_ours`.

    Raises:
        ValueError: missing or unknown keys in `sd`, named.
    """
    ref = _reference(cfg)
    entries = _entries(cfg, ref)
    expected = {our for our, _ in entries}
    if set(sd) != expected:
        raise ValueError(f"state dict does not match the config: missing {sorted(expected - set(sd))[:8]}, "
                         f"unexpected {sorted(set(sd) - expected)[:8]}")
    _check_shapes(sd, ref)
    prefix = "" if cfg.head == "none" else "bert."
    out = {}
    for our, hf in entries:
        if isinstance(hf, tuple):  # split the fused rows back; clones, so no two outputs share storage
            parts = sd[our].split([sd[our].shape[0] // len(hf)] * len(hf), dim=0)
            out.update({_hf_name(n, prefix): p.clone() for n, p in zip(hf, parts, strict=True)})
        else:
            out[_hf_name(hf, prefix)] = sd[our]
    if _UNTIED_BIAS[0] in out:
        out[_UNTIED_BIAS[1]] = out[_UNTIED_BIAS[0]].clone()
    return out


def _hf_name(canonical: str, prefix: str) -> str:
    return canonical if canonical.startswith(("cls.", "classifier.")) else prefix + canonical


def _check_shapes(sd: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    bad = [f"{k}: {tuple(v.shape)} != {tuple(ref[k].shape)}" for k, v in sd.items() if v.shape != ref[k].shape]
    if bad:
        raise ValueError(f"BERT weights have wrong shapes for this config: {bad[:8]}")
