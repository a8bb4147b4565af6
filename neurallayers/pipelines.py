"""`pipeline(task, model)`: text in, task results out, in the shape `transformers.pipeline` returns.

    fill = pipeline("fill-mask", model="runs/my-bert")          # a run directory or a Hugging Face folder
    fill("Paris is the [MASK] of France.")                       # [{"score", "token", "token_str", "sequence"}, ...]
    embed = pipeline("feature-extraction", model=load_minilm())  # or a (model, tokenizer) pair

A pipeline called with one string returns that string's result; called with a list, a list of results.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurallayers.checks import is_int
from neurallayers.data.tokenizers import MASK_TOKENS, Tokenizer
from neurallayers.embeddings import _check_texts, check_tokenizer, embed, input_limit, tokenize_batch
from neurallayers.nn.modes import eval_mode

log = logging.getLogger("neurallayers.pipelines")


class Pipeline(ABC):
    """Holds a model (each call in eval mode, its own mode after) and its tokenizer; subclasses implement `_run`."""

    task = ""
    heads: tuple[str, ...] = ()  # the encoder heads this task can use; empty for decoder tasks

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, batch_size: int = 32) -> None:
        cfg = getattr(model, "config", None)
        if cfg is None:
            raise ValueError(f"{self.task}: model must be a NeuralLayers model with a .config, "
                             f"got {type(model).__name__}")
        if self.heads and (cfg.causal or cfg.head not in self.heads):
            have = "a causal decoder" if cfg.causal else f"an encoder with head={cfg.head!r}"
            raise ValueError(f"{self.task} needs an encoder with config.head in {self.heads}, got {have}")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
        check_tokenizer(tokenizer)
        # the caller's model keeps its mode: each call runs in eval mode (as embed and generate do), so a pipeline made
        # in the middle of training does not leave its dropout off
        self.model, self.tokenizer, self.config, self.batch_size = model, tokenizer, cfg, batch_size
        self.device = next(model.parameters()).device

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> Any:
        single = isinstance(inputs, str | dict)
        items = [inputs] if single else inputs
        if not isinstance(items, list | tuple):
            raise ValueError(f"{self.task}: inputs must be a string or a list of strings, "
                             f"got {type(inputs).__name__}")
        # batch_size per call, as transformers' pipelines take it (results do not depend on it); a copy runs with it, so
        # the pipeline keeps its own, even for a call from another thread
        runner = self
        if "batch_size" in kwargs:
            batch_size = kwargs.pop("batch_size")
            if not is_int(batch_size) or batch_size < 1:
                raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
            runner = copy.copy(self)
            runner.batch_size = batch_size
        check_options(self.task, kwargs, self._run)
        results = runner._run(list(items), **kwargs)
        return results[0] if single else results

    @abstractmethod
    def _run(self, items: list, **kwargs: Any) -> list:
        """One result per input item."""

    def _max_length(self) -> int:
        return input_limit(self.tokenizer, self.config.block_size)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the head model for one tokenized batch."""
        kw = {"attention_mask": batch["attention_mask"].to(self.device)}
        if self.config.type_vocab_size > 0:
            kw["token_type_ids"] = batch["token_type_ids"].to(self.device)
        with torch.inference_mode(), eval_mode(self.model):
            return self.model(batch["input_ids"].to(self.device), **kw).logits.float()

    def _batches(self, texts: list[str], pairs: list[str] | None = None, **kw: Any):
        for s in range(0, len(texts), self.batch_size):
            chunk_pairs = pairs[s:s + self.batch_size] if pairs is not None else None
            yield tokenize_batch(self.tokenizer, texts[s:s + self.batch_size], text_pairs=chunk_pairs,
                                 max_length=self._max_length(), **kw)


def label_names(config: Any) -> list[str]:
    """Class names from `config.extra["id2label"]` (as read from a Hugging Face config), else LABEL_i."""
    names = config.extra.get("id2label") or {}
    return [str(names.get(str(i), names.get(i, f"LABEL_{i}"))) for i in range(config.num_labels)]


class FeatureExtractionPipeline(Pipeline):
    """One sentence embedding per text: a (C,) tensor for a string, (N, C) for a list. transformers' options:
    `tokenize_kwargs` (max_length, truncation=True, add_special_tokens) and `return_tensors` (False: nested lists)."""

    task = "feature-extraction"
    heads = ("none", "mlm", "sequence_classification", "token_classification")

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> torch.Tensor | list:
        as_tensor = _switch("return_tensors", kwargs.pop("return_tensors", None)) is not False
        out = super().__call__(inputs, **kwargs)
        out = out if isinstance(inputs, str) else torch.stack(out)
        return out if as_tensor else out.tolist()

    def _run(self, items: list, *, pooling: str | None = None, normalize: bool | None = None,
             tokenize_kwargs: dict | None = None) -> list[torch.Tensor]:
        limit, special = self._tokenize_options(tokenize_kwargs or {})
        return list(embed(self.model, self.tokenizer, items, pooling=pooling, normalize=normalize,
                          batch_size=self.batch_size, max_length=limit, add_special_tokens=special))

    def _tokenize_options(self, options: Any) -> tuple[int, bool]:
        """(max_length, add_special_tokens) from transformers' tokenize_kwargs; a text longer than the model reads is
        always cut (truncation=False would index past its positions)."""
        if not isinstance(options, dict):
            raise ValueError(f"tokenize_kwargs={options!r}: must be a dict (max_length, truncation, "
                             "add_special_tokens)")
        unknown = set(options) - {"max_length", "truncation", "add_special_tokens"}
        if unknown:
            raise ValueError(f"tokenize_kwargs: unknown key {sorted(unknown)[0]!r}; keys: max_length, truncation, "
                             "add_special_tokens")
        limit = self._max_length()
        max_length = options.get("max_length", limit)
        if not is_int(max_length) or not 1 <= max_length <= limit:
            raise ValueError(f"tokenize_kwargs max_length={max_length!r}: must be an int in [1, {limit}] (the "
                             "tokens this model reads)")
        if options.get("truncation", True) is not True:
            raise ValueError(f"tokenize_kwargs truncation={options['truncation']!r}: only True; a text longer than "
                             "max_length is always cut to it")
        special = options.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise ValueError(f"tokenize_kwargs add_special_tokens={special!r}: must be True or False")
        return max_length, special


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
        if not isinstance(top_k, int) or top_k < 1 or (targets is None and top_k > vocab):
            raise ValueError(f"top_k={top_k!r}: must be an int in [1, vocab_size={vocab}]")
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
            preds.append({"score": score, "token": token,
                          "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
                          "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=single)})
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
    model; a regression model's raw outputs, as transformers gives them). An input may be a dict {"text": ...,
    "text_pair": ...} for sentence-pair models. Shaped as transformers'
    pipeline returns them: a string gives [{label, score}] (a list of one), unless top_k is passed (then its top_k
    as a list); a list gives one {label, score} per text (a list of top_k each with top_k); a dict gives one dict."""

    task = "text-classification"
    heads = ("sequence_classification",)

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        legacy = "top_k" not in kwargs
        out = super().__call__(inputs, _legacy=legacy, **kwargs)
        return [out] if isinstance(inputs, str) and legacy else out

    def _run(self, items: list, *, top_k: int | None = 1, _legacy: bool = True) -> list:
        n = self.config.num_labels
        if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= n):
            raise ValueError(f"top_k={top_k!r}: must be None (all labels) or an int in [1, num_labels={n}]")
        texts, pairs = _split_pairs(items)
        names = label_names(self.config)
        results = []
        for batch in self._batches(texts, pairs):
            logits = self._forward(batch)  # (B, num_labels)
            probs = _scores(logits, self.config.extra.get("problem_type"))
            for row in probs:
                ranked = sorted(({"label": names[i], "score": float(p)} for i, p in enumerate(row)),
                                key=lambda r: -r["score"])
                results.append(ranked[0] if top_k == 1 and _legacy else ranked[:top_k])
        return results


class TokenClassificationPipeline(Pipeline):
    """Per token: {entity, score, index, word, start, end}; special tokens and `ignore_labels` left out."""

    task = "token-classification"
    heads = ("token_classification",)

    def _run(self, items: list, *, ignore_labels: tuple[str, ...] | None = ("O",)) -> list[list[dict]]:
        ignore_labels = _label_set(ignore_labels)
        texts = _check_texts(items, "inputs")
        names = label_names(self.config)
        results = []
        for batch in self._batches(texts, return_offsets=True):
            probs = self._forward(batch).softmax(-1)  # (B, T, num_labels)
            for row in range(len(probs)):
                entities = []
                for j in range(probs.shape[1]):
                    if not batch["attention_mask"][row, j] or batch["special_tokens_mask"][row, j]:
                        continue
                    score, label = probs[row, j].max(-1)
                    entity = names[int(label)]
                    if entity in ignore_labels:
                        continue
                    start, end = batch["offsets"][row, j].tolist()
                    entities.append({"entity": entity, "score": float(score), "index": j,
                                     "word": self.tokenizer.id_to_token(int(batch["input_ids"][row, j])),
                                     "start": start, "end": end})
                results.append(entities)
        return results


class TextGenerationPipeline(Pipeline):
    """[{"generated_text": prompt + continuation}] per prompt; keyword arguments are GenerationConfig fields, plus
    transformers' `return_full_text` (False: the continuation alone) and `do_sample` (False: greedy). A pipeline made
    from a model folder samples as its generation_config.json recommends for the knobs left unset (`sampling_defaults`;
    transformers' pipeline and the CLI do too).

    A chat (a list of {"role", "content"} messages), or a list of chats, is rendered with the tokenizer's chat
    template (else `role: content` lines, the reply ending at the next `user:` line, as `neurallayers chat`), as
    transformers' pipeline takes it: "generated_text" is then the messages with the assistant's reply appended, or
    the reply alone with return_full_text=False. A chat that ends with the assistant's message is continued, as
    transformers' pipeline does (`continue_final_message`; None: whether the last message is the assistant's): the
    prompt ends with that message's content and the full text extends it instead of adding a reply.

    transformers' length options too: `max_length` (prompt and new tokens together, per prompt; max_new_tokens wins
    over it), `prefix` (a text put before each prompt to generate from, left out of the result) and
    `handle_long_generation="hole"` (a prompt too long to leave room for the new tokens loses its oldest ones).
    `return_tensors=True` gives [{"generated_token_ids": prompt ids + new ids}] instead of text (the eos that ended a
    sequence included, as transformers' ids; a stop string's tokens are not), `clean_up_tokenization_spaces` decodes
    the new text with or without transformers' space clean-up (ignored for a BPE tokenizer, as transformers 5 does)."""

    task = "text-generation"

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, batch_size: int = 32) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        if not self.config.causal:
            raise ValueError("text-generation needs a causal decoder model (config.causal=True), got an encoder")
        self.sampling_defaults: dict = {}  # api.generation_defaults of the folder; pipeline() sets it
        self.do_sample_defaults: dict = {}  # the same with sampling=True: for do_sample=True on a do_sample-false file

    def _model_defaults(self, gen_kwargs: dict, do_sample: bool | None) -> dict:
        """The folder's settings for the knobs `gen_kwargs` leaves unset, as the CLI takes them: none for beam search
        (deterministic), only top_k for contrastive search; its `do_sample: false` (temperature 0) yields to
        do_sample=True, which samples at the file's temperature and top_p, as transformers does."""
        from neurallayers.interop.hf import defaults_for_method

        beams, alpha = gen_kwargs.get("num_beams", 1), gen_kwargs.get("penalty_alpha", 0.0)
        defaults = self.do_sample_defaults if do_sample is True else self.sampling_defaults
        usable = defaults_for_method(defaults, num_beams=beams if isinstance(beams, int) else 1,
                                     penalty_alpha=alpha if isinstance(alpha, int | float) else 0.0)
        chosen = {k: v for k, v in usable.items() if k not in gen_kwargs}
        if do_sample is True and chosen.get("temperature") == 0:
            del chosen["temperature"]
        return chosen

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        if _is_chat(inputs):  # one conversation: a list of messages, not a list of inputs
            return super().__call__([inputs], **kwargs)[0]
        return super().__call__(inputs, **kwargs)

    def _run(self, items: list, *, return_full_text: bool | None = None, continue_final_message: bool | None = None,
             prefix: str = "", handle_long_generation: str | None = None, max_length: int | None = None,
             return_tensors: bool | None = None, return_text: bool | None = None,
             clean_up_tokenization_spaces: bool | None = None, **gen_kwargs: Any) -> list[list[dict]]:
        from neurallayers.generation.config import GenerationConfig

        chats = [item for item in items if _is_chat(item)]
        if chats and len(chats) < len(items):
            raise ValueError("inputs: give prompts (strings) or chats (lists of role/content messages), not both")
        continue_final_message = _switch("continue_final_message", continue_final_message)
        # per chat, as transformers decides it: a chat ending with the assistant's message is a prefill to continue
        continued = [m[-1]["role"] == "assistant" if continue_final_message is None else continue_final_message
                     for m in chats]
        _check_generation_options(gen_kwargs)
        if not isinstance(prefix, str):
            raise ValueError(f"prefix={prefix!r}: must be a string (prepended to each text prompt, not returned)")
        if handle_long_generation not in (None, "hole"):
            raise ValueError(f"handle_long_generation={handle_long_generation!r}: must be None or 'hole' (drop the "
                             "prompt's oldest tokens to leave room for the new ones)")
        if max_length is not None and (not is_int(max_length) or max_length < 1):
            raise ValueError(f"max_length={max_length!r}: must be an int >= 1 (prompt and new tokens together)")
        # a blank prompt is one, as in transformers' pipeline and `neurallayers generate` ("\n" starts a fresh line)
        texts = None if chats else _check_texts(items, "inputs", empty_ok=True)
        # token ids, as transformers' pipeline encodes them (a Llama tokenizer's bos first, as generate() adds it): the
        # prefix is generated from, never returned
        prompts = (self._chat_prompts(chats, continued) if chats
                   else [self._start(i, prefix + t) for i, t in enumerate(texts)])
        do_sample = _switch("do_sample", gen_kwargs.pop("do_sample", None))
        tensors = _return_tensors(return_full_text, return_tensors, return_text)
        return_full_text = _switch("return_full_text", return_full_text) is not False  # None: the default, as there
        clean_up = _switch("clean_up_tokenization_spaces", clean_up_tokenization_spaces)
        if do_sample is False:  # transformers' switch for greedy decoding
            gen_kwargs["temperature"] = 0.0
        elif do_sample is True and gen_kwargs.get("temperature", 1.0) == 0:  # transformers refuses it too
            raise ValueError("do_sample=True with temperature=0: sampling needs a temperature > 0 (or do_sample=False)")
        gen_config = GenerationConfig.from_dict({**self._model_defaults(gen_kwargs, do_sample), **gen_kwargs})
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        if chats and not templated:
            from neurallayers.data.chat import DEFAULT_STOP

            gen_config = gen_config.replace(stop=[*gen_config.stop, DEFAULT_STOP])
        extra = len(self.tokenizer.encode(prefix, add_special_tokens=False)) if prefix and not chats else 0
        if max_length is not None and "max_new_tokens" in gen_kwargs:  # transformers' generate warns the same
            log.warning("text-generation: both max_new_tokens and max_length given; max_new_tokens wins")
        budgets = [self._budget(i, len(ids), gen_config, max_length if "max_new_tokens" not in gen_kwargs else None,
                                extra) for i, ids in enumerate(prompts)]
        if handle_long_generation == "hole":
            prompts = [self._hole(i, ids, new) for i, (ids, new) in enumerate(zip(prompts, budgets, strict=True))]
        n = gen_config.num_return_sequences
        outs = self._generate(prompts, gen_config, budgets, clean_up)  # prompt-major, n per prompt
        if tensors:  # transformers' generated_token_ids: the prompt's ids (prefix, bos) and the new ones, eos included
            end = self._end_token(gen_config)
            return [[{"generated_token_ids": prompts[i] + g.token_ids + _ended_by(g, end)}
                     for g in outs[i * n:(i + 1) * n]] for i in range(len(prompts))]
        if chats:  # the default template's "assistant:" cue leaves a new reply a leading blank (`chat` drops it too)
            replies = [g.text if templated or continued[k // n] else g.text.lstrip() for k, g in enumerate(outs)]
            return [[{"generated_text": _full_chat(chat, r, continued[i]) if return_full_text else r}
                     for r in replies[i * n:(i + 1) * n]] for i, chat in enumerate(chats)]
        return [[{"generated_text": (text + g.text) if return_full_text else g.text} for g in outs[i * n:(i + 1) * n]]
                for i, text in enumerate(texts)]

    def _start(self, i: int, text: str) -> list[int]:
        """The ids a text prompt starts from: its tokens, or for one that has none (""), the bos token alone, from
        which transformers' pipeline generates unconditionally (GPT-2's <|endoftext|>)."""
        ids = self.tokenizer.encode(text, add_special_tokens=True)
        if ids:
            return ids
        if self.tokenizer.bos_id is None:
            raise ValueError(f"inputs[{i}] is empty, and the tokenizer has no bos token to start from: give some text")
        return [self.tokenizer.bos_id]

    def _budget(self, i: int, prompt_len: int, config: Any, max_length: int | None, prefix_len: int) -> int:
        """New tokens for prompt i: max_new_tokens, or what transformers' max_length (a total of prompt and new
        tokens, the prefix not counted) leaves after the prompt."""
        if max_length is None:
            return config.max_new_tokens
        new = max_length + prefix_len - prompt_len
        if new < 1:
            raise ValueError(f"max_length={max_length}: inputs[{i}] already has {prompt_len - prefix_len} tokens, "
                             "leaving no room for new ones; raise it or give max_new_tokens")
        return new

    def _hole(self, i: int, ids: list[int], new_tokens: int) -> list[int]:
        """transformers' handle_long_generation="hole": a prompt that leaves no room for new_tokens in the context
        loses its oldest tokens."""
        limit = input_limit(self.tokenizer, self.config.block_size)
        if len(ids) + new_tokens <= limit:
            return ids
        keep = limit - new_tokens
        if keep <= 0:
            raise ValueError(f"handle_long_generation='hole': {new_tokens} new tokens fill the whole context of "
                             f"{limit} tokens, leaving none of inputs[{i}]; ask for fewer")
        return ids[-keep:]

    def _generate(self, prompts: list[list[int]], config: Any, budgets: list[int], clean_up: bool | None) -> list:
        """generate() on each group of prompts with the same budget of new tokens, results in input order (each
        prompt generates as it would alone, so grouping changes no token). clean_up: transformers'
        clean_up_tokenization_spaces for the new text (None: the tokenizer's own setting)."""
        from neurallayers.generation.generate import generate

        tokenizer = self.tokenizer
        if clean_up is not None and clean_up != tokenizer.clean_up_tokenization_spaces:
            tokenizer = copy.copy(tokenizer)  # decodes (and finds stop strings in) the text as asked
            tokenizer.clean_up_tokenization_spaces = clean_up
        if clean_up and not tokenizer.cleans_up_spaces:  # transformers 5 ignores it too, with this warning
            log.warning("text-generation: clean_up_tokenization_spaces=True is ignored for a BPE tokenizer (it would "
                        "strip the spaces before punctuation that BPE text really has)")

        n, outs = config.num_return_sequences, [None] * (len(prompts) * config.num_return_sequences)
        for budget in dict.fromkeys(budgets):
            idx = [i for i, b in enumerate(budgets) if b == budget]
            gens = generate(self.model, tokenizer, [prompts[i] for i in idx],
                            config.replace(max_new_tokens=budget))
            for j, i in enumerate(idx):
                outs[i * n:(i + 1) * n] = gens[j * n:(j + 1) * n]
        return outs

    def _end_token(self, config: Any) -> int | None:
        """The one token that can end a generation (eos, or a lone stop_token_id), which transformers keeps at the end
        of its ids; None where several can (which one did is not recorded) or where stop strings end it (their tokens
        are trimmed, as from the text)."""
        ends = {*self.tokenizer.eos_ids, *config.stop_token_ids}
        return next(iter(ends)) if len(ends) == 1 and not config.stop else None

    def _chat_prompts(self, chats: list[list[dict]], continued: list[bool]) -> list[list[int]]:
        """Token ids of each rendered chat (ending with the reply's cue, or with its final message's content where it
        is `continued`): encoded without the tokenizer's own bos, which a template writes itself (as `neurallayers
        chat` and the server encode them; a Llama 3 prompt got two)."""
        from neurallayers.data.chat import render_chat

        return [self.tokenizer.encode(render_chat(self.tokenizer, chat, add_generation_prompt=not cont,
                                                  continue_final_message=cont))
                for chat, cont in zip(chats, continued, strict=True)]


def _ended_by(gen: Any, end: int | None) -> list[int]:
    """[end] where `gen` stopped on its end token (one more token chosen than kept), else []."""
    return [end] if end is not None and gen.finish_reason == "stop" and gen.completion_tokens > len(gen.token_ids) \
        else []


def _return_tensors(return_full_text: Any, return_tensors: Any, return_text: Any) -> bool:
    """Whether results are token ids (transformers' return_tensors=True) rather than text; the three switches are
    mutually exclusive there too (return_text=True is the default, text)."""
    given = [name for name, value in (("return_full_text", return_full_text), ("return_tensors", return_tensors),
                                      ("return_text", return_text)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"{given[0]} and {given[1]}: give one of return_full_text, return_tensors and return_text")
    if _switch("return_text", return_text) is False:  # transformers returns the text anyway; nothing else to give
        raise ValueError("return_text=False: give return_tensors=True for token ids instead of text")
    return _switch("return_tensors", return_tensors) is True


def _full_chat(chat: list[dict], reply: str, continued: bool) -> list[dict]:
    """transformers' full text of a chat: the reply as a new assistant message, or, continuing the final message,
    appended to its content (a list of parts: to its last text part, the one the prompt ends with)."""
    if not continued:
        return [*chat, {"role": "assistant", "content": reply}]
    from neurallayers.data.chat import extend_content

    content, _ = extend_content(chat[-1]["content"], reply)  # render_chat continued that text: it has one
    return [*chat[:-1], {"role": chat[-1]["role"], "content": content}]


def _is_chat(item: Any) -> bool:
    """A conversation: a non-empty list of message dicts with a role (transformers' pipeline's test too)."""
    return isinstance(item, list | tuple) and bool(item) and all(isinstance(m, dict) and "role" in m for m in item)


def _check_generation_options(gen_kwargs: dict) -> None:
    """An option that is neither a GenerationConfig field nor one of the pipeline's own, named with the valid ones:
    `return_fulltext=False` was "GenerationConfig has no field 'return_fulltext'", with no hint of return_full_text."""
    from neurallayers.generation.config import GenerationConfig

    fields = [f.name for f in dataclasses.fields(GenerationConfig)]
    own = ["return_full_text", "return_tensors", "return_text", "clean_up_tokenization_spaces", "do_sample",
           "continue_final_message", "prefix", "handle_long_generation", "max_length"]
    if "stop_sequence" in gen_kwargs:  # transformers' name; its stop string is kept in the text, ours is not
        raise ValueError("stop_sequence: give stop=[...] instead (generation ends before the stop string, which is "
                         "not included, as in `neurallayers generate` and the server)")
    for name in gen_kwargs:
        if name not in fields and name not in own:
            hint = difflib.get_close_matches(str(name), own + fields, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"text-generation: unknown option {name!r}{did}; options: {', '.join(own)} and "
                             f"GenerationConfig's fields ({', '.join(fields)})")


def _switch(name: str, value: Any) -> bool | None:
    """A True/False option (None: unset). do_sample=0 sampled and return_full_text=None dropped the prompt, where
    transformers decodes greedily and keeps it: anything but a bool was read by identity or truthiness."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be True or False")
    return value


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


def _scores(logits: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """transformers' text-classification scores: (B, num_labels) logits -> the same shape."""
    if problem_type == "regression":  # a predicted value (an STS-B similarity, say), not a probability
        return logits
    if logits.shape[-1] == 1 or problem_type == "multi_label_classification":
        return logits.sigmoid()
    return logits.softmax(-1)


def check_options(task: str, options: dict, function: Any) -> None:
    """Refuses a keyword `function` does not take (a transformers option not built here, a typo) in one line naming
    it and the valid ones, instead of a TypeError from the call. A function that takes **kwargs checks its own."""
    params = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    valid = [n for n in names if not n.startswith("_")]  # a private one is the pipeline's own
    for name in options:
        if name not in names:
            hint = difflib.get_close_matches(str(name), valid, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"{task}: unknown option {name!r}{did}; options: {', '.join(valid) or 'none'}")


def _split_pairs(items: list) -> tuple[list[str], list[str] | None]:
    if not any(isinstance(x, dict) for x in items):
        return _check_texts(items, "inputs"), None
    for i, x in enumerate(items):
        if not isinstance(x, dict) or set(x) != {"text", "text_pair"}:
            raise ValueError(f"inputs[{i}]: give all inputs as strings or all as {{'text': ..., 'text_pair': ...}}")
    return _check_texts([x["text"] for x in items]), _check_texts([x["text_pair"] for x in items], "text_pair")


PIPELINES: dict[str, type[Pipeline]] = {
    "feature-extraction": FeatureExtractionPipeline,
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "text-generation": TextGenerationPipeline,
}


def pipeline(task: str, model: str | Path | tuple[nn.Module, Tokenizer], **kwargs: Any) -> Pipeline:
    """A ready-to-call pipeline for `task`.

    Args:
        task: one of "feature-extraction", "fill-mask", "text-classification", "token-classification",
            "text-generation".
        model: a run directory or Hugging Face folder (loaded with `neurallayers.load`), or (model, tokenizer).
        **kwargs: options of the task's pipeline: batch_size (all), mask_token (fill-mask).

    Raises:
        ValueError: an unknown task (the message lists the tasks), or a model without the head the task needs.
    """
    if task not in PIPELINES:
        hint = difflib.get_close_matches(str(task), list(PIPELINES), n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown task {task!r}{did}; tasks: {', '.join(PIPELINES)}")
    path = model if isinstance(model, str | Path) else None
    if path is not None:
        from neurallayers.api import load

        model = load(path)
    if not (isinstance(model, tuple | list) and len(model) == 2 and isinstance(model[0], nn.Module)):
        raise ValueError("model must be a path (run directory or Hugging Face folder) or a (model, tokenizer) pair")
    check_options(task, kwargs, PIPELINES[task].__init__)
    pipe = PIPELINES[task](model[0], model[1], **kwargs)
    if path is not None and isinstance(pipe, TextGenerationPipeline):
        from neurallayers.api import generation_defaults

        pipe.sampling_defaults = generation_defaults(path)
        pipe.do_sample_defaults = generation_defaults(path, sampling=True)
    return pipe
