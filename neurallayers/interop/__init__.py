"""Hugging Face checkpoints in and out: `load_hf`, `save_hf`, `convert`, one module per model family."""

from neurallayers.interop.convert import convert
from neurallayers.interop.hf import FAMILIES, load_hf, save_hf

__all__ = ["FAMILIES", "convert", "load_hf", "save_hf"]
