"""The encoder tasks: feature-extraction, fill-mask, text-classification, token-classification."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from neurallayers.checks import is_int, is_integral
from neurallayers.data.token_ids import text_ids
from neurallayers.data.tokenizers import MASK_TOKENS, Tokenizer
from neurallayers.embeddings import _check_texts, _embed
from neurallayers.pipelines.base import Pipeline, _switch, log
from neurallayers.pipelines.entities import aggregate, aggregation, token_entries


def label_names(config: Any) -> list[str]:
    """Class names from `config.extra["id2label"]` (as read from a Hugging Face config), else LABEL_i."""
    names = config.extra.get("id2label") or {}
    return [str(names.get(str(i), names.get(i, f"LABEL_{i}"))) for i in range(config.num_labels)]


class FeatureExtractionPipeline(Pipeline):
    """One sentence embedding per text: a (C,) tensor for a string, (N, C) for a list. transformers' options:
    `tokenize_kwargs` (max_length, truncation=True, add_special_tokens) and `return_tensors` (False: nested lists)."""

    task = "feature-extraction"
    heads = ("none", "mlm", "sequence_classification", "token_classification")
    call_options = ("return_tensors",)

    def _call(self, inputs: Any, kwargs: dict[str, Any], given: dict[str, Any]) -> torch.Tensor | list:
        kwargs = dict(kwargs)
        as_tensor = _switch("return_tensors", kwargs.pop("return_tensors", None)) is not False
        out = super()._call(inputs, kwargs, given)
        out = out if isinstance(inputs, str) else torch.stack(out)
        return out if as_tensor else out.tolist()

    def _run(self, items: list, *, pooling: str | None = None, normalize: bool | None = None,
             tokenize_kwargs: dict | None = None) -> list[torch.Tensor]:
        limit, special = self._tokenize_options(tokenize_kwargs or {})
        # embed's own checks (max_length in [2, block_size], as nl.embed takes it), naming what the caller gave
        return list(_embed(self.model, self.tokenizer, items, pooling=pooling, normalize=normalize,
                           batch_size=self.batch_size, max_length=limit, truncation_side="right",
                           add_special_tokens=special, cut_special_tokens=False,
                           names=("inputs", "tokenize_kwargs max_length")))

    @staticmethod
    def _tokenize_options(options: Any) -> tuple[int | None, bool]:
        """(max_length, add_special_tokens) from transformers' tokenize_kwargs; a text longer than the model reads is
        always cut (truncation=False would index past its positions)."""
        if not isinstance(options, dict):
            raise ValueError(f"tokenize_kwargs={options!r}: must be a dict (max_length, truncation, "
                             "add_special_tokens)")
        unknown = set(options) - {"max_length", "truncation", "add_special_tokens"}
        if unknown:
            raise ValueError(f"tokenize_kwargs: unknown key {sorted(unknown)[0]!r}; keys: max_length, truncation, "
                             "add_special_tokens")
        _check_truncation(options.get("truncation"), "tokenize_kwargs ")
        special = options.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise ValueError(f"tokenize_kwargs add_special_tokens={special!r}: must be True or False")
        return options.get("max_length"), special


class FillMaskPipeline(Pipeline):
    """The `top_k` most likely tokens for each mask token in each text, as transformers' fill-mask pipeline gives them:
    a list of predictions for a text with one mask, a list of such lists (one per mask, in order) for several."""

    task = "fill-mask"
    heads = ("mlm",)

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, batch_size: int = 32,
                 mask_token: str | None = None) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        candidates = (mask_token,) if mask_token is not None else MASK_TOKENS
        found = [t for t in candidates if tokenizer.token_to_id(t) is not None]
        if not found:
            raise ValueError(f"fill-mask: the tokenizer has no mask token among {candidates}; pass mask_token=")
        self.mask_token = found[0]
        self.mask_id = tokenizer.token_to_id(self.mask_token)

    def _run(self, items: list, *, top_k: int = 5, targets: str | list[str] | None = None) -> list[list]:
        vocab = self.config.vocab_size
        # a numpy count too, as transformers takes it; not a bool (True reached torch.topk's TypeError)
        if not is_integral(top_k) or top_k < 1 or (targets is None and top_k > vocab):
            raise ValueError(f"top_k={top_k!r}: must be an int in [1, vocab_size={vocab}]")
        top_k = int(top_k)
        target_ids = self._target_ids(targets) if targets is not None else None
        if target_ids is not None:  # transformers caps top_k at the number of targets
            top_k = min(top_k, len(target_ids))
        texts = _check_texts(items, "inputs")
        for i, text in enumerate(texts):
            if self.mask_token not in text:
                raise ValueError(f"inputs[{i}] must contain the mask token {self.mask_token!r}")
        results = []
        for batch in self._batches(texts):
            logits = self._forward(batch)  # (B, T, vocab)
            for row, ids in enumerate(batch["input_ids"]):
                real_mask = batch["attention_mask"][row].bool()
                where = ((ids == self.mask_id) & real_mask).nonzero()[:, 0]  # padding may hold its id (no pad: 0)
                if len(where) != texts[len(results)].count(self.mask_token):
                    raise ValueError(f"inputs[{len(results)}]: the mask token was cut off, the text is longer than "
                                     f"{self._max_length()} tokens")
                probs = logits[row, where].softmax(-1)  # (masks, vocab)
                if target_ids is not None:
                    target_ids = target_ids.to(probs.device)
                    probs = probs[:, target_ids]
                scores, tokens = probs.topk(top_k)
                if target_ids is not None:
                    tokens = target_ids[tokens]
                real = ids[real_mask]
                per_mask = [self._predictions(real, int(pos), s.tolist(), t.tolist(), single=len(where) == 1)
                            for pos, s, t in zip(where, scores, tokens, strict=True)]
                results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return results

    def _predictions(self, ids: torch.Tensor, pos: int, scores: list[float], tokens: list[int], *,
                     single: bool) -> list[dict]:
        """One mask's predictions. The sequence drops the special tokens for a single mask, and keeps them for
        several (so the other masks stay visible), as transformers does; token_str always keeps them (a predicted
        [UNK] or [SEP] read as "")."""
        preds = []
        for score, token in zip(scores, tokens, strict=True):
            filled = ids.clone()
            filled[pos] = token
            if self.tokenizer.pad_id is not None:
                filled = filled[filled != self.tokenizer.pad_id]
            # an id past the tokenizer's vocabulary (a model's padded rows) reads as "", as transformers decodes it
            vocab = self.tokenizer.vocab_size
            preds.append({"score": score, "token": token,
                          "token_str": self.tokenizer.decode(text_ids([token], vocab), skip_special_tokens=False),
                          "sequence": self.tokenizer.decode(text_ids(filled.tolist(), vocab),
                                                            skip_special_tokens=single)})
        return preds

    def _target_ids(self, targets: str | list[str]) -> torch.Tensor:
        """Vocabulary ids of `targets`, as transformers reads them: a token of the vocabulary is its id, any other
        string its first token's; duplicates count once."""
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list | tuple) or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"targets={targets!r}: must be a string or a list of strings")
        ids = set()
        for target in targets:
            token_id = self.tokenizer.token_to_id(target)
            if token_id is None:
                first = self.tokenizer.encode(target)[:1]
                if not first:
                    log.warning("fill-mask: target %r encodes to no token; left out", target)
                    continue  # as transformers does
                token_id = first[0]
                log.warning("fill-mask: target %r is not a token of the vocabulary; scoring its first token %r "
                            "instead", target, self.tokenizer.id_to_token(token_id))
            ids.add(token_id)
        if not ids:
            raise ValueError(f"targets={targets!r}: none of them is a token of the vocabulary or encodes to one")
        return torch.tensor(sorted(ids))


class TextClassificationPipeline(Pipeline):
    """{label, score} per text (softmax over the classes; a sigmoid per label for a single-output or a multi-label
    model; a regression model's raw outputs, as transformers gives them; transformers' function_to_apply, "sigmoid",
    "softmax" or "none", chooses). An input may be a dict {"text": ...,
    "text_pair": ...} for sentence-pair models. Shaped as transformers'
    pipeline returns them: a string gives [{label, score}] (a list of one), unless top_k is passed (then its top_k
    as a list); a list gives one {label, score} per text (a list of top_k each with top_k); a dict gives one dict."""

    task = "text-classification"
    heads = ("sequence_classification",)

    def _call(self, inputs: Any, kwargs: dict[str, Any], given: dict[str, Any]) -> Any:
        # as transformers: a top_k, given to pipeline() or the call, ranks; a string's result is put in a list unless
        # the call itself gives top_k (so pipeline(..., top_k=None)("text") is [[...]] there too)
        out = super()._call(inputs, {**kwargs, "_legacy": "top_k" not in kwargs}, given)
        return [out] if isinstance(inputs, str) and "top_k" not in given else out

    def _run(self, items: list, *, top_k: int | None = 1, truncation: bool | None = None,
             function_to_apply: str | None = None, _legacy: bool = True) -> list:
        if top_k is not None and (not is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k={top_k!r}: must be None (all labels) or an int >= 1 (more than num_labels="
                             f"{self.config.num_labels} gives them all)")
        _check_truncation(truncation)
        function = _score_function(function_to_apply, self.config.extra.get("problem_type"), self.config.num_labels)
        texts, pairs = _split_pairs(items)
        names = label_names(self.config)
        results = []
        for batch in self._batches(texts, pairs, empty_ok=True):
            _refuse_tokenless(batch, items, len(results))
            logits = self._forward(batch)  # (B, num_labels)
            probs = SCORE_FUNCTIONS[function](logits)
            for row in probs:
                ranked = sorted(({"label": names[i], "score": float(p)} for i, p in enumerate(row)),
                                key=lambda r: -r["score"])
                results.append(ranked[0] if top_k == 1 and _legacy else ranked[:top_k])
        return results


class TokenClassificationPipeline(Pipeline):
    """Per token: {entity, score, index, word, start, end}, special tokens and `ignore_labels` left out; with
    transformers' aggregation_strategy ("simple", "first", "average", "max") per entity: {entity_group, score, word,
    start, end}."""

    task = "token-classification"
    heads = ("token_classification",)

    def _run(self, items: list, *, ignore_labels: tuple[str, ...] | None = ("O",),
             aggregation_strategy: str | None = None) -> list[list[dict]]:
        ignore_labels = _label_set(ignore_labels)
        strategy = aggregation(aggregation_strategy)
        texts = _check_texts(items, "inputs", empty_ok=True)  # a blank row has no entities, as in transformers
        names = label_names(self.config)
        results = []
        for batch in self._batches(texts, return_offsets=True, empty_ok=True):
            # a batch of texts that encode to no tokens ("" without [CLS] / [SEP]) has no token to classify
            probs = self._forward(batch).softmax(-1) if batch["input_ids"].shape[1] else \
                torch.empty(len(batch["input_ids"]), 0, len(names))  # (B, T, num_labels)
            for row in range(len(probs)):
                entries = token_entries(self.tokenizer, texts[len(results)], batch, row, probs[row])
                # ignored labels are dropped after grouping, as in transformers: an "O" token still ends an entity
                entities = aggregate(entries, strategy, names, self.tokenizer)
                results.append([e for e in entities if e.get("entity", e.get("entity_group")) not in ignore_labels])
        return results


def _refuse_tokenless(batch: dict[str, torch.Tensor], items: list, first: int) -> None:
    """A text the tokenizer encodes to no tokens ("" where it adds no [CLS] / [SEP]) has nothing to classify: alone it
    failed inside the model, and in a batch its all-padding row got a label. `first`: the batch's first input."""
    empty = (batch["attention_mask"].sum(dim=1) == 0).nonzero()
    if len(empty):
        i = first + int(empty[0, 0])
        raise ValueError(f"inputs[{i}] is {items[i]!r}, which this tokenizer encodes to no tokens (it adds no special "
                         "tokens): give some text")


def _label_set(ignore_labels: Any) -> set[str]:
    """token-classification's ignore_labels: None is transformers' default ("O"), and a string one label (`entity in
    "B-PER"` matched "B" and "PER" too); None was "TypeError: argument of type 'NoneType' is not iterable"."""
    if ignore_labels is None:
        return {"O"}
    if isinstance(ignore_labels, str):
        return {ignore_labels}
    # any collection of names, as transformers tests `entity in ignore_labels` (a frozenset, a dict's keys)
    if not isinstance(ignore_labels, Collection) or not all(isinstance(x, str) for x in ignore_labels):
        raise ValueError(f"ignore_labels={ignore_labels!r}: must be a list of label names (None: ['O'])")
    return set(ignore_labels)


# text-classification's scores from (B, num_labels) logits, by transformers' function_to_apply names
SCORE_FUNCTIONS = {"sigmoid": torch.sigmoid, "softmax": lambda logits: logits.softmax(-1), "none": lambda x: x}


def _score_function(function_to_apply: Any, problem_type: str | None, num_labels: int) -> str:
    """The SCORE_FUNCTIONS key for a call: function_to_apply as transformers reads it (any case), else by default
    as there: a regression model's raw outputs (an STS-B similarity, not a probability), a sigmoid per label for a
    single-output or multi-label model, else a softmax over the classes. "default", which transformers documents (its
    enum lacks it), is the default."""
    name = "default" if function_to_apply is None else function_to_apply
    if not isinstance(name, str) or name.lower() not in (*SCORE_FUNCTIONS, "default"):
        raise ValueError(f"function_to_apply={function_to_apply!r}: must be one of {', '.join(SCORE_FUNCTIONS)} "
                         "(or default)")
    if name.lower() != "default":
        return name.lower()
    if problem_type == "regression":
        return "none"
    return "sigmoid" if num_labels == 1 or problem_type == "multi_label_classification" else "softmax"


def _split_pairs(items: list) -> tuple[list[str], list[str] | None]:
    """Texts (and second segments) to classify; a blank one is labelled from its special tokens, as transformers
    labels it (a blank row failed the whole call)."""
    if not any(isinstance(x, dict) for x in items):
        return _check_texts(items, "inputs", empty_ok=True), None
    for i, x in enumerate(items):
        if not isinstance(x, dict) or set(x) != {"text", "text_pair"}:
            raise ValueError(f"inputs[{i}]: give all inputs as strings or all as {{'text': ..., 'text_pair': ...}}")
    return (_check_texts([x["text"] for x in items], empty_ok=True),
            _check_texts([x["text_pair"] for x in items], "text_pair", empty_ok=True))


def _check_truncation(truncation: Any, where: str = "") -> None:
    """transformers' truncation switch: True (or unset) is what runs here, a text longer than the model reads being
    always cut; False would index past the model's positions."""
    if truncation not in (None, True) or (truncation is not None and not isinstance(truncation, bool)):
        raise ValueError(f"{where}truncation={truncation!r}: only True; a text longer than the model reads is "
                         "always cut to it")
