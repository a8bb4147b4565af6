"""Building blocks with explicit keyword arguments. Nothing here reads ModelConfig."""

from neurallayers.nn.attention import Attention
from neurallayers.nn.block import Block
from neurallayers.nn.kv_cache import KVCache
from neurallayers.nn.mlp import MLP, GatedMLP
from neurallayers.nn.norms import LayerNorm, RMSNorm, build_norm
from neurallayers.nn.positions import RotaryEmbedding, alibi_slopes, apply_rotary, sinusoidal_table

__all__ = [
    "Attention", "Block", "KVCache", "MLP", "GatedMLP", "LayerNorm", "RMSNorm", "build_norm",
    "RotaryEmbedding", "alibi_slopes", "apply_rotary", "sinusoidal_table",
]
