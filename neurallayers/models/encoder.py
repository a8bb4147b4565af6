"""BERT style bidirectional encoder and its task heads (masked LM, sequence and token classification).

The layers are the decoder's blocks run without a causal mask; BERT is the post-norm setting
(`norm_placement="post"`), exact-erf GELU (`gelu_approx="none"`) and learned absolute positions plus token types.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from neurallayers.config import ModelConfig
from neurallayers.models.decoder import (
    build_blocks,
    check_below,
    check_integer,
    check_mask_values,
    check_position_ids,
    init_weights,
    materialize_tables,
    reset_weights,
)
from neurallayers.nn import RotaryEmbedding, build_norm, sinusoidal_table
from neurallayers.nn.positions import FixedTable, rope_dtype

POOLERLESS_HEADS = ("mlm", "token_classification")  # heads that never read the pooler, as in transformers
log = logging.getLogger("neurallayers.models")


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T, n_embd) last hidden state
    pooled: torch.Tensor | None = None  # (B, n_embd) tanh pooler over [CLS], when the config has a pooler
    attentions: list[torch.Tensor] | None = None  # per layer (B, n_head, T, T), when asked for
    logits: torch.Tensor | None = None  # head output: (B, T, vocab), (B, num_labels) or (B, T, num_labels)
    loss: torch.Tensor | None = None


class EncoderModel(nn.Module):
    """Embeddings (word + position + token type, then LayerNorm) -> bidirectional blocks -> optional pooler."""

    def __init__(self, config: ModelConfig, *, pooler: bool = True) -> None:
        """pooler: False leaves out the config's pooler (for a head that never reads it)."""
        super().__init__()
        if config.causal:
            raise ValueError("EncoderModel needs causal=False; build_model picks DecoderLM for causal=True")
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=cfg.pad_token_id)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        if cfg.position == "sinusoidal":
            # Added to unscaled token embeddings, as in DecoderLM (whose comment says why that stays so for now).
            self.sinusoid = FixedTable(functools.partial(sinusoidal_table, cfg.block_size, cfg.n_embd))
        self.rope = (RotaryEmbedding(cfg.head_dim, theta=cfg.rope_theta, scaling=cfg.rope_scaling,
                                     max_position=cfg.block_size) if cfg.position == "rope" else None)
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size > 0 else None
        self.emb_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = build_blocks(cfg)
        # Pre-norm stacks leave the residual stream un-normalised; post-norm (BERT) already ends in a norm.
        self.norm_f = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias) if cfg.has_final_norm else None
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias) if cfg.pooler and pooler else None
        self.gradient_checkpointing = False
        init_weights(self, cfg)
        self.zero_padding()
        self.register_load_state_dict_post_hook(_after_load)

    def zero_padding(self) -> None:
        if self.config.pad_token_id is not None:
            with torch.no_grad():
                self.wte.weight[self.config.pad_token_id].zero_()  # as BERT initialises it; padding_idx keeps it there

    def reset_parameters(self) -> None:
        """Every weight initialised again and the position tables recomputed, in place (see DecoderLM's)."""
        reset_weights(self, self.config)
        self.zero_padding()

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                output_attentions: bool = False, pool: bool = True) -> EncoderOutput:
        """Hidden states for input_ids (B, T).

        Args:
            attention_mask: (B, T) 1 for real tokens, 0 for padding; padded keys are never attended to.
            token_type_ids: (B, T) segment ids in [0, type_vocab_size); default all 0.
            position_ids: (B, T), or (1, T) / (T,) for every row; default arange(T).
            output_attentions: also return each layer's attention weights (uses the eager kernel).
            pool: run the pooler (when the config has one); False leaves `pooled` None.
        """
        cfg = self.config
        b, t = _check_ids(input_ids, "input_ids")
        if _checks_ids(self, input_ids):
            # another tokenizer's ids, say. A GPU training step pays no host sync for it (the trainer's token cache is
            # checked); on the CPU it costs no sync, and a user's own training loop got torch's bare IndexError
            check_below(input_ids, cfg.vocab_size, "input_ids", "vocab_size")
        if t > cfg.block_size and cfg.position in ("learned", "sinusoidal"):
            raise ValueError(f"sequence length {t} exceeds the context length block_size={cfg.block_size}")
        device = input_ids.device
        if position_ids is None:
            position_ids = torch.arange(t, device=device)[None, :].expand(b, t)
        else:
            position_ids = check_position_ids(position_ids, b, t)
            if cfg.position in ("learned", "sinusoidal"):  # they index a table
                check_integer(position_ids, "position_ids")
                check_below(position_ids, cfg.block_size, "position_ids", "block_size")
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        elif cfg.position == "sinusoidal":
            x = x + self.sinusoid.table[position_ids].to(x.dtype)
        if self.wtt is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            else:  # ours are zeros: only a caller's are checked
                _check_same_shape(token_type_ids, input_ids, "token_type_ids")
                check_integer(token_type_ids, "token_type_ids")
                check_below(token_type_ids, cfg.type_vocab_size, "token_type_ids", "type_vocab_size")
            x = x + self.wtt(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the config has type_vocab_size=0")
        x = self.drop(self.emb_norm(x))
        mask = _padding_mask(attention_mask, input_ids)
        rope = (self.rope(_rope_positions(position_ids, attention_mask), rope_dtype(x)) if self.rope is not None
                else None)
        attentions = [] if output_attentions else None
        for block in self.blocks:
            kw = dict(rope=rope, mask=mask, is_causal=False, need_weights=output_attentions)
            if self.gradient_checkpointing and self.training:
                x, w = checkpoint(block, x, use_reentrant=False, **kw)
            else:
                x, w = block(x, **kw)
            if output_attentions:
                attentions.append(w)
        if self.norm_f is not None:
            x = self.norm_f(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None and pool else None
        return EncoderOutput(hidden=x, pooled=pooled, attentions=attentions)


def _after_load(model: EncoderModel, incompatible_keys) -> None:
    """load_state_dict(assign=True) into a model built on meta leaves the position tables there."""
    materialize_tables(model, model.wte.weight.device)


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm, then the vocabulary projection plus a bias.
    The projection is the word embedding itself when tied (no `decoder` weight of its own then)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        cfg = config
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.decoder = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.gelu_approx = cfg.gelu_approx

    def forward(self, x: torch.Tensor, word_embedding: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> logits (B, T, vocab)."""
        x = self.norm(F.gelu(self.dense(x), approximate=self.gelu_approx))
        weight = word_embedding if self.decoder is None else self.decoder.weight
        return F.linear(x, weight, self.bias)


class _HeadModel(nn.Module):
    """What the head models share: `encoder` (an EncoderModel) and its gradient checkpointing switch."""

    encoder: EncoderModel

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.encoder.gradient_checkpointing = on

    def reset_parameters(self) -> None:
        """Every weight, the head's too, initialised again (see DecoderLM.reset_parameters)."""
        reset_weights(self, self.config)
        self.encoder.zero_padding()


class EncoderForMaskedLM(_HeadModel):
    """Encoder + masked LM head. `labels` (B, T): the original ids at masked positions, -100 elsewhere."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # No pooler, whatever the config says: nothing here reads it, and transformers' BertForMaskedLM has none
        # (its parameters, its checkpoints); under DDP a pooler outside the loss would fail the next step.
        self.encoder = EncoderModel(config, pooler=False)
        self.head = MaskedLMHead(config)
        init_weights(self.head, config)

    def forward(self, input_ids: torch.Tensor, *, labels: torch.Tensor | None = None,
                logits_at_labels: bool = False, **kwargs) -> EncoderOutput:
        """kwargs go to EncoderModel.forward (attention_mask, token_type_ids, ...); logits (B, T, vocab).

        logits_at_labels: with `labels`, run the head only where a label is not -100: logits (N, vocab) for those N
            positions (row-major order), the same loss. Training masks ~15% of the tokens, so this skips ~85% of the
            vocabulary projection, the largest matmul of a small encoder.
        """
        out = self.encoder(input_ids, **kwargs)
        if labels is not None:
            check = _checks_ids(self, input_ids)
            labels = _token_labels(labels, input_ids, self.config.vocab_size, "vocab_size", check)
        if labels is not None and logits_at_labels:
            where = labels != -100
            out.logits = self.head(out.hidden[where], self.encoder.wte.weight)
            out.loss = F.cross_entropy(out.logits.float(), labels[where])
            return out
        out.logits = self.head(out.hidden, self.encoder.wte.weight)
        if labels is not None:
            out.loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.reshape(-1), ignore_index=-100)
        return out


class EncoderForSequenceClassification(_HeadModel):
    """Encoder + classifier on the pooled [CLS] state (the raw [CLS] hidden state when there is no pooler).

    Loss as transformers computes it: cross-entropy over `num_labels` classes, mean squared error (regression, the
    default when num_labels == 1), or a binary cross-entropy per label (multi-label: float labels, or the config's
    problem_type).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = EncoderModel(config)
        self.drop = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        init_weights(self.classifier, config)
        _check_problem_type(config.extra.get("problem_type"), config.num_labels)  # before training, not at a loss

    def forward(self, input_ids: torch.Tensor, *, labels: torch.Tensor | None = None,
                **kwargs) -> EncoderOutput:
        """labels: (B,) (or (B, 1)) class ids, (B,) float targets (regression, num_labels == 1) or (B, num_labels)
        floats (multi-label, or regression with several outputs); logits (B, num_labels)."""
        out = self.encoder(input_ids, **kwargs)
        pooled = out.pooled if out.pooled is not None else out.hidden[:, 0]
        out.logits = self.classifier(self.drop(pooled))
        if labels is not None:
            out.loss = _sequence_loss(out.logits.float(), labels, self.config.extra.get("problem_type"),
                                      check=_checks_ids(self, input_ids))
        return out


def classifier_dropout(config: ModelConfig) -> float:
    """The classification heads' dropout rate: a Hugging Face config's classifier_dropout (kept in `extra`), else the
    model's `dropout`, as transformers' BertFor*Classification choose it."""
    rate = config.extra.get("classifier_dropout")
    if rate is None:
        return config.dropout
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ValueError(f"extra.classifier_dropout={rate!r}: expected a number in [0, 1], or None for dropout's")
    return float(rate)


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")  # transformers' names


def _check_problem_type(problem_type: str | None, num_labels: int) -> None:
    """A Hugging Face config's problem_type: one of PROBLEM_TYPES, and single-label with two classes or more (one
    class under cross-entropy scores every label 0: a loss of 0 that never trains; transformers refuses it too)."""
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type={problem_type!r}: expected one of {', '.join(map(repr, PROBLEM_TYPES))}")
    if problem_type == "single_label_classification" and num_labels < 2:
        raise ValueError(f"problem_type='single_label_classification' needs num_labels >= 2, got {num_labels}: use "
                         "num_labels 2 for a binary classifier, or problem_type 'regression' for one output")


def _sequence_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None, *,
                   check: bool = True) -> torch.Tensor:
    """transformers' BertForSequenceClassification loss: logits (B, n). The config's problem_type (a Hugging Face
    config's), else regression for one output, single-label for integer labels, multi-label for float ones."""
    b, n = logits.shape
    _check_problem_type(problem_type, n)
    if problem_type is None:
        problem_type = ("regression" if n == 1 else "multi_label_classification" if labels.is_floating_point()
                        else "single_label_classification")
    if problem_type == "single_label_classification":
        if labels.shape == (b, 1):  # a dataset's label column kept 2-D: transformers flattens it
            labels = labels.reshape(b)
        if labels.shape != (b,) or labels.is_floating_point():
            raise ValueError(f"labels must be class ids of shape (B,)={(b,)}, got {labels.dtype} {tuple(labels.shape)}")
        if check:
            _check_classes(labels, n, "num_labels")
        return F.cross_entropy(logits, labels.long())  # int32 ids too
    want = (b,) if n == 1 and problem_type == "regression" else (b, n)  # one output: (B,) targets, or (B, 1)
    if labels.shape != want and not (n == 1 and labels.numel() == b):
        raise ValueError(f"labels must have shape {want} for {problem_type}, got {tuple(labels.shape)}")
    targets = labels.float().reshape(logits.shape)
    if problem_type == "regression":
        return F.mse_loss(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)  # a sigmoid per label


class EncoderForTokenClassification(_HeadModel):
    """Encoder + per-token classifier (NER, POS tagging). `labels` (B, T) with -100 at ignored positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = EncoderModel(config, pooler=False)  # as BertForTokenClassification: [CLS] is not pooled
        self.drop = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        init_weights(self.classifier, config)

    def forward(self, input_ids: torch.Tensor, *, labels: torch.Tensor | None = None,
                **kwargs) -> EncoderOutput:
        """logits (B, T, num_labels)."""
        out = self.encoder(input_ids, **kwargs)
        out.logits = self.classifier(self.drop(out.hidden))
        if labels is not None:
            labels = _token_labels(labels, input_ids, self.config.num_labels, "num_labels",
                                   _checks_ids(self, input_ids))
            out.loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.reshape(-1), ignore_index=-100)
        return out


HEADS: dict[str, type[nn.Module]] = {
    "none": EncoderModel,
    "mlm": EncoderForMaskedLM,
    "sequence_classification": EncoderForSequenceClassification,
    "token_classification": EncoderForTokenClassification,
}


def build_encoder(config: ModelConfig) -> nn.Module:
    """The bare encoder or the head model that `config.head` names."""
    if config.head not in HEADS:
        raise ValueError(f"ModelConfig.head={config.head!r}: valid heads are {', '.join(HEADS)}")
    return HEADS[config.head](config)


def drop_unused_pooler(config: ModelConfig, sd: dict[str, torch.Tensor], *,
                       source: str = "state dict") -> dict[str, torch.Tensor]:
    """`sd` without BERT pooler weights (`encoder.pooler.*`) when `config`'s head builds no pooler: a masked-LM or
    token-classification run saved before those heads lost it, or a bare encoder's weights under such a head, still
    load (logged). Other state dicts are returned as they are."""
    pooler = [k for k in sd if k.startswith("encoder.pooler.")] if config.head in POOLERLESS_HEADS else []
    if not pooler:
        return sd
    log.info("%s: its BERT pooler (%s) is left out: head=%r models have none, as in transformers", source,
             ", ".join(pooler), config.head)
    return {k: v for k, v in sd.items() if k not in pooler}


def base_encoder(model: nn.Module) -> EncoderModel:
    """The EncoderModel inside a head model (or the model itself)."""
    return model if isinstance(model, EncoderModel) else model.encoder


# ----- input checks and masks -----
def _check_ids(ids: torch.Tensor, name: str) -> tuple[int, int]:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype not in (torch.long, torch.int32):
        got = f"{ids.dtype} tensor of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids)
        raise ValueError(f"{name} must be an integer tensor of shape (B, T), got {got}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name} is empty: need at least one token per row")
    return ids.shape


def _check_same_shape(x: torch.Tensor, ids: torch.Tensor, name: str) -> None:
    if x.shape != ids.shape:
        raise ValueError(f"{name} must have the shape of input_ids {tuple(ids.shape)}, got {tuple(x.shape)}")


def _checks_ids(model: nn.Module, ids: torch.Tensor) -> bool:
    """Whether to check ids against their tables: not in a GPU training step, where it would cost a host sync."""
    return not model.training or ids.device.type == "cpu"


def _token_labels(labels: torch.Tensor, input_ids: torch.Tensor, limit: int, field: str, check: bool) -> torch.Tensor:
    """Per-token labels as cross-entropy takes them: int32 ids too (as input_ids and sequence labels), and float ones
    one line, not "expected target dtype to be Long or Byte, but got Int" from the loss."""
    _check_same_shape(labels, input_ids, "labels")
    if labels.dtype not in (torch.long, torch.int32):
        raise ValueError(f"labels must be integer ids (-100 where ignored), got a {labels.dtype} tensor")
    if check:
        _check_classes(labels, limit, field)
    return labels.long()


def _check_classes(labels: torch.Tensor, limit: int, field: str) -> None:
    """Ids outside the classes were torch's bare "Target 97 is out of bounds" from the loss (a device-side assert on
    a GPU), which named neither the labels nor what they may hold."""
    if torch.compiler.is_compiling():
        return
    bad = (labels != -100) & ((labels < 0) | (labels >= limit))
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {field}={limit}), or -100 where ignored, got {int(labels[bad][0])}")


def _rope_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Padding at position 0: no real token attends to it, and dynamic NTK (which grows the base with the largest
    position) then scales a right-padded row by its own length, as alone, not by the batch's longest row."""
    return position_ids if attention_mask is None else position_ids.masked_fill(attention_mask == 0, 0)


def _padding_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> (B, 1, 1, T) bool (True = attend), or None when nothing is padded (fast kernel)."""
    if attention_mask is None:
        return None
    _check_same_shape(attention_mask, input_ids, "attention_mask")
    check_mask_values(attention_mask)
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None
    # A row with no real token would softmax over nothing (NaN); let it attend everywhere instead.
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]
