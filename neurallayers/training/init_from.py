"""Starting a run from pretrained weights (`train.init_from`): fine-tuning a run directory or a Hugging Face folder.

The source fixes what its weights mean: the model's shape, its tokenizer and its vocabulary. The run's model config
starts as the source's (RunConfig.from_dict fills every field the model section leaves out) and may change only
what leaves the weights as they are: dropout, stochastic depth, the attention kernel, how new weights would be
initialised, the rotary settings and sliding window, a shorter context (a learned position table is cut to it), and
for an encoder the head: masked-LM training keeps the source's encoder and its masked-LM head where it has one,
else starts a new head. Only a fresh start reads the source; a resume takes everything from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neurallayers.config import ModelConfig

log = logging.getLogger("neurallayers.training")

# Fields a run may set differently from its source: none of them changes what the source's weights mean.
MAY_CHANGE = ("name", "extra", "dropout", "attn_dropout", "drop_path", "attention", "init_std", "scale_residual_init",
              "block_size", "rope_theta", "rope_scaling", "sliding_window", "sliding_window_layers")
# ... and for an encoder trained as a masked LM, which prepare_data sets from the tokenizer
MAY_CHANGE_ENCODER = ("head", "pad_token_id")


def source_path(init_from: str) -> Path:
    """The folder `init_from` names (a bundled model's name included), checked to be a run, one of its checkpoints
    (`run/checkpoints/step-N`: that step's weights, the run's config and tokenizer) or an HF folder. Its config and
    tokenizer are in `api.model_folder(path)`; `api.load(path)` reads its weights."""
    from neurallayers.api import is_checkpoint_folder, resolve_model_path

    path = resolve_model_path(Path(init_from).expanduser())
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"TrainConfig.init_from={init_from!r} {what}; give a run directory (config.yaml), "
                                "one of its checkpoints/step-N or a Hugging Face model folder (config.json) to start "
                                "from")
    if not ((path / "config.yaml").is_file() or (path / "config.json").is_file() or is_checkpoint_folder(path)):
        raise FileNotFoundError(f"TrainConfig.init_from={init_from!r}: {path} has neither config.yaml (a NeuralLayers "
                                "run) nor config.json (a Hugging Face model), nor is it a run's checkpoints/step-N")
    return path


def source_model_config(init_from: str) -> ModelConfig:
    """The model config of the source, read without its weights."""
    from neurallayers.api import folder_model_config

    return folder_model_config(source_path(init_from))


def source_tokenizer(init_from: str) -> object:
    """The source's tokenizer (tokenizer.json, or vocab.json + merges.txt), read without its weights."""
    from neurallayers.api import model_folder
    from neurallayers.interop.hf import load_tokenizer

    path = model_folder(source_path(init_from))
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise FileNotFoundError(f"TrainConfig.init_from={init_from!r}: {path} has no tokenizer (tokenizer.json, or "
                                "vocab.json + merges.txt); a run needs the tokenizer the model was trained with")
    return tokenizer


@dataclass
class Source:
    """A loaded source: where it is, its model config, weights (our names) and tokenizer."""

    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: object

    def check_model(self, cfg: ModelConfig) -> None:
        """Raises ValueError naming the first field of `cfg` that the source's weights do not allow."""
        allowed = MAY_CHANGE + (MAY_CHANGE_ENCODER if not cfg.causal else ())
        for name in (f.name for f in dataclasses.fields(ModelConfig)):
            if name not in allowed and getattr(self.config, name) != getattr(cfg, name):
                raise ValueError(f"ModelConfig.{name}={getattr(cfg, name)!r} differs from the init_from model's "
                                 f"{getattr(self.config, name)!r} ({self.path}): its weights fix it. A run started "
                                 f"from pretrained weights may change only {', '.join(allowed)}")
        if cfg.position == "learned" and cfg.block_size > self.config.block_size:
            raise ValueError(f"ModelConfig.block_size={cfg.block_size}: the init_from model learned positions for "
                             f"{self.config.block_size} tokens only; use at most {self.config.block_size}")

    def load_into(self, model: nn.Module) -> None:
        """Copies the source's weights into `model` (built from a config `check_model` accepted): a learned
        position table cut to the model's context, an encoder's weights under a new head; a masked-LM head the
        source lacks keeps its fresh initialisation (logged)."""
        from neurallayers.models.encoder import drop_unused_pooler
        from neurallayers.weights import check_state_dict

        sd = drop_unused_pooler(model.config, _encoder_weights(self.state_dict, model), source=str(self.path))
        want = model.state_dict()
        for key, value in list(sd.items()):
            if key.endswith("wpe.weight") and key in want and want[key].shape[0] < value.shape[0]:
                sd[key] = value[: want[key].shape[0]]
        new = [k for k in want if k not in sd and k.startswith("head.")]
        for key in new:  # a fresh masked-LM head: keep the model's own initialisation
            sd[key] = want[key]
        check_state_dict(model, sd, source=f"init_from {self.path}")
        model.load_state_dict(sd)  # copies in place: tied weights stay tied
        if new:
            log.info("the masked-LM head is new (%s has none): %d tensors start from their initialisation",
                     self.path, len(new))


def _encoder_weights(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The source's weights named as `model` names them: a bare encoder's under "encoder." of a head model, and an
    encoder head model's other head left out when the model has another (masked-LM training of a classifier)."""
    want = model.state_dict()
    if not any(k.startswith("encoder.") for k in want):
        return dict(sd)
    if any(k.startswith("encoder.") for k in sd):
        return {k: v for k, v in sd.items() if k.startswith("encoder.") or k in want}
    return {f"encoder.{k}": v for k, v in sd.items()}


def load_source(init_from: str) -> Source:
    """The source's weights, model config and tokenizer, loaded and checked as `neurallayers.load` checks them.

    Raises:
        FileNotFoundError: no such folder, no config, weights or tokenizer.
        CheckpointError: corrupt weights, weights that do not fit their config, or only pickle weights.
    """
    from neurallayers.api import load

    path = source_path(init_from)
    tokenizer = source_tokenizer(init_from)  # first: a folder without one fails before its weights are read
    _refuse_pickle_only(path, init_from)
    with torch.random.fork_rng(devices=[]):  # building the source initialises weights: leave the run's RNG alone
        model, _ = load(path)
    return Source(path, model.config, dict(model.state_dict()), tokenizer)


def _refuse_pickle_only(path: Path, init_from: str) -> None:
    """Refuses a Hugging Face folder whose only weights are pickles (which can run code when loaded), naming the way
    on for training: `load`'s refusal offers allow_pickle, which train does not take."""
    from neurallayers.interop.hf_files import PICKLE_INDEX, PICKLE_WEIGHTS, SAFE_INDEX, SAFE_WEIGHTS
    from neurallayers.weights import CheckpointError

    if (path / "config.yaml").is_file() or os.path.lexists(path / SAFE_WEIGHTS) or (path / SAFE_INDEX).is_file():
        return  # a run, or safetensors: load reads them (and names a broken file itself)
    pickles = [name for name in (PICKLE_WEIGHTS, PICKLE_INDEX) if (path / name).is_file()]
    if pickles:
        raise CheckpointError(f"TrainConfig.init_from={init_from!r}: {path} has only pickle weights ({pickles[0]}), "
                              "which can run code when loaded; training never reads them. Convert them to "
                              f"safetensors once (neurallayers convert {path} DST --to hf --allow-pickle) and start "
                              "from DST")


def data_conflicts(data: object) -> None:
    """Refuses data settings that would pick another tokenizer than the source's."""
    from neurallayers.training.config import DataConfig

    default = DataConfig()
    for name in ("tokenizer", "vocab_size"):
        if getattr(data, name) != getattr(default, name):
            raise ValueError(f"DataConfig.{name}={getattr(data, name)!r}: a run with train.init_from uses the "
                             "init_from model's tokenizer; leave data.tokenizer and data.vocab_size unset")


__all__ = ["MAY_CHANGE", "Source", "data_conflicts", "load_source", "source_model_config", "source_path",
           "source_tokenizer"]
