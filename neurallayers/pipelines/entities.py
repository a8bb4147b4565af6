"""token-classification's entities from per-token label scores, as transformers' pipeline builds them: each token
alone ("none"), adjacent tokens of one tag joined ("simple"), or word pieces first agreeing on one label per word
("first", "average", "max") and then joined."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neurallayers.data.tokenizers import Tokenizer

AGGREGATIONS = ("none", "simple", "first", "average", "max")


def aggregation(strategy: Any) -> str:
    """transformers' aggregation_strategy, read as it reads it (any case; None: "none")."""
    if strategy is None:
        return "none"
    if not isinstance(strategy, str) or strategy.lower() not in AGGREGATIONS:
        raise ValueError(f"aggregation_strategy={strategy!r}: must be one of {', '.join(AGGREGATIONS)}")
    return strategy.lower()


def token_entries(tokenizer: Tokenizer, text: str, batch: dict[str, torch.Tensor], row: int,
                  probs: torch.Tensor) -> list[dict]:
    """One entry per real, non-special token of `batch` row `row` (probs: (T, num_labels)): its word (the vocabulary
    entry; for the unknown token, the text it stands for), label scores, index, character span, and whether it
    continues the previous token's word (transformers' is_subword rule)."""
    prefix = getattr(tokenizer.hf.model, "continuing_subword_prefix", None)
    unk = tokenizer.unk_id
    entries = []
    for j in range(probs.shape[0]):
        if not batch["attention_mask"][row, j] or batch["special_tokens_mask"][row, j]:
            continue
        token = int(batch["input_ids"][row, j])
        start, end = batch["offsets"][row, j].tolist()
        word, ref = tokenizer.id_to_token(token), text[start:end]
        if prefix:  # a word-aware tokenizer: a piece is longer ("##") than the text it covers
            subword = len(word) != len(ref)
        else:  # transformers' fallback: a piece that does not follow a space
            subword = start > 0 and " " not in text[start - 1:start + 1]
        if token == unk:  # "[UNK]" says nothing of what was found there
            word, subword = ref, False
        entries.append({"word": word, "scores": probs[j], "start": start, "end": end, "index": j,
                        "is_subword": subword})
    return entries


def aggregate(entries: list[dict], strategy: str, names: list[str], tokenizer: Tokenizer) -> list[dict]:
    """The entities of one text from token_entries: {entity, score, index, word, start, end} per token for "none",
    else {entity_group, score, word, start, end} per run of tokens (words, for first/average/max) of one tag."""
    if strategy in ("none", "simple"):
        entities = []
        for e in entries:
            score, label = e["scores"].max(-1)
            entities.append({"entity": names[int(label)], "score": float(score), "index": e["index"],
                             "word": e["word"], "start": e["start"], "end": e["end"]})
    else:
        entities = [_word_entity(group, strategy, names, tokenizer) for group in _words(entries)]
    return entities if strategy == "none" else _group(entities, tokenizer)


def _words(entries: list[dict]) -> list[list[dict]]:
    """Entries split into words: a word starts at every token that is not a subword."""
    words: list[list[dict]] = []
    for e in entries:
        if words and e["is_subword"]:
            words[-1].append(e)
        else:
            words.append([e])
    return words


def _word_entity(pieces: list[dict], strategy: str, names: list[str], tokenizer: Tokenizer) -> dict:
    """One label for a whole word: its first piece's, the best-scoring piece's (max), or the mean of its pieces'
    scores (average)."""
    if strategy == "first":
        scores = pieces[0]["scores"]
    elif strategy == "max":
        scores = max(pieces, key=lambda e: float(e["scores"].max()))["scores"]
    else:  # average
        scores = torch.stack([e["scores"] for e in pieces]).nanmean(dim=0)
    score, label = scores.max(-1)
    return {"entity": names[int(label)], "score": float(score), "word": _join(tokenizer, [e["word"] for e in pieces]),
            "start": pieces[0]["start"], "end": pieces[-1]["end"]}


def _tag(label: str) -> tuple[str, str]:
    """("B" or "I", the tag) of a BIO label; a label without a prefix continues ("I")."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _group(entities: list[dict], tokenizer: Tokenizer) -> list[dict]:
    """Adjacent entities of one tag joined into one, a B- label starting a new one."""
    groups: list[list[dict]] = []
    for e in entities:
        bi, tag = _tag(e["entity"])
        if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
            groups[-1].append(e)
        else:
            groups.append([e])
    return [{"entity_group": group[0]["entity"].split("-", 1)[-1],
             "score": float(np.nanmean([e["score"] for e in group])),
             "word": _join(tokenizer, [e["word"] for e in group]), "start": group[0]["start"],
             "end": group[-1]["end"]} for group in groups]


def _join(tokenizer: Tokenizer, tokens: list[str]) -> str:
    """Tokens as one string, through the tokenizer's decoder ("##" pieces joined), as transformers'
    convert_tokens_to_string does."""
    decoder = tokenizer.hf.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)
