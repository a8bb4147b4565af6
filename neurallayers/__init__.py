"""NeuralLayers: build, train, generate from, convert and serve transformer models."""

from neurallayers.config import ModelConfig
from neurallayers.models import build_model

__version__ = "0.1.0"
__all__ = ["ModelConfig", "build_model", "__version__"]
