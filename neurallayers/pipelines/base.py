"""The base of every pipeline: a model in eval mode per call, its tokenizer, batch_size, and the check of a call's
options."""


import copy
import difflib
import inspect
import logging
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import check_batch_size, check_tokenizer, input_limit, tokenize_batch
from neurallayers.nn.modes import eval_mode

log = logging.getLogger("neurallayers.pipelines")


class Pipeline(ABC):
    """Holds a model (each call in eval mode, its own mode after) and its tokenizer; subclasses implement `_run`."""

    task = ""
    heads: tuple[str, ...] = ()  # the encoder heads this task can use; empty for decoder tasks
    call_options: tuple[str, ...] = ()  # options a subclass's _call takes beside _run's

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, batch_size: int = 32) -> None:
        cfg = getattr(model, "config", None)
        if cfg is None:
            raise ValueError(f"{self.task}: model must be a NeuralLayers model with a .config, "
                             f"got {type(model).__name__}")
        if self.heads and (cfg.causal or cfg.head not in self.heads):
            have = "a causal decoder" if cfg.causal else f"an encoder with head={cfg.head!r}"
            raise ValueError(f"{self.task} needs an encoder with config.head in {self.heads}, got {have}")
        batch_size = check_batch_size(batch_size)
        check_tokenizer(tokenizer)
        # the caller's model keeps its mode: each call runs in eval mode (as embed and generate do), so a pipeline made
        # in the middle of training does not leave its dropout off
        self.model, self.tokenizer, self.config, self.batch_size = model, tokenizer, cfg, batch_size
        self.device = next(model.parameters()).device
        self.defaults: dict[str, Any] = {}  # call options given to pipeline(), as transformers' pipelines keep them

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> Any:
        """`inputs`' results; `kwargs` over the options given to pipeline() (`defaults`)."""
        return self._call(inputs, {**self.defaults, **kwargs}, kwargs)

    def _call(self, inputs: Any, kwargs: dict[str, Any], given: dict[str, Any]) -> Any:
        """A call with its options (`kwargs`: the defaults and the call's own; `given`: the call's own alone)."""
        kwargs = dict(kwargs)
        single = isinstance(inputs, str | dict)
        items = [inputs] if single else inputs
        if not isinstance(items, list | tuple):
            raise ValueError(f"{self.task}: inputs must be a string or a list of strings, "
                             f"got {type(inputs).__name__}")
        # batch_size per call, as transformers' pipelines take it (results do not depend on it); a copy runs with it, so
        # the pipeline keeps its own, even for a call from another thread
        runner = self
        if "batch_size" in kwargs:
            batch_size = check_batch_size(kwargs.pop("batch_size"))
            runner = copy.copy(self)
            runner.batch_size = batch_size
        check_options(self.task, kwargs, self._run)
        results = runner._run(list(items), **kwargs)
        return results[0] if single else results

    @classmethod
    def check_defaults(cls, options: dict[str, Any]) -> None:
        """Refuses, before a model loads, call options given to pipeline() that a call would refuse by name (values
        are checked by the calls). A pipeline whose _run takes **kwargs checks those itself."""
        check_options(cls.task, options, cls._run, extra=cls.call_options)

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


def _switch(name: str, value: Any) -> bool | None:
    """A True/False option (None: unset). do_sample=0 sampled and return_full_text=None dropped the prompt, where
    transformers decodes greedily and keeps it: anything but a bool was read by identity or truthiness."""
    from neurallayers.checks import check_bool

    return None if value is None else check_bool(value, name)


def check_options(task: str, options: dict, *functions: Any, extra: tuple[str, ...] = ()) -> None:
    """Refuses a keyword none of `functions` takes, nor `extra` names (a transformers option not built here, a typo),
    in one line naming it and the valid ones, instead of a TypeError from the call. A function that takes **kwargs
    checks its own."""
    params = [p for function in functions for p in inspect.signature(function).parameters.values()]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind is p.KEYWORD_ONLY] + list(extra)
    valid = [n for n in names if not n.startswith("_")]  # a private one is the pipeline's own
    for name in options:
        if name not in names:
            raise unknown_option(task, name, valid)


def unknown_option(task: str, name: object, valid: list[str], listed: str | None = None) -> ValueError:
    """The error for an option `task` does not take: its name, the closest valid one, and the valid ones (`listed`:
    how to list them, default all of `valid`)."""
    hint = difflib.get_close_matches(str(name), valid, n=1)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ValueError(f"{task}: unknown option {name!r}{did}; options: {listed or ', '.join(valid) or 'none'}")
