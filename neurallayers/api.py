"""`load(path)`: one entry point for run directories and Hugging Face model folders."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

# Hub names of the models shipped in packages: load(name) reads the bundled folder, offline
BUNDLED = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def check_path(value: object, name: str) -> None:
    """A str or os.PathLike, refused in one line naming the argument: load(5) was "expected str, bytes or
    os.PathLike object, not int", naming nothing."""
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"{name}={value!r}: must be a path (a str or pathlib.Path), got {type(value).__name__}")


def resolve_model_path(path: str | Path) -> Path:
    """`path` (`~` the home folder), or the bundled folder where `path` is a bundled model's name and no such file or
    folder exists."""
    check_path(path, "path")
    if isinstance(path, str) and not path.strip():  # Path("") is the current folder: an unset variable loaded it
        raise ValueError("the model path is empty; give a run directory (config.yaml) or a Hugging Face folder "
                         "(config.json)")
    if str(path) in BUNDLED and not Path(path).exists():
        from neurallayers.embeddings import minilm_folder

        return minilm_folder()
    return Path(path).expanduser()  # "~/runs/a" is the home folder's, as a config's init_from reads it


def folder_model_config(path: Path) -> object:
    """The ModelConfig of a run directory (config.yaml), one of its checkpoints or a Hugging Face folder (config.json),
    without its weights.

    Raises:
        ValueError: a folder with neither file, or a config that does not validate.
    """
    path = model_folder(path)  # a run's checkpoints/step-N: the run's config
    if (path / "config.yaml").is_file():
        from neurallayers.training.config import RunConfig

        # only the model section must validate: a train or data value a later version refuses only warns
        return RunConfig.from_yaml(path / "config.yaml", saved=True).model
    if (path / "config.json").is_file():
        from neurallayers.interop.hf import family, read_json

        hf_cfg = read_json(path / "config.json")
        return family(hf_cfg.get("model_type")).config_from_hf(hf_cfg)
    raise _no_config(path)


def _no_config(path: Path) -> ValueError:
    return ValueError(f"{path} has neither config.yaml (a NeuralLayers run) nor config.json (a Hugging Face model)")


def _existing_folder(path: str | Path) -> Path:
    """`path` resolved (resolve_model_path) and checked to be a folder, a missing one named with how to get a
    preset's model where it is a preset's name."""
    given, path = path, resolve_model_path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run directory or model folder: {path}{_preset_hint(given)}")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; give a run directory (config.yaml) or a Hugging Face folder (config.json)")
    return path


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
         allow_pickle: bool = False) -> tuple[nn.Module, object]:
    """Model (in eval mode) and tokenizer from a run directory (config.yaml, model.safetensors, tokenizer.json), one
    of its checkpoints (`run/checkpoints/step-N`: that step's weights) or a Hugging Face folder (config.json,
    safetensors weights, tokenizer files); "all-MiniLM-L6-v2" (or its hub name
    "sentence-transformers/all-MiniLM-L6-v2") is the bundled MiniLM encoder.

    Args:
        device: where the weights go; "auto" picks cuda, then mps, then cpu; None: cpu; an int as transformers'
            pipelines read it (-1 the CPU, N "cuda:N").
        dtype: the weights' dtype (a torch.dtype, or "fp32" / "float32", "bf16" / "bfloat16", "fp16" / "float16",
            "fp64" / "float64");
            None: float32 for a Hugging Face folder, whatever its config.json or weights say (as transformers 4 loads
            one); for a run or checkpoint the dtype its weights file stores, bit for bit (a run trained here stores
            float32 master weights, bf16 autocast or not; `convert` keeps a bf16 source's bf16), or for a file mixing
            dtypes the narrowest holding each exactly (bf16 and fp16: float32). "auto": the stored dtype, as
            transformers 5's default dtype="auto" reads it: for a Hugging Face folder the `dtype` (or `torch_dtype`)
            its config.json names, else its first weight file's first floating-point tensor's; for a run or
            checkpoint as None.
        allow_pickle: accept an HF folder that only has pickle weights (pytorch_model.bin or its shards). Off by
            default: a pickle can run code when loaded.
    """
    from neurallayers.checks import check_bool
    from neurallayers.weights import weight_dtype

    check_bool(allow_pickle, "allow_pickle")  # for any path: a run's load never reads it, and took "no" silently
    dtype = weight_dtype(dtype, auto=True)
    if device is not None:
        from neurallayers.training.runtime import resolve_device

        device = resolve_device(device_name(device), what="device")
    path = _existing_folder(path)
    kept = None if dtype == "auto" else dtype  # a run and a checkpoint keep their stored dtype by default
    if (path / "config.yaml").is_file():
        from neurallayers.training.checkpoint import load_run

        model, tokenizer, _ = load_run(path, device=device, dtype=kept)
        _keep_generation_settings(model, path)
    elif (path / "config.json").is_file():
        from neurallayers.interop.hf import load_hf

        model, tokenizer = load_hf(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
    elif is_checkpoint_folder(path):
        model, tokenizer = _load_checkpoint(path, device=device, dtype=kept)
        _keep_generation_settings(model, settings_folder(path))
    else:
        raise _no_config(path)
    from neurallayers.nn.cpu import warn_if_slow_bf16

    weight = next(model.parameters(), None)  # the dtype loaded, asked for or stored: a bf16 run loads as bf16
    if weight is not None:
        warn_if_slow_bf16(weight.dtype, weight.device)
    _warn_if_fp16_on_cpu(model)
    return model.eval(), tokenizer


def device_name(device: object) -> str | torch.device:
    """A device argument as a name or torch.device: an int (numpy's too) as transformers' pipelines read it, -1 the
    CPU and N "cuda:N" (str(0) was refused as the name '0'); any other type refused as given (True read as 'True')."""
    from neurallayers.checks import is_integral

    if is_integral(device):
        return "cpu" if device < 0 else f"cuda:{int(device)}"
    if not isinstance(device, str | torch.device):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (or a GPU index), "
                         f"got {type(device).__name__}")
    return device


def _keep_generation_settings(model: nn.Module, folder: Path) -> None:
    """A run's generation_config.json (convert writes a Hugging Face source's there) kept on the model, as load_hf
    keeps a folder's: save_hf writes it back (load(run) -> save_hf dropped it, where convert run -> hf kept it)."""
    from neurallayers.interop.hf import generation_settings

    if model.config.causal and (settings := generation_settings(folder)):
        model.generation_settings = settings


def _preset_hint(given: str | Path) -> str:
    """How to get a model of a preset's name: a preset is a shape without weights, and load("gpt2") said only that
    no such folder exists. A path spelt as one (`./tiny`, `tiny/`, a Path) is no preset's name, as `info` reads it."""
    from neurallayers.presets import PRESETS

    name = given if isinstance(given, str) else ""
    if name not in PRESETS:
        return ""
    return (f"; {name!r} is a preset, a model shape without trained weights: build it untrained with "
            f"build_model(ModelConfig.from_name({name!r})), or train it (neurallayers train --preset {name})")


def is_checkpoint_folder(path: Path) -> bool:
    """A run's `checkpoints/step-N` folder, found through a symlink or `..` too (`step-800` typed inside
    checkpoints/). A model folder of its own (config.yaml or config.json) is none, wherever it sits: an HF export
    kept in a project's checkpoints/ folder beside the project's config.yaml was read as a step of a run."""
    return _checkpoint_of(path) is not None


def _checkpoint_of(path: Path) -> Path | None:
    """The checkpoint folder `path` is (see is_checkpoint_folder), or None."""
    if (path / "config.yaml").is_file() or (path / "config.json").is_file():
        return None
    from neurallayers.training.checkpoint import run_checkpoint

    return run_checkpoint(path)


def checkpoint_run(path: Path) -> Path:
    """The run directory of the checkpoint folder `path` (is_checkpoint_folder)."""
    from neurallayers.training.checkpoint import run_checkpoint

    return run_checkpoint(path).parent.parent


def model_folder(path: Path) -> Path:
    """The folder holding the config and tokenizer of the model folder `path`: its run for a checkpoint folder (which
    holds only weights and training state), else `path` itself."""
    found = _checkpoint_of(path)  # once: each reading resolves the path and compares folders
    return path if found is None else found.parent.parent


def _load_checkpoint(path: Path, *, device, dtype) -> tuple[nn.Module, object]:
    """The run's model and tokenizer with the weights of its checkpoint `path`, which holds no config or tokenizer of
    its own (load refused it as "neither config.yaml nor config.json")."""
    from neurallayers.training.checkpoint import COMPLETE, load_run

    if not (path / COMPLETE).is_file():  # its save was cut short: the weights may be partial
        raise ValueError(f"{path} is an incomplete checkpoint (no {COMPLETE} marker); load a complete one")
    model, tokenizer, _ = load_run(checkpoint_run(path), device=device, dtype=dtype,
                                   weights=path / "model.safetensors")
    return model, tokenizer


def _warn_if_fp16_on_cpu(model: nn.Module) -> None:
    """fp16 weights (asked for, or as a run stored them) on a CPU: the CLI's help says "fp16 only on GPUs" and training
    refuses it there, but generate/eval/serve ran silently at ~0.6 GFLOP/s against fp32's ~37 on these CPUs."""
    weight = next(model.parameters(), None)
    if weight is not None and weight.dtype == torch.float16 and weight.device.type == "cpu":
        warnings.warn("fp16 weights on a CPU: most CPUs have no fast fp16 matrix products (measured ~60x slower than "
                      "fp32); use fp32, or bf16 where the CPU has bf16 dot products", stacklevel=3)


def generation_defaults(path: str | Path, *, sampling: bool = False) -> dict:
    """The sampling settings a model folder recommends, as GenerationConfig fields: its generation_config.json
    (temperature, top_k, top_p, min_p, repetition_penalty; `do_sample: false` makes the temperature 0, unless
    `sampling=True`: the settings to sample with when a caller turns sampling on, as transformers' do_sample=True
    does), which a Hugging Face folder, or a run converted from one, may hold; {} without it. The CLI and the server
    use them for the knobs a user leaves unset; in Python: `GenerationConfig(**generation_defaults(path),
    max_new_tokens=64)`.
    """
    from neurallayers.checks import check_bool
    from neurallayers.interop.hf import generation_defaults as hf_defaults

    check_bool(sampling, "sampling")  # "false" is truthy: it gave the sampling settings of a greedy folder
    # a checkpoint samples as its run does; a run converted from a Hugging Face folder keeps its generation_config.json
    return hf_defaults(settings_folder(path), sampling=sampling)


def settings_folder(path: str | Path) -> Path:
    """The folder whose config, tokenizer and generation_config.json a model path uses: the path's own, or for a
    run's checkpoint its run's (model_folder), the path checked as load checks it."""
    return model_folder(_existing_folder(path))


def train(config: object, out_dir: str | Path, *, resume: bool | str | Path | None = False, progress: bool = True,
          overrides: list[str] | None = None, loggers: list | None = None):
    """Train a model into the run directory `out_dir`, as `neurallayers train` does.

    Args:
        config: a RunConfig, a dict with sections model/train/data (each a mapping of fields or its config object,
            e.g. `{"model": ModelConfig.from_name("tiny")}`; model may be `{"preset": name}`), or the path of a YAML
            run config.
        overrides: CLI-style overrides, a list of str, e.g. `["--train.lr", "3e-4", "--model.n_layer=6"]`.
        resume: True continues from the newest complete checkpoint in out_dir; a path names a checkpoint; False or
            None starts a fresh run.

    Returns:
        TrainResult (run_dir, steps, best/final val loss, tokens/s, wall time, why it stopped).
    """
    from neurallayers.checks import check_bool
    from neurallayers.training.config import RunConfig, apply_overrides
    from neurallayers.training.resume import resume_arg
    from neurallayers.training.trainer import fit

    check_path(out_dir, "out_dir")
    check_bool(progress, "progress")
    resume = resume_arg(resume)  # True/False (None: False), or a checkpoint's path
    if isinstance(out_dir, str) and not out_dir.strip():  # Path("") is the current folder: the run would land there
        raise ValueError("out_dir is empty; name the run directory to write")
    # "~/runs/x" made a folder named "~" in the working folder; a config's paths read `~` as the home folder
    out_dir = Path(out_dir).expanduser()
    if not isinstance(resume, bool):
        resume = Path(resume).expanduser()
    if isinstance(overrides, str):  # read letter by letter, it failed as "override '-' must look like ..."
        raise ValueError(f"overrides={overrides!r}: give a list, e.g. {overrides.split()!r}")
    if isinstance(config, (str, Path)):  # a config to train with: its first bad field is an error, wherever it lies
        config = RunConfig.from_yaml(config, saved=False)
    if isinstance(config, RunConfig):
        config = config.to_dict() if overrides else config
    if isinstance(config, dict):
        config = RunConfig.from_dict(apply_overrides(config, overrides or []))
    elif overrides:
        raise ValueError("overrides need a dict or YAML config")
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a RunConfig, a dict or a YAML path, got {type(config).__name__}")
    return fit(config, out_dir, resume=resume, progress=progress, loggers=loggers)
