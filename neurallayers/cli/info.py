"""`neurallayers info`: what a model costs -- parameters, FLOPs per token, weight and KV-cache memory."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from decimal import Decimal
from pathlib import Path

from neurallayers.cli.common import non_empty, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", type=non_empty,
                        help="a preset name, a YAML config (model or run config), a run "
                        "directory or one of its checkpoints/step-N, or a Hugging Face folder; none lists the presets")
    parser.add_argument("--context", type=positive_int, default=None, help="sequence length (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="sequences, for a decoder's KV-cache figure")


def resolve_config(target: str):
    """ModelConfig of a preset, a YAML file, a run directory (or one of its checkpoints) or an HF folder."""
    from neurallayers import presets
    from neurallayers.api import folder_model_config, resolve_model_path
    from neurallayers.config import ModelConfig, read_yaml_file

    path = resolve_model_path(target)
    if path.is_dir():
        return folder_model_config(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        data = read_yaml_file(path)
        if not data:  # ModelConfig's defaults would be described: GPT-2 124M, for a file left unsaved
            raise ValueError(f"{path} holds no config; give ModelConfig fields, `preset: NAME`, or a run config")
        # a run config (a fine-tune's may have no model section: train.init_from names it)
        if isinstance(data, dict) and data.keys() & {"model", "train", "data"}:
            from neurallayers.training.config import RunConfig

            return _masked_lm(_trained_model(RunConfig.from_dict(data), data.get("model")))
        return ModelConfig.from_file(path)
    # a path is never a preset: "is not a preset, a .yaml file or a folder" hid that it is missing (`./run` and `run/`
    # are paths too, of one part)
    if ("/" in target or os.sep in target or target.startswith(".")) and not path.exists():
        raise FileNotFoundError(f"no such run directory or model folder: {target}")
    if target in presets.PRESETS:
        return ModelConfig.from_name(target)
    hint = difflib.get_close_matches(target.lower(), presets.PRESETS, n=1)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ValueError(f"{target!r} is not a preset, a .yaml file or a folder{did}; presets: "
                     f"{', '.join(presets.PRESETS)}")


def _trained_model(run, raw_model: object) -> object:
    """The model `train` builds from a run config: the tokenizer sets its vocab_size (prepare_data), here where that
    is known without the corpus: a BPE's data.vocab_size, gpt2's or a tokenizer file's (the preset's 512 described
    a 0.14 M `tiny` that trains as 3.3 M with gpt2's 50,257 tokens). A saved run's config (every model field given)
    and a fine-tune's (its source's) already hold it; a char tokenizer's size is the corpus's."""
    from neurallayers.training.config import _whole_model
    from neurallayers.training.prepare import build_tokenizer

    data = run.data
    if run.train.init_from or data.tokenizer == "char" or (isinstance(raw_model, dict) and _whole_model(raw_model)):
        return run.model
    if data.tokenizer == "bpe":
        return run.model.replace(vocab_size=data.vocab_size) if data.vocab_size else run.model
    tokenizer = build_tokenizer(data, None, model_vocab=run.model.vocab_size, mask=not run.model.causal)
    return run.model.replace(vocab_size=tokenizer.vocab_size)


def _masked_lm(cfg):
    """An encoder trains as a masked LM (prepare_data): its head "none" becomes "mlm", with BERT's transform and
    vocabulary projection and no pooler (bert-tiny's run config was described without the head: a sixth of its
    forward FLOPs, and a pooler the masked LM does not have)."""
    return cfg.replace(head="mlm") if not cfg.causal and cfg.head == "none" else cfg


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1023.95 or unit == "TiB":  # as printed: 1023.96 KiB is "1.0 MiB", not "1024.0 KiB"
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{n_bytes:.0f} B"
        n_bytes = _div(n_bytes, 1024)
    raise AssertionError


def _div(n: float, scale: int) -> float | Decimal:
    """n / scale, as a Decimal where n is past a float's range: an encoder of 10**400 layers (no KV-cache limit
    refuses one) made `info` fail with OverflowError."""
    try:
        return n / scale
    except OverflowError:
        return Decimal(n) / scale


def describe(cfg, *, context: int | None = None, batch_size: int = 1, mask_prob: float = 0.15,
             stored: str | None = None) -> str:
    """The cost table; `stored` replaces the weights row's dtype sizes (a quantized folder's own)."""
    t = context or cfg.block_size
    masked = not cfg.causal and cfg.head == "mlm"
    training = cfg.flops_per_token(t, training=True, mask_prob=mask_prob)
    n = cfg.param_count()
    n_body = cfg.param_count(include_embeddings=False)
    kind = ("decoder" if cfg.causal else "encoder") + f", {cfg.position} positions, {cfg.norm}, {cfg.mlp}"
    heads = f"{cfg.n_head} heads" + (f" ({cfg.n_kv_head} kv heads)" if cfg.n_kv_head != cfg.n_head else "")
    rows = [
        ("architecture", f"{kind}; {cfg.n_layer} layers x {cfg.n_embd} wide, {heads}, vocab {cfg.vocab_size:,}, "
                         f"context {cfg.block_size:,}"),
        ("parameters", f"{n:,} ({_div(n, 10**6):.2f} M); {n_body:,} without embeddings"),
        ("FLOPs per token", f"forward {_flops(cfg.flops_per_token(t))}, training {_flops(training)} (context {t:,}"
                            + (f"; the masked-LM head at {100 * mask_prob:.3g}% of the tokens)" if masked else ")")),
        ("weights", stored or f"fp32 {_size(4 * n)}, bf16/fp16 {_size(2 * n)}"),
    ]
    if cfg.causal:
        per_token = cfg.kv_cache_bytes(1, bytes_per_value=2)
        bf16 = cfg.kv_cache_bytes(t, batch_size=batch_size)
        fp32 = cfg.kv_cache_bytes(t, batch_size=batch_size, bytes_per_value=4)
        rows.append(("KV cache", f"{_size(per_token)} per token (bf16); {_size(bf16)} bf16, {_size(fp32)} fp32 "
                                 f"for batch {batch_size} x {t:,} tokens"))
    return _table(rows)


def _table(rows: list[tuple[str, str]]) -> str:
    """Label-value lines, the values in one column for every table `info` prints (the longest label is 15)."""
    return "\n".join(f"{k:<15}  {v}" for k, v in rows)


def _flops(n: float) -> str:
    """3 significant figures in the largest unit that keeps them: "1.68 GFLOP", "4.12 MFLOP" (tiny models)."""
    rounded = Decimal(f"{Decimal(n):.3g}")  # as printed: 999.8 MFLOP is "1 GFLOP" (it was "1e+03 MFLOP")
    for scale, unit in ((10**12, "TFLOP"), (10**9, "GFLOP"), (10**6, "MFLOP"), (10**3, "kFLOP")):
        if rounded >= scale:
            return f"{_div(n, scale):.3g} {unit}"
    return f"{n:.3g} FLOP"


def describe_run(folder: Path) -> str:
    """What a run directory holds: steps trained, validation losses, complete checkpoints, data and tokenizer."""
    from neurallayers.training.checkpoint import checkpoint_step, list_checkpoints
    from neurallayers.training.config import RunConfig
    from neurallayers.training.loggers import read_metrics

    run_cfg = RunConfig.from_yaml(folder / "config.yaml", saved=True)  # a refused train/data value only warns
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():  # converted from a Hugging Face folder, or written by hand: its data section is a default
        return _table([("training", "none recorded here (no metrics.jsonl)")])
    steps, vals = 0, []
    for row in read_metrics(metrics):  # a line cut off by a kill is skipped
        if isinstance(row.get("step"), int):
            steps = max(steps, row["step"])
            if (val := _logged_loss(row.get("val_loss"))) is not None:
                vals.append((row["step"], val, row.get("best")))
    checkpoints = list_checkpoints(folder)
    ckpts = [p.name for p in checkpoints]
    if checkpoints:  # the newest checkpoint's step, which a log_interval may not have logged
        steps = max(steps, checkpoint_step(checkpoints[-1]))
    max_steps = run_cfg.train.max_steps
    trained = (f"{steps:,} of {max_steps:,} steps" if steps <= max_steps
               else f"{steps:,} steps (max_steps {max_steps:,})")
    trained += "" if run_cfg.model.causal else " (masked LM)"
    if vals:
        trained += f"; val loss {vals[-1][1]:.4f} at step {vals[-1][0]:,}"
        if best := _best(vals):
            trained += f", best {best[1]:.4f} at step {best[0]:,}"
    tokenizer = run_cfg.data.tokenizer + (f" ({run_cfg.data.vocab_size:,})" if run_cfg.data.vocab_size else "")
    rows = [("training", trained), ("checkpoints", ", ".join(ckpts) or "none")]
    init_from = run_cfg.train.init_from
    if init_from:  # fine-tuned: the source's tokenizer, whatever data.tokenizer says
        rows.insert(0, ("started from", f"{init_from} (fine-tuned)"))
        tokenizer = "the init_from model's"
    rows.append(("data", f"{run_cfg.data.source}; tokenizer {tokenizer}"))
    return _table(rows)


def _best(vals: list[tuple[int, float, object]]) -> tuple[int, float] | None:
    """(step, loss) of the run's best evaluation: the last one training flagged "best". The lowest loss of the log was
    the wrong one where a resume's evaluations scored other windows, data or masks: training starts the best over
    and keeps the new history's best weights. A log without the flags: its lowest finite loss."""
    if any(flag is not None for *_, flag in vals):
        return next(((step, val) for step, val, flag in reversed(vals) if flag is True), None)
    finite = [(step, val) for step, val, _ in vals if math.isfinite(val)]  # NaN is never the best (nor min()'s)
    return min(finite, key=lambda sv: sv[1]) if finite else None


def describe_checkpoint(folder: Path) -> str:
    """Which step of which run a `checkpoints/step-N` folder holds, and whether its save completed."""
    from neurallayers.training.checkpoint import COMPLETE, checkpoint_step, run_checkpoint

    found = run_checkpoint(folder)
    whole = "" if (folder / COMPLETE).is_file() else f" (incomplete: no {COMPLETE} marker, its save was cut short)"
    return _table([("checkpoint", f"step {checkpoint_step(found):,} of the run {found.parent.parent}{whole}")])


def _logged_loss(value) -> float | None:
    """A val loss as metrics.jsonl holds it: a number, or the string "nan" / "inf" (JSON has neither) that a diverged
    run's evaluation writes; skipping those showed the last finite loss as the run's latest."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
        return float(value)
    return None


def run(args: argparse.Namespace) -> int:
    from neurallayers import presets
    from neurallayers.api import is_checkpoint_folder, resolve_model_path
    from neurallayers.config import ModelConfig

    # each sizes one model's figures; the preset list and an encoder's table (no KV cache) ignored them, silently
    sizing = [f"{flag} {value}" for flag, value, given in (("--context", args.context, args.context is not None),
                                                            ("--batch-size", args.batch_size, args.batch_size != 1))
              if given]
    if args.target is None:
        if sizing:
            raise ValueError(f"{' and '.join(sizing)}: the list of presets has no figures to size; name the model "
                             f"too, e.g. `neurallayers info gpt2 {' '.join(sizing)}`")
        for name in presets.PRESETS:
            cfg = ModelConfig.from_name(name)
            shape = f"{cfg.n_layer} x {cfg.n_embd}, context {cfg.block_size}"
            print(f"{name:<18} {cfg.param_count() / 1e6:8.2f} M  {shape}")
        return 0
    cfg = resolve_config(args.target)
    if not cfg.causal and args.batch_size != 1:
        raise ValueError(f"--batch-size {args.batch_size} sizes the KV-cache figure, and an encoder has no KV cache: "
                         "leave it out")
    if args.context and args.context > cfg.block_size:  # the figures still print: what such a length would cost
        print(f"note: --context {args.context:,} is past the model's context, block_size={cfg.block_size:,}",
              file=sys.stderr)
    folder = resolve_model_path(args.target)
    stored = describe_quantized(folder, cfg.param_count()) if (folder / "config.json").is_file() else None
    print(describe(cfg, context=args.context, batch_size=args.batch_size, mask_prob=_mask_prob(folder),
                   stored=stored))
    if (folder / "config.yaml").is_file():
        print(describe_run(folder))
    elif is_checkpoint_folder(folder):
        print(describe_checkpoint(folder))
    elif (folder / "config.json").is_file() and (embedding := describe_sentence_transformers(folder)):
        print(embedding)
    return 0


def _mask_prob(path: Path) -> float:
    """The share of tokens a masked LM predicts in training: its run config's train.mask_prob (a run directory, one of
    its checkpoints or a run config file), else training's default."""
    from neurallayers.api import checkpoint_run, is_checkpoint_folder
    from neurallayers.config import read_yaml_file
    from neurallayers.training.config import RunConfig, TrainConfig

    if path.is_dir():  # only a checkpoint's run: any folder's grandparent was read, another tool's config.yaml too
        run_file = (checkpoint_run(path) if is_checkpoint_folder(path) else path) / "config.yaml"
    else:
        run_file = path if path.suffix.lower() in (".yaml", ".yml") else None
    data = read_yaml_file(run_file) if run_file and run_file.is_file() else None
    if isinstance(data, dict) and data.keys() & {"model", "train", "data"}:
        return RunConfig.from_dict(data, saved=run_file if path.is_dir() else None).train.mask_prob
    return TrainConfig.mask_prob


def describe_quantized(folder: Path, n_params: int) -> str | None:
    """The weights row of an HF folder whose config.json has a quantization_config (GPTQ, AWQ, bitsandbytes, fp8
    ...): its method, bits and size on disk, and the unquantized sizes as such; None for an unquantized folder. The
    row showed the fp32 and bf16 sizes alone, as if the folder held them."""
    from neurallayers.interop.hf import read_json

    quant = read_json(folder / "config.json").get("quantization_config")
    if not quant:
        return None
    quant = quant if isinstance(quant, dict) else {"quant_method": quant}
    bits = quant.get("bits") or quant.get("weight_bits") or (4 if quant.get("load_in_4bit") else None) or \
        (8 if quant.get("load_in_8bit") or quant.get("quant_method") == "fp8" else None)
    method = f"{quant.get('quant_method', 'unknown method')}" + (f", {bits}-bit" if bits else "")
    on_disk = _weight_files_size(folder)
    where = f"{_size(on_disk)} of weight files" if on_disk else "no weight files found"
    return (f"quantized ({method}): {where}; unquantized fp32 {_size(4 * n_params)}, bf16/fp16 "
            f"{_size(2 * n_params)} (NeuralLayers does not load quantized checkpoints)")


def _weight_files_size(folder: Path) -> int:
    """Bytes of an HF folder's weights: model.safetensors, or the files its index names."""
    from neurallayers.interop.hf import PICKLE_INDEX, PICKLE_WEIGHTS, SAFE_INDEX, SAFE_WEIGHTS

    for single, index in ((SAFE_WEIGHTS, SAFE_INDEX), (PICKLE_WEIGHTS, PICKLE_INDEX)):
        if (folder / single).is_file():
            return (folder / single).stat().st_size
        if (folder / index).is_file():
            try:
                names = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError):
                return 0
            return sum((folder / name).stat().st_size for name in names
                       if isinstance(name, str) and Path(name).name == name and (folder / name).is_file())
    return 0


def describe_sentence_transformers(folder: Path) -> str:
    """How an HF folder embeds, where it is a sentence-transformers folder (empty otherwise)."""
    from neurallayers.interop.hf import sentence_transformers_settings

    st = sentence_transformers_settings(folder)
    if not st:
        return ""
    how = [f"{st.get('pooling', 'mean')} pooling"]
    if "max_seq_length" in st:
        how.append(f"texts cut at {st['max_seq_length']:,} tokens")
    if "unbuilt_modules" in st:
        how.append(f"then {', '.join(st['unbuilt_modules'])}: not built here")
    return _table([("embeddings", "sentence-transformers: " + ", ".join(how))])
