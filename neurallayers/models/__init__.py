"""Model families. `build_model(config)` picks the family from the config's `causal` switch."""

from __future__ import annotations

import warnings

from torch import nn

from neurallayers.config import ModelConfig, dynamic_scaling_unused
from neurallayers.models.decoder import DecoderLM, ModelOutput


def build_model(config: ModelConfig | str | dict) -> nn.Module:
    """A model with freshly initialised weights from a ModelConfig, a preset name / YAML path, or a mapping of
    fields ({"preset": "tiny", "n_layer": 1} as in a run config's model section)."""
    config = ModelConfig.resolve(config)
    if unused := dynamic_scaling_unused(config):
        warnings.warn(unused, stacklevel=2)
    if config.causal:
        return DecoderLM(config)
    from neurallayers.models.encoder import build_encoder  # noqa: PLC0415 - encoder lives in its own file

    return build_encoder(config)  # the bare encoder, or the head model config.head names


__all__ = ["DecoderLM", "ModelOutput", "build_model"]
