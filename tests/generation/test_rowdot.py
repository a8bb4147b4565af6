"""generation.rowdot: the batch-1 GEMV kernel equals F.linear, the compiled step calls it, a failed build warns."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from nl_gen_helpers import check_rowdot, next_logits, recording, tiny_lm

from neurallayers.generation import rowdot
from neurallayers.generation.fast import decode_step_for, prepare_for_decode
from neurallayers.generation.generate import forward_step

DTYPES = rowdot.dtypes()
# Every row length: whole blocks, a tail, shorter than one block; every row count: whole groups of four, and not.
SHAPES = [(1, 1), (5, 7), (33, 100), (2304, 768), (768, 3072), (9, 95)]
# Batches: blocks of rows of x whole and not, and past the loops' limit (32 rows: at::linear).
ROWS = [2, 5, 8, 13, 70]


def _needs(dtype: torch.dtype):
    if dtype not in DTYPES:
        pytest.skip(f"rowdot does not run {dtype} on this CPU (needs x86-64 with AVX2 and FMA, or AVX-512)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_features, in_features", SHAPES)
def test_rowdot_equals_linear(dtype, out_features, in_features):
    """Each SHAPES case, with the loops this CPU runs."""
    _needs(dtype)
    check_rowdot(dtype, out_features, in_features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", ROWS)
def test_rowdot_of_several_rows_equals_linear(dtype, rows):
    """A batch x (rows, in), with the batch loops where this CPU runs them and at::linear elsewhere; leading
    dimensions are kept."""
    _needs(dtype)
    for shape in SHAPES:
        check_rowdot(dtype, *shape, rows=rows)
    x, w = torch.randn(2, 3, 40).to(dtype), torch.randn(9, 40).to(dtype)
    assert torch.ops.neurallayers.rowdot(x, w).shape == (2, 3, 9)


_AVX2_CHECK = """
import sys
import torch
sys.path.insert(0, %r)
from nl_gen_helpers import check_rowdot
from neurallayers.generation import rowdot
assert rowdot.dtypes() == (torch.float32, torch.bfloat16), rowdot.dtypes()
assert rowdot.batch_dtypes() == (torch.float32, torch.bfloat16), rowdot.batch_dtypes()
assert rowdot.isa() == "fp32 avx2, bf16 avx2; batches fp32 avx2, bf16 avx2", rowdot.isa()
assert rowdot.attention_dtypes() == (), rowdot.attention_dtypes()  # AVX-512 only: such CPUs keep inductor's attention
for dtype in (torch.float32, torch.bfloat16):
    for shape in %r:
        for rows in (None, *%r):
            check_rowdot(dtype, *shape, rows=rows)
print("ok")
"""


def test_avx2_loops_equal_linear():
    """The AVX2 loops (four fp32 rows at a time; bf16 widened to float32; the batch loops), which CPUs without
    AVX-512 run, forced with NEURALLAYERS_ROWDOT=avx2 in a new process, so that an AVX-512 machine tests them too."""
    _needs(torch.float32)  # every CPU with AVX-512 has AVX2 and FMA
    env = {**os.environ, "NEURALLAYERS_ROWDOT": "avx2", "OMP_NUM_THREADS": "2"}
    code = _AVX2_CHECK % (os.path.dirname(__file__), SHAPES, ROWS)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_rowdot_refuses_bad_input():
    _needs(torch.float32)
    w = torch.randn(4, 8)
    for x, match in ((torch.randn(7), "x of shape \\[7\\]"), (torch.randn(8).double(), "differ in dtype"),
                     (torch.randn(16)[::2], "contiguous")):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.neurallayers.rowdot(x, w)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.neurallayers.rowdot(torch.ones(8, dtype=torch.float16), w.half())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_batch1_step_calls_rowdot(dtype):
    """The batch-1 graph, called from C++, runs every linear layer (the tied output layer too) through the kernel,
    and its logits equal the plain model's."""
    _needs(dtype)
    from torch._inductor.utils import run_and_get_code

    plain, fast = tiny_lm(seed=4), prepare_for_decode(tiny_lm(seed=4), dtype=dtype)
    plain.to(dtype)
    want = next_logits(plain, functools.partial(forward_step, plain))
    got, code = next_logits(fast, functools.partial(run_and_get_code, decode_step_for(fast)))
    linears = sum(isinstance(m, torch.nn.Linear) for m in fast.modules())  # 4 a block and the output layer
    # The step's C++ wrapper (cpp_wrapper, on CPU) calls the op through the dispatcher.
    assert "".join(code).count('aoti_torch_call_dispatcher("neurallayers::rowdot"') == linears
    tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16: the plain path rounds each product's sum to bf16 first
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.slow
def test_compiled_batch_step_calls_rowdot(monkeypatch):
    """Where the batch loops run (forced here: on AVX-512 CPUs the op hands batches to at::linear), the graph of
    every batch size > 1 (a dynamic batch dimension) runs every linear layer through the op, with the plain model's
    logits for each row."""
    _needs(torch.float32)
    from torch._inductor.utils import run_and_get_code

    from neurallayers.generation.fast import RowLinear

    plain, fast = tiny_lm(seed=5), prepare_for_decode(tiny_lm(seed=5))
    monkeypatch.setattr(RowLinear, "batch_dtypes", (torch.float32,))  # read when the step is traced
    want = next_logits(plain, functools.partial(forward_step, plain), 3)
    got, code = next_logits(fast, functools.partial(run_and_get_code, decode_step_for(fast)), 3)
    linears = sum(isinstance(m, torch.nn.Linear) for m in fast.modules())
    assert "".join(code).count('aoti_torch_call_dispatcher("neurallayers::rowdot"') == linears
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_failed_build_names_the_compiler(tmp_path, monkeypatch):
    """A compiler that fails leaves no library behind and raises with the compiler's name; dtypes() then turns that
    into a warning and the step falls back to inductor's multiply-sum."""
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="false failed"):
        rowdot._build("false")
    assert list((tmp_path / "kernels").iterdir()) == []


def _counting_compiler(folder) -> tuple[str, Path]:
    """A stand-in for the C++ compiler (a real build takes 10-15 s): it writes b"library" to the file after -o and
    a line to its log per build. Returns its path and the log's."""
    cxx, log = folder / "fake-c++", folder / "builds.log"
    cxx.write_text(f'#!/bin/sh\necho build >> "{log}"\nwhile [ "$1" != "-o" ]; do shift; done\n'
                   'printf library > "$2"\n')
    cxx.chmod(0o755)
    return str(cxx), log


def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    """A cached library cut short (a copy, a crash before the disk held it) was loaded as it was: truncated, dlopen
    crashed the process with SIGBUS; empty, every process warned and decoded without the kernels, for good. The
    build writes the library's digest after it and rebuilds a library that does not match it."""
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    cxx, log = _counting_compiler(tmp_path)

    def builds() -> int:
        return len(log.read_text().splitlines())

    lib = rowdot._build(cxx)
    assert lib.read_bytes() == b"library" and builds() == 1
    assert rowdot._build(cxx) == lib and builds() == 1  # whole: taken from the cache
    for damaged in (b"libr", b""):
        lib.write_bytes(damaged)
        assert rowdot._build(cxx) == lib and lib.read_bytes() == b"library"
    assert builds() == 3
    assert sorted(p.name for p in lib.parent.iterdir()) == sorted([lib.name, lib.with_suffix(".sha256").name])
    # a library built before digests were written, in a cache folder this process cannot write to: loaded as before
    lib.with_suffix(".sha256").unlink()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rowdot.tempfile, "mkstemp", read_only)
    assert rowdot._build(cxx) == lib and builds() == 3
    lib.write_bytes(b"libr")  # damaged, with its digest beside it: an error (a warning in _load), not a load
    rowdot._digest_path(lib).write_text("0" * 64)
    with pytest.raises(PermissionError):
        rowdot._build(cxx)


def test_unbuildable_kernel_falls_back_with_a_warning(monkeypatch):
    """The library holds both decode kernels, so a failed build (here of attention.cpp) loses both, and the warning
    names both (it named only the batch-1 GEMV, which had compiled)."""
    def fail(cxx):
        raise RuntimeError(f"{cxx} failed: attention.cpp: no such intrinsic")

    monkeypatch.setattr(rowdot, "_build", fail)
    monkeypatch.setattr(rowdot.platform, "machine", lambda: "x86_64")  # reach the build on any machine
    monkeypatch.setenv("CXX", "c++")
    monkeypatch.delenv("NEURALLAYERS_ROWDOT", raising=False)
    both = "kernels \\(rowdot.cpp's GEMV, attention.cpp's attention\\) could not be built"
    with pytest.warns(UserWarning, match=both):
        assert rowdot._load.__wrapped__() == 0  # the uncached body: what a process without the kernel sees
    monkeypatch.setenv("NEURALLAYERS_ROWDOT", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rowdot._load.__wrapped__() == 0  # switched off: no build, so no warning


def test_eager_step_uses_rowdot_where_it_runs():
    """compile=False: one row goes through the kernel, a batch too where its batch loops run here (else F.linear);
    both equal the plain model."""
    _needs(torch.float32)
    plain, fast = tiny_lm(seed=6), prepare_for_decode(tiny_lm(seed=6), compile=False)
    for rows in (1, 2):
        call, seen = recording(decode_step_for(fast))
        want = next_logits(plain, functools.partial(forward_step, plain), rows)
        got = next_logits(fast, call, rows)
        kernel = rows == 1 or torch.float32 in rowdot.batch_dtypes()
        assert seen.count("neurallayers.rowdot.default") == (9 if kernel else 0)  # 4 a block, the head
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_strided_input_and_weight_and_gradients_take_a_safe_path():
    """One row cut from a wider tensor goes through the kernel as a contiguous copy; a non-contiguous weight, or a
    call that needs gradients, goes through F.linear (the kernel has no backward)."""
    _needs(torch.float32)
    from neurallayers.generation.fast import RowLinear

    prepare_for_decode(tiny_lm(), compile=False)  # sets the dtypes the kernel runs
    layer = RowLinear(8, 4)
    x = torch.randn(1, 16)[:, ::2]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.weight = torch.nn.Parameter(torch.randn(8, 4).t())
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()
    assert layer.weight.grad is not None


@pytest.mark.slow
def test_compiled_step_without_the_kernel_uses_inductors_loop(monkeypatch):
    """Where the kernel cannot run, the batch-1 graph computes each linear layer as inductor's multiply-sum, with the
    plain model's logits (the path of CPUs without AVX2, or without a compiler; forced here)."""
    from torch._inductor.utils import run_and_get_code

    from neurallayers.generation.fast import RowLinear

    plain, fast = tiny_lm(seed=7), prepare_for_decode(tiny_lm(seed=7))
    monkeypatch.setattr(RowLinear, "kernel_dtypes", ())  # read when the step is traced, on its first call
    want = next_logits(plain, functools.partial(forward_step, plain))
    got, code = next_logits(fast, functools.partial(run_and_get_code, decode_step_for(fast)))
    assert code and "rowdot" not in "".join(code)  # code: the graph was compiled here, not taken from a cache
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
