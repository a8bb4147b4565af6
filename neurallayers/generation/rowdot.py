"""The GEMV kernel of the fast decode step, compiled or eager (rowdot.cpp): built on first use, optional.

`torch.ops.neurallayers.rowdot(x, w)` -> x W^T in float32, for x (..., in) and a contiguous (out, in) weight in
float32 or bfloat16. For one row it reads the weight at the speed of a plain read of the same bytes, which neither
F.linear nor, on every CPU, inductor's own multiply-sum does: with AVX-512 and a software prefetch (on a 2-core AMD
Zen 5 host, GPT-2 124M's weights stream at 0.98x the time of a plain read in bf16 against inductor's 1.33x, and 1.03x
against 1.14x in fp32), or with AVX2 and FMA (on a Zen 3 host the compiled step is no faster than inductor's, but the
eager one is 1.6x faster than F.linear in fp32). For 2-32 rows (a small batch's decode step) its batch loops read
each weight row once for all rows, where they were measured faster than oneDNN: on CPUs without AVX-512, and for
bf16 on CPUs without bf16 dot products (batch_dtypes()); elsewhere, and past 32 rows, it calls at::linear (bf16
through float32 copies where the CPU has no bf16 dot products). benchmarks/decode.py shows the whole step.

The same library holds the step's attention for one query over a KV cache (attention.cpp, AVX-512 CPUs:
`torch.ops.neurallayers.decode_attention(q, k, v, mask, scale)`, attention_dtypes()), which nn.Attention calls in a
fast decode step.

The kernels are compiled with the C++ compiler torch.compile already needs on CPU ($CXX, else c++), once per machine and
torch version, into $NEURALLAYERS_CACHE/kernels (default ~/.cache/neurallayers/kernels), and loaded with
torch.ops.load_library; the library's SHA-256 is written beside it last, and a cached library that does not match it
(cut short by a copy or a crash) is built again rather than loaded. Where it cannot be used (not x86-64, no AVX2, no
compiler, NEURALLAYERS_ROWDOT=0) the step falls back to inductor's multiply-sum when compiled and to F.linear when
eager, with a warning only when the build itself failed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

# The decode kernels, built into one library: the GEMV (rowdot.cpp) and one query's attention (attention.cpp)
SOURCES = (Path(__file__).with_name("rowdot.cpp"), Path(__file__).with_name("attention.cpp"))
_DTYPE_BITS = {torch.float32: 1, torch.bfloat16: 2}
_LOCK = threading.Lock()  # one build and one registration per process, even when two threads prepare models at once


def dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes rowdot runs on this machine; () where it cannot. Builds and loads it on the first call."""
    with _LOCK:
        return _dtypes(_load())


def batch_dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes whose products with several rows of x (a small batch's decode step) rowdot runs with its own
    loops here; the others go to at::linear inside the op. () where the kernel cannot run."""
    with _LOCK:
        return _dtypes(_load() and int(torch.ops.neurallayers.rowdot_batch_dtypes()))


def _dtypes(bits: int) -> tuple[torch.dtype, ...]:
    """The dtypes of the kernel's dtype bits (rowdot_dtypes, rowdot_batch_dtypes)."""
    return tuple(dtype for dtype, bit in _DTYPE_BITS.items() if bits & bit)


def isa() -> str:
    """The instruction sets the kernel's loops use here, by dtype (e.g. "fp32 avx2, bf16 avx2"); "" where it cannot
    run. NEURALLAYERS_ROWDOT=avx2 makes an AVX-512 machine use the AVX2 loops."""
    with _LOCK:
        bits = _load()
    return str(torch.ops.neurallayers.rowdot_isa()) if bits else ""


@functools.cache
def _load() -> int:
    """Build and load the kernel once per process; the dtypes it supports as bits (0: none)."""
    if os.environ.get("NEURALLAYERS_ROWDOT", "1") == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return 0
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        return 0  # torch.compile will say that it needs a compiler
    try:
        torch.ops.load_library(str(_build(cxx)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        # one library: a failure in either source loses both kernels, so the warning names both
        warnings.warn(f"the decode kernels (rowdot.cpp's GEMV, attention.cpp's attention) could not be built, so "
                      f"decode uses torch's and inductor's: {e}", stacklevel=3)
        return 0
    torch.library.register_fake("neurallayers::rowdot")(_rowdot_fake)
    torch.library.register_fake("neurallayers::decode_attention")(_attention_fake)
    return int(torch.ops.neurallayers.rowdot_dtypes())


def _rowdot_fake(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w.new_empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)


def _attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    return q.new_empty(q.shape)  # contiguous (B, H, 1, D)


def attention_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes of `torch.ops.neurallayers.decode_attention(q, k, v, mask, scale)` here (one query's attention over
    a KV cache, attention.cpp: CPUs with AVX-512); () where it cannot run. Builds and loads the kernels first."""
    with _LOCK:
        return _dtypes(_load() and int(torch.ops.neurallayers.decode_attention_dtypes()))


def _build(cxx: str) -> Path:
    """The kernel's shared library, compiled unless a build of the same source, flags and torch is cached."""
    from torch.utils import cpp_extension

    from neurallayers.files import default_cache_dir, fsync_dir, write_text_atomic

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libs = cpp_extension.library_paths()
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-DNDEBUG",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    links = [f"-L{p}" for p in libs] + [f"-Wl,-rpath,{p}" for p in libs] + ["-lc10", "-ltorch_cpu"]
    sources = [path.read_bytes() for path in SOURCES]
    key = hashlib.sha256(b"\0".join([*sources, torch.__version__.encode(), cxx.encode(), *map(str.encode, flags)]))
    out = Path(default_cache_dir()).expanduser() / "kernels" / f"rowdot-{key.hexdigest()[:16]}.so"
    if _intact(out):
        return out
    # Compile under a temporary name, fsync and rename: a concurrent or killed build, or a power cut, never leaves a
    # half-written library under the final name.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    except OSError:
        if out.is_file() and not _digest_path(out).exists():
            return out  # built before digests were written, in a folder this process cannot write to: as before
        raise
    os.close(fd)
    try:
        done = subprocess.run([cxx, *flags, *includes, *map(str, SOURCES), "-o", tmp, *links], capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[-2000:]}")
        with open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_text_atomic(_digest_path(out), digest)  # last: it vouches for the whole library
    return out


def _digest_path(library: Path) -> Path:
    return library.with_suffix(".sha256")


def _intact(library: Path) -> bool:
    """Whether `library` is the whole file a finished build wrote: its SHA-256 is the one written beside it after it.
    A cached library cut short (a copy, a crash before the disk held it) crashed the process in dlopen with SIGBUS,
    or, empty, failed to load with a warning in every process, for good; now it is built again."""
    try:
        want = _digest_path(library).read_text(encoding="utf-8").strip()
        return want == hashlib.sha256(library.read_bytes()).hexdigest()
    except OSError:
        return False
