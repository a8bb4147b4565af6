"""`neurallayers train`: a YAML run config plus `--section.field value` overrides -> a run directory."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

from neurallayers.cli.common import UserError, non_empty, shell_command, torchrun_command
from neurallayers.cli.field_origins import FieldOrigins

ACCEPTS_OVERRIDES = True  # unknown `--model.x / --train.x / --data.x` arguments are config overrides

EPILOG = """examples:
  neurallayers train --preset demo --data shakespeare --out runs/demo
  neurallayers train --config my.yaml --train.lr 3e-4 --model.n_layer=6 --out runs/exp1
  neurallayers train --config my.yaml --model.rope_scaling.factor 4 --out runs/exp2   # one key of a mapping field
  neurallayers train --config my.yaml --out runs/exp1 --resume          # continue exactly where it stopped
  neurallayers train --out runs/exp1 --resume --train.max_steps 8000    # its saved config, trained longer
  neurallayers train --init-from runs/exp1 --data my_notes.txt --train.lr 1e-4 --out runs/ft   # fine-tune
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--config", type=non_empty,
                        help="YAML run config with sections model (fields or `preset: name`), train, data")
    parser.add_argument("--preset", type=non_empty,
                        help="model preset (shortcut for --model.preset NAME); see `neurallayers info`")
    parser.add_argument("--data", type=non_empty,
                        help="corpus: shakespeare, python-stdlib, a text file, folder, glob or .jsonl "
                        "(shortcut for --data.source)")
    parser.add_argument("--init-from", type=non_empty,
                        help="fine-tune: start from the weights, model config and tokenizer of this "
                        "run directory (or one of its checkpoints/step-N) or Hugging Face model folder "
                        "(shortcut for --train.init_from)")
    parser.add_argument("--out", type=non_empty, help="run directory to write (default: runs/<preset or config name>, "
                        "or runs/<source>-ft for --init-from)")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="continue the run in --out from its newest complete checkpoint, or from the "
                        "checkpoint folder given (whose run is then the default --out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def build_run_config(args: argparse.Namespace, *, base: Path | None = None,
                     flags: tuple[tuple[str, str, str, object], ...] = (), origins: FieldOrigins | None = None):
    """RunConfig from --config (or the YAML file `base` without it), --preset, --data, --init-from, the overrides and
    then `flags`, a verb's own (flag, section, field, value), in that order of precedence (last wins). A bad field is
    named as the user gave it (`--train.lr=-1: must be > 0`, not `TrainConfig.lr=-1: ...`); `origins`, when given,
    learns where each field came from, to name the fields of later errors so too."""
    from neurallayers.training.config import RunConfig, apply_overrides, read_yaml

    source = args.config or base
    data = read_yaml(source) if source is not None else {}
    origins = FieldOrigins() if origins is None else origins
    origins.file(source, data)
    shortcuts = [("--preset", "model", "preset", args.preset), ("--data", "data", "source", args.data),
                 ("--init-from", "train", "init_from", getattr(args, "init_from", None))]
    for flag, section, field, value in shortcuts:
        if value:  # as --model.preset: the config's own model fields stay (they were all dropped)
            data[section] = {**(data.get(section) or {}), field: value}
            origins.flag(flag, section, field)
    overrides = list(getattr(args, "overrides", []))
    data = apply_overrides(data, overrides)
    origins.overrides(overrides)
    for flag, section, field, value in flags:
        data[section] = {**(data.get(section) or {}), field: value}
        origins.flag(flag, section, field)
    if "model" not in data and not (data.get("train") or {}).get("init_from"):
        raise ValueError("no model: give --preset NAME, --config FILE with a model section, --model.preset NAME, "
                         "--init-from RUN_OR_MODEL_FOLDER, or --out RUN --resume to continue a run with its saved "
                         "config")
    try:
        return RunConfig.from_dict(data)
    except (ValueError, FileNotFoundError) as e:  # FileNotFoundError: a train.init_from that is not there
        if (named := origins.renamed(e)) is not None:
            raise _resume_hint(named, base) from None
        if source is not None and isinstance(e, ValueError):  # name the file a bad field may sit in
            raise ValueError(f"{e} (config: {source})") from None
        raise


def _resume_hint(error: BaseException, base: Path | None) -> BaseException:
    """`error`, where it names a field of the resumed run's own config.yaml (`base`), with what to do: a value this
    version refuses (an older version wrote it) is fixed in the file or by an override, as generate and eval warn."""
    message = str(error)
    found = re.match(rf"{re.escape(str(base))}: ((?:train|data)\.\w+)", message) if base is not None else None
    if found is None:
        return error
    return type(error)(f"{message} (the run's saved config: to resume, fix {found[1]} in {base}, or give "
                       f"--{found[1]} VALUE)")


def default_out(args: argparse.Namespace, run) -> Path:
    init_from = run.train.init_from
    name = _preset_given(args) or (Path(args.config).stem if args.config else f"{_source_name(init_from)}-ft"
                                   if init_from else "run")
    return Path("runs") / name


def _preset_given(args: argparse.Namespace) -> str | None:
    """The preset the command line names: `--model.preset NAME`, which wins over `--preset` in the model too, or
    `--preset` (the first went unseen here, and its runs all went to runs/run)."""
    from neurallayers.training.config import apply_overrides

    overridden = apply_overrides({}, list(getattr(args, "overrides", []))).get("model") or {}
    return overridden.get("preset") or args.preset


def _source_name(init_from: str) -> str:
    """A fine-tune's source as a folder name: a checkpoint's is its run's and step's (`llama-step-800`; every run's
    step-800 alone would share one name). A folder is named as the path leads to it: `.` and `..` have no name of
    their own (`--init-from .` trained into runs/-ft); a bundled model's name stays as given."""
    from neurallayers.training.checkpoint import run_checkpoint

    found = run_checkpoint(init_from)
    if found is not None:
        return f"{found.parent.parent.name}-{found.name}"
    path = Path(init_from).expanduser()
    return Path(os.path.abspath(path)).name if path.exists() else path.name


def run(args: argparse.Namespace) -> int:
    import logging

    from neurallayers.training.distributed import PeerLostError
    from neurallayers.training.signals import EXIT_CODES
    from neurallayers.training.trainer import fit

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, one log: the other ranks say only errors
    logging.basicConfig(level=logging.INFO if main_rank else logging.ERROR, format="%(message)s", stream=sys.stderr)
    base = None
    # `--out=~/x` reaches us unexpanded (the shell expands a leading ~ only as a word of its own): a folder named "~"
    # in the working folder, one `rm -rf ~` away from the real one; nl.train and a config's paths read ~ as home
    if args.out:
        args.out = os.path.expanduser(args.out)
    if isinstance(args.resume, str):
        args.resume = os.path.expanduser(args.resume)
    if isinstance(args.resume, str) and not args.out:  # `--resume runs/x/checkpoints/step-800` names its run too
        args.out = str(_run_of(args.resume))
    if args.resume and args.out and not (args.config or args.preset):  # the run's own config, then any overrides
        base = Path(args.out) / "config.yaml"
        if not base.is_file():
            raise FileNotFoundError(f"cannot resume: {args.out} holds no run (no config.yaml)")
    origins = FieldOrigins()
    run_cfg = build_run_config(args, base=base, origins=origins)
    out = Path(args.out) if args.out else default_out(args, run_cfg)
    # fit refuses an --out it must not train into (a file, a run without --resume, a model), before any data work
    with origins.naming():
        try:
            result = fit(run_cfg, out, resume=args.resume, progress=not args.no_progress)
        except PeerLostError as e:  # a fault, not a bug of the run: one line, as a tracker's failure is
            raise UserError(str(e)) from None
    if main_rank:  # under torchrun, one summary
        print(summary(result))
        if result.stopped_reason in EXIT_CODES:
            # quoted: a line to paste into a shell, whatever the folder's name holds (a space, an &)
            print(f"continue with: {_launcher()} train --out {shlex.quote(str(out))} --resume", file=sys.stderr)
    # stopped by a signal: checkpoint saved, but a script running `train && ...` must not go on as if it finished;
    # nor after a non-finite loss stopped it (train.nan_policy: stop)
    if result.stopped_reason == "nan":
        return 1
    return EXIT_CODES.get(result.stopped_reason, 0)


def _run_of(resume: str) -> Path:
    """The run directory a `--resume PATH` names: the run itself, or the run whose checkpoints/step-N it is (through a
    symlink or `..` too: fit's resume target finds it the same way)."""
    from neurallayers.training.checkpoint import run_checkpoint

    if not Path(resume).exists():  # a mistyped step: read as a run of its own, it "held no run (no config.yaml)"
        raise FileNotFoundError(f"cannot resume: {resume} does not exist")
    found = run_checkpoint(resume)
    return found.parent.parent if found is not None else Path(resume)


def _launcher() -> str:
    """How this run was started: the CLI as the shell calls it (.venv/bin/neurallayers where the environment is not
    active), or torchrun (as common.torchrun_command finds it) with as many processes (the strategy is in
    config.yaml)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return shell_command()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = f"--nnodes {world // local} ... " if local != world else ""
    return f"{torchrun_command()} {nodes}--nproc_per_node {local} -m neurallayers"


def summary(result) -> str:
    val = "n/a" if result.final_val_loss is None else f"{result.final_val_loss:.4f}"
    best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
    # a stopped run is not evaluated at its last step: its val loss is the last evaluation's
    stopped = result.stopped_reason in ("interrupted", "terminated", "until_step")
    label = "last val loss" if stopped else "final val loss"
    line = (f"run: {result.run_dir}  steps: {result.steps}  {label}: {val}  best val loss: {best}  "
            f"tokens/s: {result.tokens_per_second:,.0f}  wall: {result.wall_seconds:.0f}s  "
            f"stopped: {result.stopped_reason}")
    if result.first_step_seconds > max(2.0, 10 * result.median_step_seconds):  # compiling: the mean hides the rate
        line += (f"  (the first step took {result.first_step_seconds:.0f}s, then "
                 f"{1e3 * result.median_step_seconds:.0f} ms a step)")
    return line
