"""Safe weight files: validated safetensors reading, atomic writing with tied weights, state-dict checks.

Every loader in NeuralLayers goes through here: a corrupt, truncated or hostile file fails fast with a message
naming the file, and a pickle is only ever read with `weights_only=True`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import stat
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from neurallayers.checks import is_int
from neurallayers.files import fsync_dir, keep_mode

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
# A file's tensors: a few thousand in any real model file (big models are sharded). A well-formed 67 MB header of a
# million empty tensors (under the format's limit) took 41 s and 1.4 GB to read before the key check refused it.
MAX_TENSORS = 1 << 16
TIED_KEY = "neurallayers_tied"  # metadata entry: JSON {alias: saved_name}

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class CheckpointError(ValueError):
    """A weight or checkpoint file that is corrupt, unsafe or does not fit the model."""


# ----- reading -----

def validate_safetensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Checks a safetensors file's structure without reading its tensor data.

    Returns:
        (tensor entries {name: {"dtype", "shape", "data_offsets"}}, metadata {str: str}).

    Raises:
        CheckpointError: naming the file and what is wrong (header size, JSON, dtype, offsets; a folder, FIFO or
            symlink loop where the file should be).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    size = _regular_file_size(path, "weights file")
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} bytes is over the {MAX_HEADER_BYTES}-byte limit; "
                                  "the file is corrupt or not safetensors")
        if 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} runs past the end of the {size}-byte file "
                                  "(truncated or not safetensors)")
        raw = f.read(n)
    if raw.count(b"{") > MAX_TENSORS + 2:  # each entry is an object, and JSON cannot escape a brace: before parsing
        raise CheckpointError(f"{path}: header lists over {MAX_TENSORS:,} tensors; a model file holds a few thousand "
                              "(the file is corrupt or not a model's)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    except ValueError:  # an integer past Python's 4300-digit parsing limit: a bare ValueError that named no file
        raise CheckpointError(f"{path}: header is not a safetensors header (a number thousands of digits long)") \
            from None
    except RecursionError:  # '[[[[...' nested past Python's stack: no safetensors header is
        raise CheckpointError(f"{path}: header is not a safetensors header (JSON nested too deep)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: __metadata__ must be an object of strings")
    data_size = size - 8 - n
    for name, entry in header.items():
        _check_entry(path, name, entry, data_size)
    return header, metadata


def _regular_file_size(path: Path, what: str) -> int:
    """The size of `path`, a regular file (through symlinks). A directory, a FIFO (whose read would block until a
    writer comes) or a symlink loop is refused in one line rather than taken for a missing file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        broken = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        raise FileNotFoundError(f"no {what} at {path}{broken}") from None
    except OSError as e:  # ELOOP, ENAMETOOLONG, EACCES on a folder above
        raise CheckpointError(f"{path}: cannot open the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO, socket or device"
        raise CheckpointError(f"{path} is {kind}, not a {what}")
    return st.st_size


def _check_entry(path: Path, name: str, entry: object, data_size: int) -> None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CheckpointError(f"{path}: tensor {name!r} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    ok_shape = isinstance(shape, list) and all(is_int(d) and d >= 0 for d in shape)
    if not ok_shape:
        raise CheckpointError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
    ok_offsets = isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
    if not ok_offsets or not 0 <= offsets[0] <= offsets[1]:
        raise CheckpointError(f"{path}: tensor {name!r} has bad data_offsets {offsets!r}")
    if offsets[1] > data_size:
        raise CheckpointError(f"{path}: tensor {name!r} ends at byte {offsets[1]} of the data but the file holds "
                              f"only {data_size} data bytes (truncated?)")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(f"{path}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but shape {shape} "
                              f"of {dtype} needs {expected}")


def read_safetensors(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, validated first; tied weights saved once come back as aliases."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _, metadata = validate_safetensors(path)
    try:
        sd = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights: {e}") from None
    ties = _parse_ties(path, metadata)
    for alias, target in ties.items():
        if target not in sd:
            raise CheckpointError(f"{path}: tied weight {alias!r} points at missing tensor {target!r}")
        sd[alias] = sd[target]
    return sd


def _parse_ties(path: Path, metadata: dict) -> dict[str, str]:
    if TIED_KEY not in metadata:
        return {}
    try:
        ties = json.loads(metadata[TIED_KEY])
    except (TypeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: metadata {TIED_KEY!r} is not valid JSON") from None
    if not isinstance(ties, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ties.items()):
        raise CheckpointError(f"{path}: metadata {TIED_KEY!r} must map names to names")
    return ties


def torch_load_safe(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> object:
    """`torch.load(weights_only=True)`: plain tensors and containers only, never code."""
    path = Path(path)
    _regular_file_size(path, "checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and not zipfile.is_zipfile(path):  # bytes, not a pickle's objects
            raise CheckpointError(f"{path}: not a readable torch checkpoint (not a torch.save archive: corrupt, "
                                  "or another kind of file)") from None
        lines = [line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()] or [type(e).__name__]
        # without torch's advice to allowlist the global "if you trust" it: this file's global is an attacker's
        lines[0] = lines[0].split(" Please use ")[0]
        raise CheckpointError(f"refusing to load {path}: it contains code/objects; only plain tensors are accepted "
                              f"({lines[0]})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        first = (str(e).splitlines() or [f"{type(e).__name__}: empty or cut short"])[0]  # an empty file: EOFError('')
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None
    except (KeyError, IndexError, struct.error):  # what torch's unpickler raises on random bytes: "error: 101"
        raise CheckpointError(f"{path}: not a readable torch checkpoint (not a torch.save archive: corrupt, or "
                              "another kind of file)") from None
    except (FileNotFoundError, PermissionError):  # gone since the check, or unreadable: the OS's own words say it
        raise
    except OSError as e:  # torch's zip reader on an archive cut short: a bare "[Errno 22] Invalid argument"
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt: "
                              f"{e.strerror or e})") from None


# ----- checking -----

def _finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in `t`; float8 tensors upcast first (torch has no isfinite for them: an fp8 weight in a folder
    was a NotImplementedError traceback)."""
    return bool(torch.isfinite(t if t.element_size() > 1 else t.float()).all())


def check_state_dict(model_or_expected: nn.Module | dict[str, tuple[int, ...]], sd: dict[str, torch.Tensor], *,
                     ignore: Iterable[str] = (), finite: bool = True, source: str = "state dict") -> None:
    """Raises CheckpointError when `sd` does not fit: missing, unexpected or mis-shaped keys, NaN/Inf values.

    Args:
        model_or_expected: a module (its state_dict shapes) or {name: shape}.
        sd: the tensors to check.
        ignore: names to leave out of the comparison on both sides (e.g. non-persistent buffers).
        finite: also reject floating tensors holding NaN or Inf.
        source: what `sd` is, for the message (usually the file path).
    """
    floats = set()  # names the model holds as floating point: integer or bool values there are no weights
    if isinstance(model_or_expected, nn.Module):
        state = model_or_expected.state_dict()
        expected = {k: tuple(v.shape) for k, v in state.items()}
        floats = {k for k, v in state.items() if v.is_floating_point()}
    else:
        expected = {k: tuple(v) for k, v in model_or_expected.items()}
    skip = set(ignore)
    want = {k: v for k, v in expected.items() if k not in skip}
    have = {k: v for k, v in sd.items() if k not in skip}
    problems = []
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shaped = sorted(f"{k} {tuple(have[k].shape)} != expected {want[k]}"
                    for k in set(want) & set(have) if tuple(have[k].shape) != want[k])
    if missing:
        problems.append(_few(f"{len(missing)} missing", missing))
    if unexpected:
        problems.append(_few(f"{len(unexpected)} unexpected", unexpected))
    if shaped:
        problems.append(_few(f"{len(shaped)} mis-shaped", shaped))
    typed = sorted(f"{k} ({str(have[k].dtype).removeprefix('torch.')})" for k in floats & set(have)
                   if not have[k].is_floating_point())
    if typed:
        problems.append(_few(f"{len(typed)} not floating point", typed))
    if finite and not problems:
        bad = sorted(k for k, v in have.items() if v.is_floating_point() and not _finite(v))
        if bad:
            problems.append(_few(f"{len(bad)} with NaN/Inf values", bad))
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))


# a numbered part of a weight's name: its layer (blocks.3., transformer.h.3., model.layers.3., encoder.layer.3.)
_NUMBERED = re.compile(r"(?:^|\.)(\d{1,18})(?=\.|$)")  # not int() of a 5000-digit name


def check_layer_count(sd: dict[str, torch.Tensor], n_layer: int, *, source: str = "state dict") -> None:
    """Raises CheckpointError when a config's `n_layer` is more than `sd` holds weights for, before any model (even on
    the meta device: one Python module a layer) is built to compare shapes with: n_layer 100000 in a config.json ran
    for minutes before its weights were refused, 10**9 until memory ran out. Every layer has weights named with its
    index; every number in a name counts as a layer held, so this never refuses what the shape check would take."""
    held = {int(n) for name in sd for n in _NUMBERED.findall(name)}
    have = len({i for i in held if i < n_layer})
    if n_layer <= have:
        return
    missing = [f"layer {i}" for i in range(min(n_layer, have + 5)) if i not in held][:5]  # never range(n_layer)
    noun = "layer" if have == 1 else "layers"
    more = ", ..." if n_layer - have > len(missing) else ""
    raise CheckpointError(f"{source} does not fit the model: the config's n_layer={n_layer} but it holds the weights "
                          f"of {have} {noun}; {n_layer - have} missing: {', '.join(missing)}{more}")


def _few(label: str, names: list[str], n: int = 5) -> str:
    more = f", ... (+{len(names) - n} more)" if len(names) > n else ""
    return f"{label}: {', '.join(names[:n])}{more}"


# ----- writing -----

def _new_file_mode() -> int:
    """The permissions open() gives a new file here: 0o666 less the umask (read by setting it, then restoring)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _share_as_new_files(path: Path) -> None:
    """Give `path` a new file's permissions: safetensors creates it 0o600, unreadable to a team or a server's user.
    Best effort: vfat and exFAT (Linux) refuse with EPERM a mode they cannot store, and the file is just as good."""
    try:
        os.chmod(path, _new_file_mode())
    except OSError:
        pass


def save_safetensors(sd: dict[str, torch.Tensor], path: str | os.PathLike, *,
                     metadata: dict[str, str] | None = None) -> Path:
    """Writes `sd` atomically (temp file, fsync, rename, fsync of the folder).

    Tensors sharing storage (tied embeddings) are saved once; the tie goes to the metadata and
    `read_safetensors` restores it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    unique: dict[str, torch.Tensor] = {}
    ties: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in sd.items():
        t = t.detach()
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
               t.dtype)
        if t.numel() and key in seen:
            ties[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t.to("cpu").contiguous()
    meta = dict(metadata or {})
    if ties:
        meta[TIED_KEY] = json.dumps(ties)
    # safetensors writes its own temp file (.tmpXXXXXX) beside the name it is given, which a kill would leave behind
    # under a name no cleanup knows: it writes inside a folder of ours instead, which clean-ups remove whole
    folder = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp = folder / folder.name
    try:
        _fresh_dir(folder)
        try:
            save_file(unique, str(tmp), metadata=meta or None)
        except SafetensorError as e:  # its words for an OS error: "I/O error: No space left on device (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None:
                raise
            # the OSError open() would raise, which callers catch and the CLI says in one line (convert: a traceback)
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e
        if not keep_mode(path, tmp):  # a re-save keeps the file's permissions, a new file gets the umask's
            _share_as_new_files(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def _fresh_dir(path: Path) -> None:
    """An empty folder at `path`, replacing what an earlier process of the same pid left there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.mkdir()


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# the dtypes a model's weights are kept in; a file's others (float8) load as float32, which holds their values exactly
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def stored_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype to keep weights read from a file in: the one its floating-point tensors share, or for a mix the
    narrowest that holds all of them exactly (bf16 + fp16: float32); None without floating-point tensors."""
    found = {t.dtype for t in sd.values() if t.is_floating_point()}
    if not found:
        return None
    if not found <= set(_WEIGHT_DTYPES):
        found = (found & set(_WEIGHT_DTYPES)) | {torch.float32}
    dtype = found.pop()
    for other in found:
        dtype = torch.promote_types(dtype, other)
    return dtype


# float64 by name too: torch.float64 was taken but "float64" (transformers' dtype="float64") refused
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "fp64": torch.float64, "float64": torch.float64}


def weight_dtype(dtype: torch.dtype | str | None, *, auto: bool = False) -> torch.dtype | str | None:
    """A dtype for weights from a torch.dtype or its name ("fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16",
    "fp64"/"float64", an optional "torch." prefix); None stays None, and with `auto` "auto" stays "auto" (transformers
    5's dtype="auto": the dtype the checkpoint stores, which only a loader can read). One table, read by load(),
    load_hf() and the CLI's --dtype."""
    # refused before the weights are read; float8 is floating point, but no op of a forward runs in it
    if isinstance(dtype, torch.dtype) and dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"dtype={dtype}: weights need a floating-point dtype (float32, bfloat16, float16, float64)")
    if dtype is None or isinstance(dtype, torch.dtype) or (auto and dtype == "auto"):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    names = ", ".join((*_DTYPES, "auto") if auto else _DTYPES)
    raise ValueError(f"dtype={dtype!r}: expected a torch.dtype or one of {names}")
