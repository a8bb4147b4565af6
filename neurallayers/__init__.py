"""NeuralLayers: build, train, generate from, convert and serve transformer models.

The public API mirrors the CLI: `train` (neurallayers train), `load` + `generate` / `stream` (neurallayers
generate), `convert`, `save_hf` (a model in memory as a Hugging Face folder), `embed`, `pipeline`. Heavy optional
libraries are only imported by the functions that use them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it, imported on first use (PEP 562): `import neurallayers` and the CLI's start
# (`neurallayers --help`, and a Ctrl-C in its first seconds) do not wait for torch.
_EXPORTS = {
    "generation_defaults": "neurallayers.api", "load": "neurallayers.api", "train": "neurallayers.api",
    "ModelConfig": "neurallayers.config", "Tokenizer": "neurallayers.data",
    "embed": "neurallayers.embeddings", "load_minilm": "neurallayers.embeddings",
    "Generation": "neurallayers.generation", "GenerationConfig": "neurallayers.generation",
    "generate": "neurallayers.generation", "stream": "neurallayers.generation",
    "convert": "neurallayers.interop.convert", "save_hf": "neurallayers.interop.hf",
    "build_model": "neurallayers.models",
    "pipeline": "neurallayers.pipelines",
    "DataConfig": "neurallayers.training.config", "RunConfig": "neurallayers.training.config",
    "TrainConfig": "neurallayers.training.config",
}
__all__ = ["DataConfig", "Generation", "GenerationConfig", "ModelConfig", "RunConfig", "Tokenizer", "TrainConfig",
           "__version__", "build_model", "convert", "embed", "generate", "generation_defaults", "load", "load_minilm",
           "pipeline", "save_hf", "stream", "train"]  # _EXPORTS and __version__

if TYPE_CHECKING:
    from neurallayers.api import generation_defaults, load, train
    from neurallayers.config import ModelConfig
    from neurallayers.data import Tokenizer
    from neurallayers.embeddings import embed, load_minilm
    from neurallayers.generation import Generation, GenerationConfig, generate, stream
    from neurallayers.interop.convert import convert
    from neurallayers.interop.hf import save_hf
    from neurallayers.models import build_model
    from neurallayers.pipelines import pipeline
    from neurallayers.training.config import DataConfig, RunConfig, TrainConfig


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"neurallayers.{name}") is None:
            raise AttributeError(f"module 'neurallayers' has no attribute {name!r}")
        return importlib.import_module(f"neurallayers.{name}")  # a subpackage, as an eager import made it one
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
