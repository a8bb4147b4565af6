"""NeuralLayers: build, train, generate from, convert and serve transformer models.

The public API mirrors the CLI: `train` (neurallayers train), `load` + `generate` / `stream` (neurallayers
generate), `convert`, `embed`, `pipeline`. Heavy optional libraries are only imported by the functions that use them.
"""

from neurallayers.api import generation_defaults, load, train
from neurallayers.config import ModelConfig
from neurallayers.data import Tokenizer
from neurallayers.embeddings import embed, load_minilm
from neurallayers.generation import Generation, GenerationConfig, generate, stream
from neurallayers.interop.convert import convert
from neurallayers.models import build_model
from neurallayers.pipelines import pipeline
from neurallayers.training.config import DataConfig, RunConfig, TrainConfig

__version__ = "0.1.0"
__all__ = ["DataConfig", "Generation", "GenerationConfig", "ModelConfig", "RunConfig", "Tokenizer", "TrainConfig",
           "__version__", "build_model", "convert", "embed", "generate", "generation_defaults", "load", "load_minilm",
           "pipeline", "stream", "train"]
