"""`pipeline(task, model)`: text in, task results out, in the shape `transformers.pipeline` returns.

    fill = pipeline("fill-mask", model="runs/my-bert")          # a run directory or a Hugging Face folder
    fill("Paris is the [MASK] of France.")                       # [{"score", "token", "token_str", "sequence"}, ...]
    embed = pipeline("feature-extraction", model=load_minilm())  # or a (model, tokenizer) pair

A pipeline called with one string returns that string's result; called with a list, a list of results.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurallayers.data.tokenizers import Tokenizer
from neurallayers.pipelines.base import Pipeline, check_options
from neurallayers.pipelines.encoder_tasks import (
    FeatureExtractionPipeline,
    FillMaskPipeline,
    TextClassificationPipeline,
    TokenClassificationPipeline,
    label_names,
)
from neurallayers.pipelines.text_generation import TextGenerationPipeline, folder_generation

__all__ = ["PIPELINES", "TASK_ALIASES", "FeatureExtractionPipeline", "FillMaskPipeline", "Pipeline",
           "TextClassificationPipeline", "TextGenerationPipeline", "TokenClassificationPipeline", "check_options",
           "label_names", "pipeline"]


PIPELINES: dict[str, type[Pipeline]] = {
    "feature-extraction": FeatureExtractionPipeline,
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "text-generation": TextGenerationPipeline,
}
# transformers' other names for the same tasks (its TASK_ALIASES), so pipeline("ner") runs as it does there
TASK_ALIASES: dict[str, str] = {"ner": "token-classification", "sentiment-analysis": "text-classification"}


def pipeline(task: str, model: str | Path | tuple[nn.Module, Tokenizer], *, device: str | torch.device | None = None,
             dtype: torch.dtype | str | None = None, **kwargs: Any) -> Pipeline:
    """A ready-to-call pipeline for `task`.

    Args:
        task: one of "feature-extraction", "fill-mask", "text-classification", "token-classification",
            "text-generation", or transformers' aliases "ner" (token-classification) and "sentiment-analysis"
            (text-classification).
        model: a run directory or Hugging Face folder (loaded with `neurallayers.load`), or (model, tokenizer).
        device, dtype: where and in which dtype `neurallayers.load` puts a model loaded from a path (as load takes
            them, dtype="auto" too; an int device as transformers reads it: -1 the CPU, N "cuda:N"); a (model,
            tokenizer) pair stays as it is.
        **kwargs: options of the task's pipeline (batch_size, all; mask_token, fill-mask), and options of its calls
            (top_k, aggregation_strategy, max_new_tokens ...), which every call takes as defaults, its own over them.

    Raises:
        ValueError: an unknown task (the message lists the tasks) or option, checked before the model loads, or a
            model without the head the task needs.
    """
    task = _task_name(task)
    kind = PIPELINES[task]
    # the rest are call options, every call's defaults as in transformers (pipeline("ner", aggregation_strategy=...))
    params = inspect.signature(kind.__init__).parameters.values()
    init = {k: v for k, v in kwargs.items() if k in {p.name for p in params if p.kind is p.KEYWORD_ONLY}}
    check_options(task, kwargs, kind.__init__, kind._run, extra=kind.call_options)
    kind.check_defaults({k: v for k, v in kwargs.items() if k not in init})
    path = model if isinstance(model, str | Path) else None
    if path is None and not (isinstance(model, tuple | list) and len(model) == 2 and isinstance(model[0], nn.Module)):
        raise ValueError("model must be a path (run directory or Hugging Face folder) or a (model, tokenizer) pair")
    if path is None and (device is not None or dtype not in (None, "auto")):  # "auto": as it is, as transformers
        given = "device" if device is not None else "dtype"
        raise ValueError(f"{given}= applies to a model loaded from a path; move a (model, tokenizer) pair's model "
                         "yourself (model.to(...))")
    if path is not None:  # load reads an int device as transformers does: -1 the CPU, N cuda:N
        from neurallayers.api import load

        model = load(path, device=device, dtype=dtype)
    pipe = kind(model[0], model[1], **init)
    pipe.defaults = {k: v for k, v in kwargs.items() if k not in init}
    if path is not None and isinstance(pipe, TextGenerationPipeline):
        from neurallayers.api import settings_folder

        pipe.folder_generation = folder_generation(settings_folder(path))
    return pipe


def _task_name(task: object) -> str:
    """The PIPELINES key `task` names, itself or through TASK_ALIASES; anything else (a typo, a list) is refused with
    the tasks and aliases listed."""
    if isinstance(task, str) and task in TASK_ALIASES:
        return TASK_ALIASES[task]
    if isinstance(task, str) and task in PIPELINES:
        return task
    hint = difflib.get_close_matches(str(task), [*PIPELINES, *TASK_ALIASES], n=1)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    aliases = ", ".join(f"{alias} ({name})" for alias, name in TASK_ALIASES.items())
    raise ValueError(f"unknown task {task!r}{did}; tasks: {', '.join(PIPELINES)}; aliases: {aliases}")
