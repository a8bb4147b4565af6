"""Generation lines: token ids, per-line settings and seeds checked before any work, and batches of lines that share
their settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from pathlib import Path

from torch import nn

from neurallayers.batch.inputs import BatchItem
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig, generate
from neurallayers.generation.config import valid_seed

ENCODE_CHUNK = 2048  # prompts tokenized at a time (see _encoded)


def line_seed(seed: int, rid: str | int) -> int:
    """The seed of a line without its own: from the run's seed and the line's id, so that every line draws its own
    random numbers (equal prompts give independent samples) and a resumed run gives what a straight one would."""
    digest = hashlib.sha256(f"{seed}\0{json.dumps(rid)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _check_prompts(items: list[BatchItem], tokenizer: Tokenizer, config: GenerationConfig, block_size: int, *,
                   source: Path) -> tuple[dict[int, list[int]], dict[int, GenerationConfig], dict[int, int]]:
    """Token ids, the effective GenerationConfig (seed aside) and the seed of every item, checked before anything
    is written: a line's own "seed", else line_seed(config.seed, id), else (an unseeded run) a fresh one."""
    prompts: dict[int, list[int]] = {}
    configs: dict[int, GenerationConfig] = {}
    seeds: dict[int, int] = {}
    # one config per distinct line settings, shared by the lines that have them: a config per line took half a minute
    # and hundreds of MB for 200k lines before the first was generated
    cached: dict[str, GenerationConfig] = {}
    for it, ids in zip(items, _encoded(tokenizer, items), strict=True):
        where = f"{source} line {it.line}"
        if len(ids) > block_size:
            raise ValueError(f"{where}: the prompt has {len(ids)} tokens but the model's context length is "
                             f"{block_size}; shorten it")
        # a line's seed is its own, not a setting: keyed by it, a file of seeded lines (as vLLM requests carry them)
        # made a config per line again, and _plan described each one as JSON (8 s for 50k lines, not 0.7)
        settings = {k: v for k, v in it.params.items() if k != "seed"}
        key = json.dumps(settings, sort_keys=True)
        own = it.params.get("seed")
        try:
            if key not in cached:
                cached[key] = config.replace(**settings)
            if own is not None and not valid_seed(own):
                config.replace(seed=own)  # raises, in GenerationConfig's words
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {_line_words(str(e), it.params)}") from None
        seeds[it.index] = (own if own is not None else line_seed(config.seed, it.id) if config.seed is not None
                           else secrets.randbits(62))
        prompts[it.index], configs[it.index] = ids, cached[key]
    return prompts, configs, seeds


def _encoded(tokenizer: Tokenizer, items: list[BatchItem]):
    """The items' token ids, ENCODE_CHUNK texts at a time: the tokenizer's objects for every text of a large file at
    once took several times the memory of the ids themselves (500 MB for a 6 MB file of 200k short lines)."""
    for start in range(0, len(items), ENCODE_CHUNK):
        yield from tokenizer.encode_batch([it.text for it in items[start:start + ENCODE_CHUNK]],
                                          add_special_tokens=True)


def _generate(model: nn.Module, tokenizer: Tokenizer, batch: list[BatchItem], prompts: dict[int, list[int]],
              config: GenerationConfig, seeds: dict[int, int], *, source: Path) -> list:
    """generate() for one batch; an error only decoding finds (no_repeat_ngram_size leaving a small vocabulary no
    token) names the batch's input lines, which a rerun would stop at again."""
    try:
        return generate(model, tokenizer, [prompts[it.index] for it in batch], config,
                        seeds=[seeds[it.index] for it in batch])
    except ValueError as e:
        lines = ", ".join(str(it.line) for it in sorted(batch, key=lambda it: it.line))
        # the batch's lines share their settings: a field every one of them sets is named as they wrote it
        own = set.intersection(*(set(it.params) for it in batch))
        raise ValueError(f"{source} line{'s' * (len(batch) > 1)} {lines}: {_line_words(str(e), own)}") from None


# GenerationConfig's field names in its messages: the field at fault, and the bounds other fields set
_CONFIG_FIELD = re.compile(r"\bGenerationConfig\.(\w+)|(?<![\w.])(max_new_tokens|num_beams)(?==)")


def _line_words(message: str, params) -> str:
    """A GenerationConfig error in the words of the input line: a field the line sets is its JSON key
    ("temperature=-1: must be >= 0", not "GenerationConfig.temperature=-1"); one the run's config sets (and a bound
    it sets: "[0, max_new_tokens=5]") is GenerationConfig's, which the CLI names by its flag."""
    def name(match: re.Match) -> str:
        field = match[1] or match[2]
        return field if field in params else f"GenerationConfig.{field}"

    return _CONFIG_FIELD.sub(name, message)


def _plan(todo: list[BatchItem], lengths: dict[int, int], configs: dict[int, GenerationConfig], *,
          batch_size: int) -> list[list[BatchItem]]:
    """Batches of items that share a config, shortest prompts first (less padding). generate() gives each prompt
    of a batch the tokens it gets alone (its own seed, its own room in the context), so a resumed run, whose
    batches differ, equals a straight one."""
    groups: dict[str, list[BatchItem]] = {}
    keys: dict[int, str] = {}  # lines with the same settings share one config object: describe each object once
    for it in todo:
        config = configs[it.index]
        if id(config) not in keys:
            keys[id(config)] = json.dumps(dataclasses.asdict(config), sort_keys=True)
        groups.setdefault(keys[id(config)], []).append(it)
    batches: list[list[BatchItem]] = []
    for group in groups.values():
        ordered = sorted(group, key=lambda it: lengths[it.index])
        batches += [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches
