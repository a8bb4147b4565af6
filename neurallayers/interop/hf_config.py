"""Which family module converts a checkpoint: config.json's `model_type` -> its module (`FAMILIES`), a ModelConfig ->
the model_type it is written as, and the reading of config.json values that the family modules share.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from neurallayers.checks import is_number
from neurallayers.config import ModelConfig

# config.json model_type -> the module that converts it (loaded on first use).
FAMILIES: dict[str, str] = {
    "gpt2": "neurallayers.interop.gpt2",
    "llama": "neurallayers.interop.llama",
    "mistral": "neurallayers.interop.llama",
    "bert": "neurallayers.interop.bert",
    "qwen2": "neurallayers.interop.qwen2",
}


def family(model_type: object) -> ModuleType:
    """The converter module for a config.json `model_type`.

    Raises:
        ValueError: an unsupported model_type, listing the supported ones.
    """
    if not isinstance(model_type, str) or model_type not in FAMILIES:  # a list or an object: unhashable
        raise ValueError(f"config.json model_type={model_type!r} is not supported; supported model types: "
                         f"{', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[model_type])


def family_for_config(cfg: ModelConfig) -> str:
    """The Hugging Face model_type to write `cfg` as: the one it was read from, else inferred from its switches."""
    source = cfg.extra.get("hf_model_type")
    if isinstance(source, str) and source in FAMILIES:
        return source
    if not cfg.causal:
        return "bert"
    if cfg.position == "rope" and cfg.has_qkv_bias and not cfg.bias:  # biases on q, k and v alone
        return "qwen2"
    if cfg.position == "rope":
        return "mistral" if cfg.sliding_window is not None else "llama"
    if cfg.position == "learned":
        return "gpt2"
    raise ValueError(f"ModelConfig.position={cfg.position!r}: a Hugging Face decoder needs 'learned' (GPT-2) "
                     "or 'rope' (Llama, Mistral, Qwen2)")


# ----- config.json values (used by the family modules) -----

def config_number(hf: dict, key: str, default: float) -> float:
    """config.json's `key` as a float; `default` where it is absent or null (as a transformers config built without it).

    Raises:
        ValueError: a value that is not a number, naming the key (float() named neither it nor the file).
    """
    value = hf.get(key)
    if value is None:
        return float(default)
    if not is_number(value):  # an int past float's range too: float() raised OverflowError, naming no key
        raise ValueError(f"config {key}={value!r}: expected a number")
    return float(value)


def config_architecture(hf: dict, default: str) -> str:
    """The first class config.json's `architectures` names (`default` where it names none). A lone string is that
    class (transformers picks the class by model_type and loads such a folder): its first letter was read as the
    class, and the folder refused as a task head."""
    archs = hf.get("architectures") or [default]
    archs = [archs] if isinstance(archs, str) else archs
    if not isinstance(archs, list) or not isinstance(archs[0], str):
        raise ValueError(f"config architectures={hf.get('architectures')!r}: expected a list of class names")
    return archs[0]
