"""`neurallayers <verb>`: a dict of verb -> module; each module adds its arguments and runs.

User mistakes (bad paths, values, names) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import errno
import importlib
import os
import sys
import warnings

# verb -> module under neurallayers.cli (imported only when its verb runs, so `--help` stays fast)
VERBS = {
    "demo": "Train the demo model on Shakespeare for a few minutes, then generate from it.",
    "train": "Train a model from a YAML config and --section.field overrides.",
    "generate": "Generate text from a run directory or Hugging Face folder.",
    "chat": "Talk with a model in the terminal, through its chat template.",
    "eval": "Loss and perplexity of a model on a corpus.",
    "info": "Parameters, FLOPs per token and memory of a preset, config file or run.",
    "prepare": "Tokenize a corpus into the cached token files that training reads.",
    "convert": "Convert between a run directory and a Hugging Face folder.",
    "serve": "Serve a model over an OpenAI-compatible HTTP API.",
    "batch": "Offline, resumable batch generation or embedding of a JSONL file.",
    "ui": "A web playground (Gradio) for a model.",
}


def _quiet_telemetry() -> None:
    # Libraries that phone home unless told not to; this machine may have no network at all.
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                       "DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1"}.items():
        os.environ.setdefault(key, value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help, unless the help already states it or there is none to state; an epilog's
    line breaks kept."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse's errors in the CLI's one-line form (not the usage block and then the error). No abbreviations of
    long flags: argparse took `generate --penalty 1.3` for --penalty-alpha (contrastive search) and `--length 50` for
    --length-penalty, silently; a prefix is named as a guess instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self._trial = False  # parse_args' second parse: its errors are raised, not printed

    def _print_message(self, message: str, file=None) -> None:
        # argparse drops an OSError of this write: `--help > FILE` on a full disk exited 0 with FILE empty. The help
        # and --version are written and flushed here, so main() reports them as any output it cannot write
        if not message:
            return
        if file is not None and file is sys.stdout:
            file.write(message)
            file.flush()
        else:
            super()._print_message(message, file)

    def error(self, message: str):
        if self._trial:
            raise _TrialError(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        # intermixed: positionals after options are still positionals (`generate RUN --max-new-tokens 2 -- "-x"` was
        # "unrecognized arguments: -x": the empty prompts list had been taken before the options); argparse allows it
        # in a verb's parser, not in the one of verbs
        parse = self.parse_known_args if self._subparsers else self.parse_known_intermixed_args
        args = list(sys.argv[1:] if args is None else args)
        plain_rest = []
        if "--" in args and not self._subparsers:
            # Python 3.11's intermixed parsing drops a '--' that comes before every positional (`info -- -dir` read
            # -dir as an option): the plain parse first, intermixed only where it leaves positionals over
            parsed, plain_rest = self.parse_known_args(args, copy.copy(namespace))
            if not plain_rest:
                return parsed
        try:
            self._trial = bool(plain_rest)
            parsed, rest = parse(args, namespace)
        except _TrialError:  # it dropped the '--' and failed where the plain parse did not (`convert -- -a -b
            rest = plain_rest  # --overwrite` took --overwrite for the flag, then said src and dst were missing)
        finally:
            self._trial = False
        if plain_rest and _separator_lost(args, rest):
            rest = plain_rest  # the plain parse read the positionals after '--' right: its leftovers are the extras
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}{self.close_option(rest)}")
        return parsed

    def check_overrides(self, rest: list[str]) -> None:
        """A verb that passes `--section.field` overrides through: a mistyped flag of its own (`--init_from`) is named
        with the flag meant, not reported as a malformed override."""
        for arg in rest:
            name = arg.split("=", 1)[0]
            if not name.startswith("--") or "." in name or not (hint := self.close_option([name])):
                continue
            # '--dropout' is the model field (the override's error names --model.dropout), not a typo of '--out';
            # '--init_from' is our '--init-from' spelled with an underscore
            if hint != f" (did you mean {name.replace('_', '-')}?)" and _config_field(name[2:].replace("-", "_")):
                continue
            self.error(f"unrecognized argument {name}{hint}")

    def close_option(self, rest: list[str]) -> str:
        """' (did you mean --max-new-tokens?)' for the first unknown option near one of ours: argparse names none."""
        known = [s[2:] for action in self._actions for s in action.option_strings if s.startswith("--")]
        for arg in rest:
            name = arg.split("=", 1)[0]
            if not name.startswith("--") or len(name) < 3 or name[2:] in known:  # one of ours, written after '--'
                continue
            typed = name[2:].replace("_", "-")
            # the names without their dashes: with them, '--bogus' is close to '--out'
            hint = [k for k in known if k.startswith(typed)]
            if not hint and (verbs := _verbs_with(f"--{typed}", besides=self.prog)):
                # `generate RUN --port 8000`: the flag of another verb, typed after the wrong one
                return f" (--{typed} belongs to {_listed(verbs)})"
            hint = hint or difflib.get_close_matches(typed, known, n=1)
            if hint:
                return f" (did you mean {' or '.join(f'--{h}' for h in hint)}?)"
        return ""


class _TrialError(Exception):
    """An argparse error of a parse whose leftovers another parse may give instead."""


def _separator_lost(args: list[str], rest: list[str]) -> bool:
    """Whether the intermixed parse dropped the '--' of `args`: it left over an option-like argument written only after
    it, where nothing is an option (`info -- -dir extra` named -dir, not extra, as unrecognized)."""
    cut = args.index("--")
    after = set(args[cut + 1:]) - set(args[:cut])
    return any(arg.startswith("-") and arg in after for arg in rest)


def _verbs_with(flag: str, *, besides: str) -> list[str]:
    """The verbs, other than the parser named `besides`, that take `flag`."""
    found = []
    for verb in VERBS:
        if f"neurallayers {verb}" != besides and flag in build_verb_parser(verb)[1]._option_string_actions:
            found.append(verb)
    return found


def _listed(verbs: list[str]) -> str:
    return verbs[0] if len(verbs) == 1 else f"{', '.join(verbs[:-1])} and {verbs[-1]}"


def _config_field(name: str) -> bool:
    from neurallayers.training.config import SECTIONS, _section_of

    return name in SECTIONS or _section_of(name) is not None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="neurallayers", description="Build, train, generate from and serve "
                                     "transformer models.")
    from neurallayers import __version__

    parser.add_argument("--version", action="version", version=f"neurallayers {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, summary in VERBS.items():
        sub.add_parser(verb, help=summary, description=summary, add_help=False)
    return parser


def build_verb_parser(verb: str):
    """(the verb's module, its argument parser)."""
    module = importlib.import_module(f"neurallayers.cli.{verb}")
    parser = _Parser(prog=f"neurallayers {verb}", description=VERBS[verb], formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    _quiet_telemetry()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in VERBS:
        close = difflib.get_close_matches(argv[0], VERBS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parser.error(f"unknown verb {argv[0]!r}{hint}; verbs: {', '.join(VERBS)}")
    if not argv or argv[0] not in VERBS:
        try:
            parser.parse_args(argv or ["--help"])  # prints the help, --version, or the argparse error
        except OSError as e:
            return _unwritten_output(e, "neurallayers")
        return 2
    verb = argv[0]
    if sys.stdin is None:  # started with stdin closed (`<&-`): empty, as `< /dev/null` (generate and chat read it)
        sys.stdin = open(os.devnull)
    if sys.stdout is None:  # started with stdout closed (`>&-`): the output would be lost, or a traceback
        print(f"neurallayers {verb}: error: standard output is closed; redirect it (> FILE, or > /dev/null to "
              "discard it)", file=sys.stderr)
        return 2
    from neurallayers.cli.common import USER_ERRORS

    formatwarning = warnings.formatwarning
    # a warning as one line in the CLI's words: Python's form named a file of the package and printed its source line
    # ("common.py:120: UserWarning: fp16 weights on a CPU ..." and then "  model, tokenizer = load(...)")
    warnings.formatwarning = lambda message, category, *_, **__: f"neurallayers {verb}: warning: {message}\n"
    try:
        module, verb_parser = build_verb_parser(verb)  # imports torch: seconds in which Ctrl-C is likely
        if getattr(module, "ACCEPTS_OVERRIDES", False):  # train: --section.field value pairs pass through
            args, rest = verb_parser.parse_known_args(argv[1:])
            if "--" in rest:  # `train --preset tiny -- --train.lr 1e-4`: the separator is no override
                rest.remove("--")
            verb_parser.check_overrides(rest)
            args.overrides = rest
        else:
            args = verb_parser.parse_args(argv[1:])
        status = int(module.run(args) or 0)
        # the output still buffered (stdout a pipe or file) is written here, where its errors are caught below: at
        # exit, a reader gone (`| head -1`) or a full disk was Python's "Exception ignored ... BrokenPipeError" and 120
        sys.stdout.flush()
        return status
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else _os_message(e)
        print(f"neurallayers {verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neurallayers {verb}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        return _unwritten_output(e, f"neurallayers {verb}")
    finally:
        warnings.formatwarning = formatwarning


def _unwritten_output(e: OSError, prog: str) -> int:
    """The exit status for output that could not be written; any other OSError is raised again."""
    if isinstance(e, BrokenPipeError):  # `neurallayers info run | head`: the reader left; say nothing more to it
        _discard_output()
        return 1
    if e.errno not in _OUTPUT_FULL or e.filename is not None:  # a named file's error: WriteError names it
        raise e
    # `> /dev/full`, a full disk or quota under `> FILE`: the traceback of a print() was all the user saw
    print(f"{prog}: error: cannot write the output: {e.strerror}", file=sys.stderr)
    _discard_output()
    return 2


# errno values of a write that found no room (ENOSPC: a full disk, /dev/full; EDQUOT: a quota; EFBIG: a file-size limit)
_OUTPUT_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _discard_output() -> None:
    """Points stdout at /dev/null, so that the interpreter's last flush of what is left in its buffer fails no more
    (it printed "Exception ignored in: <_io.TextIOWrapper name='<stdout>'>" and exited 120)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO): nothing flushes it at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _os_message(e: BaseException) -> object:
    """An OSError raised by open()/mkdir() as "PATH: Permission denied", not "[Errno 13] Permission denied: 'PATH'"."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return e


if __name__ == "__main__":
    sys.exit(main())
