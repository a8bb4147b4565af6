"""What every CLI verb shares: the user-error type and small argument helpers."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from neurallayers.checks import is_finite
from neurallayers.files import WriteError


class UserError(Exception):
    """A mistake the user can fix (missing file, bad value): printed as one line, exit status 2, no traceback."""


# Exceptions that come from bad input rather than a bug: the CLI prints them as one line.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError, KeyError, WriteError)


def shell_command() -> str:
    """How the shell that started this CLI calls it: `neurallayers` where its PATH finds this one, else the path it was
    started by (`make demo` runs .venv/bin/neurallayers in a shell without the environment active, where the hint
    `neurallayers generate runs/demo ...` was "command not found"). For the hints of demo and train."""
    script = Path(sys.argv[0])
    if script.name == "__main__.py" and script.parent.name == "neurallayers":  # `python -m neurallayers`: this
        # interpreter, whose scripts need not be on PATH (another module's __main__, pytest's, is no CLI of ours)
        python = shutil.which("python")
        # unresolved: a virtual environment's python is a link to the system's, whose packages differ
        same = python and os.path.abspath(python) == os.path.abspath(sys.executable)
        return f"{'python' if same else _shell_path(Path(sys.executable))} -m neurallayers"
    on_path = shutil.which("neurallayers")
    if script.name != "neurallayers" or (on_path and Path(on_path).resolve() == script.resolve()):
        return "neurallayers"
    return _shell_path(script)


def torchrun_command() -> str:
    """How the shell calls the torchrun that started this process: torchrun starts its workers with its own interpreter,
    so it is the one beside `sys.executable`; `torchrun` where PATH finds that one, else its path (the environment not
    active, where the bare name was "command not found", or another environment's torchrun without neurallayers),
    else that interpreter running torch's launcher module."""
    beside = Path(sys.executable).parent / "torchrun"
    if not beside.is_file():
        return f"{_shell_path(Path(sys.executable))} -m torch.distributed.run"
    on_path = shutil.which("torchrun")
    return "torchrun" if on_path and Path(on_path).resolve() == beside.resolve() else _shell_path(beside)


def _shell_path(program: Path) -> str:
    """The path of `program` as a shell runs it from the current folder."""
    where = os.path.relpath(program)
    if where.startswith(os.pardir):  # outside the current folder: its own path reads better than ../../..
        where = str(program.absolute())
    elif os.sep not in where:  # a bare name is looked up on PATH, not in the current folder: ./neurallayers
        where = os.path.join(os.curdir, where)
    return shlex.quote(where)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_empty(text: str) -> str:
    """argparse type: a name or path that is not "" (an unset shell variable), which a verb read as "not given" and
    replaced with its default: another corpus, the current folder as --out, no --draft."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not is_finite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_model_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=non_empty,
                        help="a run directory (from `neurallayers train`), a Hugging Face model folder, or "
                        "all-MiniLM-L6-v2 (the bundled encoder)")


def add_device_dtype(parser: argparse.ArgumentParser, *, compiles: bool = False) -> None:
    """--device and --dtype; `compiles`: the verb has --compile, which makes bf16 fast on CPUs without bf16 dot
    products too (the other verbs' help named a flag they lack)."""
    unless = " unless decoded with --compile" if compiles else ""
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                        help="weights dtype (bf16 is fast on CPUs with bf16 dot products, AVX512-BF16 or AMX; on "
                             f"other CPUs far slower than fp32{unless}; fp16 only on GPUs); auto: the dtype the "
                             "model stores, as transformers 5's dtype=\"auto\" reads it")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept a Hugging Face folder that only has pytorch_model.bin (read with "
                        "weights_only=True; a pickle can run code: only for files you trust)")


def torch_dtype(name: str):
    from neurallayers.weights import weight_dtype  # one table of dtype names, the one load() reads

    return weight_dtype(name, auto=True)


def load_model(path: str, *, device: str = "auto", dtype: str = "fp32", allow_pickle: bool = False):
    """(model, tokenizer) from a run directory or HF folder, with CLI-style errors; every verb that loads a model
    reads or writes text, so a folder without a tokenizer is refused here."""
    from neurallayers.api import load

    model, tokenizer = load(path, device=device, dtype=torch_dtype(dtype), allow_pickle=allow_pickle)
    if tokenizer is None:
        raise UserError(f"{path} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): copy the model's "
                        "tokenizer files into the folder")
    return model, tokenizer


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets ("::1" -> "[::1]"; "[::1]" stays as it is)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not listening yet), before any model loads: a bad host or a port in use is a
    UserError naming --host or --port, where servers (Gradio, uvicorn) report them late or as something else.
    "[::1]", as a URL writes it, is the address ::1. A name with several addresses ("localhost": ::1 and 127.0.0.1)
    binds the first this machine has, as uvicorn and Gradio would."""
    try:
        infos = socket.getaddrinfo(host.removeprefix("[").removesuffix("]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise UserError(f"--host {host}: not a known host name or address") from None
    error = None
    for family, kind, proto, _, address in infos:
        try:
            return _bound(family, kind, proto, address)
        except OSError as e:  # socket() too: EAFNOSUPPORT for an IPv6 address on a kernel without IPv6
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use; choose another --port") from None
            error = error or e
    if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        raise UserError(f"--host {host}: not an address of this machine (127.0.0.1 for this machine only, "
                        "0.0.0.0 for every network)") from None
    raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _bound(family: int, kind: int, proto: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart while old ones linger
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
