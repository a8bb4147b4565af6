"""Hugging Face Qwen2 (`model_type: "qwen2"`, Qwen2 and Qwen2.5) <-> NeuralLayers DecoderLM.

Qwen2 is Llama-shaped, with biases on the q, k and v projections only (transformers builds them whatever the
config says; ModelConfig: bias=False, qkv_bias=True), so the weights go through Llama's literal map (same names).
Its sliding window is per layer in transformers 5: `use_sliding_window` turns `sliding_window` on, and the layers
from `max_window_layers` on (or those `layer_types` names "sliding_attention") use it: ModelConfig's
`sliding_window_layers` (None where every layer slides).
"""

from __future__ import annotations

from neurallayers.checks import is_int
from neurallayers.config import ModelConfig
from neurallayers.interop.llama import llama_shaped_config, llama_shaped_hf_config, to_hf, to_ours

__all__ = ["config_from_hf", "config_to_hf", "to_hf", "to_ours"]

ARCHITECTURE = "Qwen2ForCausalLM"
# transformers' Qwen2Config defaults that differ from LlamaConfig's, for keys a config.json leaves out
QWEN2_DEFAULTS = {"vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
                  "num_key_value_heads": 32, "sliding_window": 4096, "max_window_layers": 28}
LAYER_TYPES = ("full_attention", "sliding_attention")


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a Hugging Face Qwen2Config dict (config.json); RoPE is read as for Llama.

    Raises:
        ValueError: not a Qwen2 config, a variant DecoderLM does not build (sliding layers without a window,
            a layer type other than full or sliding attention, an activation other than SiLU, a RoPE type other than
            llama.ROPE_TYPES, an architecture other than a causal LM), naming the field.
    """
    if not isinstance(hf, dict):
        raise ValueError(f"expected a config.json dict, got {type(hf).__name__}")
    if hf.get("model_type") != "qwen2":
        raise ValueError(f"config model_type={hf.get('model_type')!r}: this converter reads qwen2")
    hf = QWEN2_DEFAULTS | hf
    window, layers = _windows(hf)
    return llama_shaped_config(hf, "qwen2", ARCHITECTURE, bias=False, qkv_bias=True, sliding_window=window,
                               sliding_window_layers=layers)


def _windows(hf: dict) -> tuple[int | None, list[int] | None]:
    """(sliding_window, sliding_window_layers) as transformers 5's Qwen2 builds its layers: the window where
    use_sliding_window turns it on, and the layers that slide, None where every layer does (or the window is off)."""
    window = hf["sliding_window"] if hf.get("use_sliding_window") else None
    n_layer = hf.get("num_hidden_layers", 32)
    if not is_int(n_layer) or n_layer < 1:  # read here before ModelConfig checks it
        raise ValueError(f"config num_hidden_layers={n_layer!r}: expected an int >= 1")
    types = hf.get("layer_types")
    if types is None:  # transformers' rule: the layers from max_window_layers on slide
        first = hf["max_window_layers"]
        if not is_int(first):
            raise ValueError(f"config max_window_layers={first!r}: expected an int")
        types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                 for i in range(n_layer)]
    else:
        field = f"layer_types={types!r}"
        if not isinstance(types, list) or len(types) != n_layer or any(t not in LAYER_TYPES for t in types):
            raise ValueError(f"config {field}: NeuralLayers builds a list of num_hidden_layers={n_layer} entries, each "
                             f"{' or '.join(map(repr, LAYER_TYPES))}")
        if window is None and "sliding_attention" in types:  # transformers fails in its forward on such a config
            raise ValueError(f"config {field} with use_sliding_window={hf.get('use_sliding_window')!r} and "
                             f"sliding_window={hf['sliding_window']!r}: sliding layers without a window")
    layers = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if not layers:
        return None, None
    return window, (layers if len(layers) < n_layer else None)


def config_to_hf(cfg: ModelConfig) -> dict:
    """A Qwen2Config dict: Llama's keys (see llama.config_to_hf), and `cfg`'s sliding window: on the layers from
    max_window_layers on (0 where every layer slides), with layer_types written out as transformers 5 writes them.

    Raises:
        ValueError: `cfg` has a switch Qwen2 cannot express (biases other than on q, k and v alone, sliding layers
            that are not the last ones, which max_window_layers cannot say, ...); the message names every such field.
    """
    layers = cfg.sliding_window_layers
    if layers is not None and layers != list(range(layers[0], cfg.n_layer)):
        raise ValueError(f"config cannot be written as a Hugging Face qwen2: sliding_window_layers={layers!r} (Qwen2's "
                         f"max_window_layers slides the last layers, from one index to n_layer={cfg.n_layer})")
    out = llama_shaped_hf_config(cfg, "qwen2", ARCHITECTURE, {"bias": False}, qkv_bias=True)
    window = cfg.sliding_window
    first = cfg.n_layer if window is None else (layers or [0])[0]
    out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=first,
               layer_types=["sliding_attention" if i >= first else "full_attention" for i in range(cfg.n_layer)])
    return out
