"""`neurallayers batch`: offline, resumable generation (decoder) or embedding (encoder) of a JSONL file.

Input lines: {"id": optional, "prompt": "...", per-line settings such as "max_new_tokens"} ("text" works too);
the full format, the outputs and how resuming works are described in the docstring of neurallayers.batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neurallayers.cli.common import add_device_dtype, add_model_path, load_model, non_empty, positive_int
from neurallayers.cli.generate import (
    add_sampling_arguments,
    check_vocab,
    flag_names,
    generation_config,
    use_model_defaults,
)

EPILOG = """input: one JSON object per line, e.g.
  {"id": "q1", "prompt": "Once upon a time", "max_new_tokens": 32, "temperature": 0}
"id" is optional (default: the line number); "text" may stand for "prompt". Lines may override max_new_tokens,
min_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty,
no_repeat_ngram_size, stop, seed and ignore_eos. An encoder model embeds each "text" instead. A bad line (not JSON,
an unknown field, no prompt, a bad value) stops the run before any work, naming its line number.

output: .jsonl (one result per input line, in input order when done); .npy / .npz for embeddings.
Interrupted? Run the same command again: finished batches are kept, the rest is computed. A resume with a changed
input file, settings or model is refused (pass --overwrite to start again), and so is an output file that no
interrupted run left (--overwrite replaces it)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_path(parser)
    parser.add_argument("--input", type=non_empty, required=True, help="the prompts: a JSONL file (see below)")
    parser.add_argument("--output", type=non_empty, required=True,
                        help="results .jsonl; for an encoder also .npy (N x C float32) or .npz (ids, embeddings)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per batch")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier run's output instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_dtype(parser)
    _add_decoding(parser)
    _add_embedding(parser)


def _add_decoding(parser: argparse.ArgumentParser) -> None:
    # Seeded by default, so that a resumed sampling run gives what an uninterrupted one would
    add_sampling_arguments(parser, seed=0, seed_help='each line samples with a seed made from this one and its id, or '
                           'with its own "seed" (default: 0)')


def _add_embedding(parser: argparse.ArgumentParser) -> None:
    e = parser.add_argument_group("embeddings (encoder models)")
    e.add_argument("--pooling", type=non_empty, default=None,
                   help="mean, cls, max, mean_sqrt_len_tokens, weightedmean, lasttoken, or several joined by + "
                   "(default: the model's sentence-transformers pooling, else mean)")
    e.add_argument("--no-normalize", action="store_true", help="keep raw vectors instead of L2-normalising them")
    e.add_argument("--max-length", type=positive_int, default=None,
                   help="truncate texts to this many tokens (None: the tokenizer's limit)")


def run(args: argparse.Namespace) -> int:
    from neurallayers.api import resolve_model_path
    from neurallayers.batch import model_files_identity, run_batch

    if Path(args.input).is_dir():
        raise IsADirectoryError(f"--input {args.input} is a folder; give a JSONL file")
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"--input: no such file: {args.input}")
    _check_output_folder(args.output)
    model, tokenizer = load_model(args.path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    _check_flags_apply(args, causal=model.config.causal)
    if model.config.causal:
        use_model_defaults(args, args.path)
    config = generation_config(args) if model.config.causal else None
    if config is not None:
        check_vocab(config, model)
    try:
        with flag_names(bounds=False):  # the run's settings by their flags; a line's fields keep the line's names
            result = run_batch(model, tokenizer, args.input, args.output, config=config, batch_size=args.batch_size,
                               pooling=args.pooling, normalize=False if args.no_normalize else None,
                               max_length=args.max_length,
                               model_files=model_files_identity(resolve_model_path(args.path)),
                               overwrite=args.overwrite, progress=not args.no_progress)
    except KeyboardInterrupt:  # what is written stays: say how to go on (the CLI then prints "interrupted")
        print(_interrupted_note(Path(args.output), overwrite=args.overwrite), file=sys.stderr)
        raise
    note = f", {result.repaired_bytes} bytes of an unfinished batch redone" if result.repaired_bytes else ""
    print(f"{result.output}: {result.total} records ({result.computed} computed now, {result.resumed} from an "
          f"earlier run{note})")
    return 0


def _interrupted_note(output: Path, *, overwrite: bool) -> str:
    """Where the records written so far are, and the command that goes on from them: vectors wait in the parts
    folder (the .npy is written at the end), and rerun with --overwrite the command would discard them."""
    from neurallayers.batch import VECTOR_SUFFIXES

    kept = output.with_name(output.name + ".parts") if output.suffix.lower() in VECTOR_SUFFIXES else output
    how = "the same command without --overwrite" if overwrite else "the same command"
    return f"the records written so far are kept in {kept}: {how} goes on from them"


def _check_output_folder(output: str) -> None:
    """--output's folder is made when missing, but not where a file stands in its path (that said only "[Errno 17]
    File exists", after the model had loaded)."""
    from neurallayers.files import file_in_the_way

    if (blocker := file_in_the_way(output)) is not None:
        raise NotADirectoryError(f"--output {output}: {blocker} is a file, not a folder")


def _check_flags_apply(args: argparse.Namespace, *, causal: bool) -> None:
    """A decoder generates and an encoder embeds: the other kind's flags (--temperature for an encoder, --pooling for
    a decoder) were silently ignored, so a user believed the output sampled or pooled as asked."""
    unused = _given(args, _add_embedding if causal else _add_decoding)
    if unused:
        kind, use = ("a decoder, which generates", "an encoder's embeddings") if causal else \
            ("an encoder, which embeds", "a decoder's generation")
        raise ValueError(f"{args.path} is {kind}: {', '.join(unused)} {'are' if len(unused) > 1 else 'is'} for {use}; "
                         f"leave {'them' if len(unused) > 1 else 'it'} out")


def _given(args: argparse.Namespace, add) -> list[str]:
    """The flags, of those `add(parser)` defines, that `args` sets to other than their defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return [action.option_strings[0] for action in parser._actions
            if getattr(args, action.dest) != action.default]
