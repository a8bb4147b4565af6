"""A fast one-token decode step for generate() (gpt-fast style): static shapes, compiled, optionally bf16 weights.

    model = prepare_for_decode(model, dtype=torch.bfloat16)   # once; generate()/stream() then use the step
    generate(model, tokenizer, "Once upon a time", max_new_tokens=64)

Only the one-token step is compiled: prefill runs eagerly (its length changes every call) and so do the sampling
rules. The step's shapes hardly change while a batch decodes: the KV cache is static (`KVCache(static=True)`), the
write position is a tensor, and attention covers a window of the cache's first columns (every column in use, rounded
up to a multiple of 16) with a mask that hides the unwritten ones. The window length is a dynamic dimension of the
graph, so one graph serves every prompt and output length; batch 1 has its own graph and every larger batch size
shares another (a dynamic batch dimension). The window keeps a step from reading the whole preallocated cache: a
server's 1024-column fp32 cache is 75 MB a row for GPT-2 124M, more than its weights at 8 rows.

Where the speed comes from on CPU, where batch-1 decode streams every weight once per token:
- where inductor runs GEMMs (batches that rowdot's batch loops do not take), freezing folds the weights into the
  graph as constants, packed for oneDNN;
- at batch 1, RowLinear reads each linear layer's weight in one pass at the speed of a plain read, with the rowdot
  kernel (AVX-512 or AVX2 loops, built on a machine's first step) or else a multiply-sum that inductor vectorizes:
  1.4-2x faster than the packed GEMVs. The kernel also works eagerly, so compile=False decodes 1.6-2x faster than
  the plain path in fp32;
- on CPUs without AVX-512 (AVX2 laptops, AMD Zen 3), RowLinear also computes small batches and prompts with the
  kernel's batch loops, which read each weight once for up to 32 rows: GPT-2 124M at batch 8 on 2 Zen 3 cores, fp32
  34 vs 48 ms a compiled step, 36 vs 97 ms eager; and bf16, where those CPUs have no bf16 dot products, 32 vs
  116 ms compiled, a 512-token prompt in 1.0 s instead of minutes;
- one query's attention through the decode_attention kernel (attention.cpp, CPUs with AVX-512: 19 vs 33 us a GPT-2
  layer in bf16 on 2 Xeon cores), else the math attention fused by inductor, not the CPU flash kernel (7x slower for
  one bf16 query).

Costs: the first batch-1 call and the first batched call each compile (15-70 s for GPT-2 124M on 2 cores; a later
process loads unfrozen CPU graphs from torch's on-disk caches: 6-11 s a graph on 2 Zen 3 cores, 15-35 frozen). Frozen
graphs hold their own copy of the weights: when the weights change (training, loading weights) the next step that
uses one compiles it afresh, with a warning. No graph sees changes to its modules' attributes (they skip dynamo's
guards on the model's modules): call prepare_for_decode again after changing the model, or after changing weights to
compile before decoding. Each call compiles afresh, into a step with its own copy of the step's code, so torch's
recompile limit (torch._dynamo.config.recompile_limit, 8) applies to each step alone.
Memory: torch keeps the modules it compiled, and frozen weights, loaded for the life of the process, even after the
model and its step are gone (torch._dynamo.reset() does not free them): a process that prepares model after model
(a server reloading with --compile) grows by one copy of the weights each time it freezes them (GPU graphs, and batched
graphs on CPUs where the kernel's batch loops do not run); unfrozen graphs let their model go.
"""

from __future__ import annotations

import contextlib
import types
import warnings
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.nn.attention import SDPBackend, sdpa_kernel

from neurallayers.checks import is_int, is_integral
from neurallayers.generation import rowdot
from neurallayers.models.decoder import check_below
from neurallayers.nn.attention import Attention
from neurallayers.nn.kv_cache import KVCache

MODES = ("default", "max-autotune-no-cudagraphs")
# the dtypes weights can be decoded in (float16 and float64 slowly on CPU); float8 ones are floating point but not these
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_STEPS: weakref.WeakKeyDictionary[nn.Module, DecodeStep] = weakref.WeakKeyDictionary()


def _inductor_realize() -> object | None:
    """Inductor's force_stride_order prim, which stores its input in a buffer (a private op: None if it is gone).
    Looked up when a compiled step is made, not at import: importing inductor takes a second."""
    try:
        import torch._inductor.inductor_prims  # noqa: F401 - registers the prims

        return torch.ops.prims.inductor_force_stride_order
    except (ImportError, AttributeError):
        return None


class RowLinear(nn.Linear):
    """An nn.Linear that computes one row on CPU (batch-1 decode, which streams every weight once per token) with a
    faster pass over the weight than nn.Linear's packed GEMV, eagerly or under torch.compile:
    - the rowdot kernel (rowdot.cpp), where it runs the weight's dtype: AVX-512 or AVX2 loops, at the speed of a
      plain read of the weight (GPT-2 124M step on 2 Zen 5 cores, compiled: fp32 11.7 vs 12.8 ms, bf16 6.4 vs 7.6 ms
      against the multiply-sum below; eager: fp32 17.4 vs 34.8 ms, bf16 11.9 vs 18.3 ms against F.linear; on 2 Zen 3
      cores, AVX2: compiled as fast as the multiply-sum, eager fp32 31.6 vs 50.8 ms, bf16 23.8 vs 27.8 ms);
    - else, under torch.compile, a multiply-sum with float32 products and sums, which inductor makes one vectorized
      pass over the weight (fp32 16 vs 24 ms with MKL's GEMV, bf16 6.2 vs 7.8 ms with oneDNN's).
    Several rows go through the kernel too where its batch loops run the weight's dtype (rowdot.batch_dtypes: CPUs
    without AVX-512, and bf16 on CPUs without bf16 dot products), else through nn.Linear's forward, as do other
    devices and calls that need gradients."""

    realize = None  # set by the first compiled DecodeStep (_inductor_realize)
    kernel_dtypes: tuple[torch.dtype, ...] = ()  # the weight dtypes rowdot runs here, set by the first DecodeStep
    batch_dtypes: tuple[torch.dtype, ...] = ()  # ... and those it also runs for several rows (rowdot.batch_dtypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.device.type != "cpu":
            return F.linear(x, w, self.bias)
        one_row = statically_known_true(x.numel() == x.shape[-1])  # False for a dynamic batch dimension too
        if (w.dtype in (self.kernel_dtypes if one_row else self.batch_dtypes) and x.dtype == w.dtype
                and w.is_contiguous() and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            y = torch.ops.neurallayers.rowdot(x.contiguous(), w)  # no backward: never where gradients are needed
        elif one_row and torch.compiler.is_compiling():
            # x.float() * w, not x.float() * w.float(): in a frozen graph (none on CPU at one row since the step
            # freezes only for inductor's GEMMs) w.float() would be folded into a float32 copy of w.
            xf = x.float()
            if self.realize is not None:  # store x once; inlined, its producer (a layer norm) is recomputed per row
                xf = self.realize(xf, xf.stride())
            y = (xf.unsqueeze(-2) * w).sum(-1)  # (..., 1, in) * (out, in) -> (..., out)
        else:
            return F.linear(x, w, self.bias)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)


def _step(model: nn.Module, tok: torch.Tensor, cache: KVCache, pos: torch.Tensor, positions: torch.Tensor,
          mask: torch.Tensor) -> torch.Tensor:
    """The traced step: tok (R, 1) at cache columns pos (R,), position ids (R, 1), mask (R, S) -> logits (R, V)."""
    out = model(tok, cache=cache, input_pos=pos, position_ids=positions, attention_mask=mask)
    return out.logits[:, -1].float()


class DecodeStep:
    """The registered one-token step of a model: makes its static caches and runs the (compiled) step.

    Called like generate.forward_step without the model: tok (R, 1) written at cache column `input_pos` ->
    next-token logits (R, V) in float32.
    """

    def __init__(self, model: nn.Module, *, compile: bool, mode: str) -> None:
        self._model = weakref.ref(model)  # the registry is keyed weakly by the model: hold no strong reference
        self.compiled = compile
        self._ones: torch.Tensor | None = None
        self._fn = _step
        self._options: dict = {}
        if compile:
            from torch._inductor import list_mode_options

            # No guards on the model's modules: ~1,000 checks of module attributes took 0.4 ms a step (a frozen
            # graph is remade when the weights change, see _frozen; other changes need prepare_for_decode again).
            self._options = {**list_mode_options(mode),
                             "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
            if next(model.parameters()).device.type == "cpu":
                # A C++ wrapper calls the step's ~110 kernels and ops instead of Python: 0.5-1 ms less a step for
                # GPT-2 124M on 2 Zen 3 cores (fp32 23.5 vs 24.6 ms, bf16 15.1 vs 15.6), at no extra compile time.
                self._options["cpp_wrapper"] = True
            self._fn = self._compile()
        # Graphs that freeze the weights have their own compiled step, remade when the weights change (see _frozen).
        self._frozen_fn: Callable | None = None
        self._frozen_weights: tuple | None = None
        self._checked_cache: Callable[[], KVCache | None] = lambda: None  # the cache the weights were last checked for
        self._frozen_checked = False  # whether they could be checked then (no inference tensors)
        self._warned_unchecked = False
        if compile and RowLinear.realize is None:
            RowLinear.realize = _inductor_realize()
        if not RowLinear.kernel_dtypes:
            RowLinear.kernel_dtypes = rowdot.dtypes()  # the first step on a machine builds the kernels (~15 s)
            RowLinear.batch_dtypes = rowdot.batch_dtypes()
            Attention.decode_dtypes = rowdot.attention_dtypes()

    def _compile(self) -> Callable:
        """A compiled copy of _step's code: dynamo keeps compiled graphs and counts recompilations per code object, so
        each compiled step has its own recompile limit (past it, fullgraph=True raises)."""
        own = types.FunctionType(_step.__code__.replace(), _step.__globals__, _step.__name__)
        return torch.compile(own, options=self._options, fullgraph=True)

    def _frozen(self, cache: KVCache) -> Callable | None:
        """The compiled step for graphs that freeze the weights. A frozen graph holds a copy of the weights it was
        compiled with: when the model's weights changed since (an optimizer step, load_state_dict, an in-place edit)
        it decoded with the old ones while the eager prefill used the new ones; now it is compiled afresh, with a
        warning (the compile takes as long as the first one). Checked once per cache (each generate() call makes its
        own): the check reads every tensor's version, 0.3 ms for GPT-2 124M, too much for every step.

        None where the weights cannot be checked: an inference tensor (one made under torch.inference_mode, as
        prepare_for_decode's cast or a load there makes them) has no version counter, so an in-place edit of it shows
        nowhere, and a frozen copy went on decoding with the old values. The step then reads the weights as they are
        (the unfrozen graph), with a warning once. An edit through `.data` bypasses every version counter (as it does
        autograd's checks): call prepare_for_decode again after one."""
        if self._checked_cache() is cache:
            return self._frozen_fn if self._frozen_checked else None
        self._checked_cache = weakref.ref(cache)
        weights = _weights_state(self.model)
        self._frozen_checked = weights is not None
        if weights is None:
            if not self._warned_unchecked:
                self._warned_unchecked = True
                warnings.warn("the model's weights are inference tensors (made under torch.inference_mode), whose "
                              "in-place changes cannot be seen: the decode step reads them as they are instead of "
                              "freezing a copy, which is slower for batches; make or cast the model outside "
                              "inference_mode for the frozen graph", stacklevel=3)
            return None
        if self._frozen_fn is None or weights != self._frozen_weights:
            if self._frozen_fn is not None:
                warnings.warn("the model's weights changed since its compiled decode step froze them: compiling the "
                              "step again (call prepare_for_decode after changing weights to do it before decoding)",
                              stacklevel=3)
            self._frozen_fn, self._frozen_weights = self._compile(), weights
        return self._frozen_fn

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this decode step no longer exists")
        return model

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A static cache for batch_size rows of max_len positions, and one spare position that is never written:
        with it every window the step reads is a strided view alike (a window of every column would be a contiguous
        tensor, which is another graph to compile)."""
        if not is_integral(max_len) or max_len < 1:
            # max_len + 1 made 0 a cache of one position, silently, None a TypeError and -1 an error naming 0
            raise ValueError(f"new_cache max_len={max_len!r}: must be an int >= 1 (the positions a row holds)")
        return self.model.new_cache(batch_size, int(max_len) + 1, static=True)

    def __call__(self, tok: torch.Tensor, *, cache: KVCache, input_pos: int | torch.Tensor,
                 position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 attend: int | None = None) -> torch.Tensor:
        """tok (R, 1) -> logits (R, V) float32. input_pos: the cache column, one int for all rows or (R,) per row
        (a server's rows at different lengths); position_ids (R, 1) default to it; attention_mask (R, S) marks
        padding, as in DecoderLM.forward. attend: how many leading cache columns hold what any row may see, at
        least the largest input_pos + 1 (default: input_pos + 1 for an int, every column for a tensor); the step
        reads only those, rounded up."""
        if not cache.static:
            raise ValueError("the fast decode step needs a static cache from DecodeStep.new_cache")
        if attend is None and isinstance(input_pos, int):
            if not 0 <= input_pos < cache.max_len:
                raise ValueError(f"input_pos={input_pos}: the cache holds positions 0..{cache.max_len - 1}")
            attend = input_pos + 1
        elif attend is None:
            attend = cache.max_len
        if not is_int(attend) or not 1 <= attend <= cache.max_len:
            raise ValueError(f"attend={attend!r}: must be an int in [1, {cache.max_len}] (the cache's positions)")
        _check_inputs(tok, cache, input_pos, attention_mask, attend)
        length, full = _window(attend, cache.max_len), cache
        if length < cache.max_len:  # writes past the window fail in the step's index checks, never silently
            cache = cache.window(length)
        rows = tok.shape[0]
        if isinstance(input_pos, torch.Tensor):
            pos = input_pos.to(device=tok.device, dtype=torch.long)
        else:  # a tensor even for one column: an int would be a constant of the graph, recompiled every step
            pos = torch.full((rows,), input_pos, dtype=torch.long, device=tok.device)
        positions = pos[:, None] if position_ids is None else position_ids
        if tok.device.type == "cpu":  # a read back costs nothing there; off the CPU the step keeps its no-sync path
            _check_on_host(self.model, tok, cache, pos, position_ids, positions=self.compiled)
        mask = self._mask(attention_mask, rows, length, tok.device)
        # The math attention (q k^T, softmax, a v) beats the CPU flash kernel for one query: 7x in bf16, a
        # little in fp32 (inductor fuses its mask and softmax). Freezing is read while tracing as well as while
        # compiling: patch it per call rather than process-wide, so that no other torch.compile freezes weights.
        from torch._inductor import config as inductor_config

        attention = sdpa_kernel(SDPBackend.MATH) if tok.device.type == "cpu" else contextlib.nullcontext()
        # a graph that would freeze weights it cannot check reads them live instead (_frozen gives None)
        frozen_fn = self._frozen(full) if self.compiled and _freezes(rows, cache.k.dtype, tok.device) else None
        freezing = inductor_config.patch(freezing=True) if frozen_fn is not None else contextlib.nullcontext()
        if self.compiled:
            # The window length is dynamic: one graph serves every prompt and output length.
            for t, dim in ((mask, 1), (cache.k, 3), (cache.v, 3)):
                torch._dynamo.mark_dynamic(t, dim)
        if self.compiled and rows > 1:
            # One graph for every batch size > 1; inductor then packs fp32 weights for oneDNN rather than MKL, 1.4x
            # faster at batch 8 (where RowLinear does not take batches itself). Batch 1 stays static: its GEMVs are
            # specialised (RowLinear).
            for t, dim in ((tok, 0), (pos, 0), (positions, 0), (mask, 0), (cache.k, 1), (cache.v, 1)):
                torch._dynamo.mark_dynamic(t, dim)
        fn = frozen_fn if frozen_fn is not None else self._fn
        with freezing, attention:
            return fn(self.model, tok, cache, pos, positions, mask)

    def _mask(self, attention_mask: torch.Tensor | None, rows: int, length: int, device: torch.device) -> torch.Tensor:
        """(rows, length) contiguous padding mask over the window's columns: always a tensor of one layout, so one
        graph serves padded and unpadded batches."""
        if attention_mask is None:  # the same all-ones mask at every step of a batch: keep the last one
            ones = self._ones
            if ones is None or ones.shape != (rows, length) or ones.device != device:
                ones = self._ones = torch.ones(rows, length, dtype=torch.long, device=device)
            return ones
        attention_mask = attention_mask.expand(rows, -1)  # (1, S) holds for every row, as in DecoderLM.forward
        if attention_mask.shape[1] >= length:
            return attention_mask[:, :length].contiguous()
        return F.pad(attention_mask, (0, length - attention_mask.shape[1]))  # columns past it: hidden by position


def _weights_state(model: nn.Module) -> tuple | None:
    """Where each parameter and buffer of `model` lives and how often it was changed in place: equal while the weights
    are the ones a graph froze (an in-place change counts under torch.inference_mode too). None when one is an
    inference tensor, which has no version counter: its changes cannot be seen."""
    tensors = (*model.parameters(), *model.buffers())
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t.dtype, t.device, t._version) for t in tensors)


def _check_inputs(tok: torch.Tensor, cache: KVCache, input_pos: int | torch.Tensor,
                  attention_mask: torch.Tensor | None, attend: int) -> None:
    """A caller's shapes, checked on the host for free: a mask narrower than the columns attended was padded with
    zeros, hiding a row's own earlier tokens (wrong logits, where the plain forward refuses it), and other mistakes
    failed deep in a compiled kernel ("index out of bounds: 0 <= tmp7 < 40L")."""
    rows = cache.batch_size
    if not isinstance(tok, torch.Tensor) or tok.shape != (rows, 1):
        got = tuple(tok.shape) if isinstance(tok, torch.Tensor) else type(tok).__name__
        raise ValueError(f"tok must have shape (R, 1) with R={rows}, the cache's rows; got {got}")
    if isinstance(input_pos, torch.Tensor) and (input_pos.shape != (rows,)
                                                or input_pos.dtype not in (torch.long, torch.int32)):
        # a float tensor was truncated to a column silently (6.7 wrote at 6), where DecoderLM.forward refuses it
        raise ValueError(f"input_pos must be an int or an integer tensor of shape (R,)=({rows},), got a "
                         f"{input_pos.dtype} tensor of shape {tuple(input_pos.shape)}")
    if attention_mask is not None and (attention_mask.ndim != 2 or attention_mask.shape[0] not in (1, rows)
                                       or attention_mask.shape[1] < attend):
        raise ValueError(f"attention_mask must have shape (R={rows}, S>={attend}): 1/0 for every cache column the step "
                         f"attends, the cached prefix included; got {tuple(attention_mask.shape)}")


def _check_on_host(model: nn.Module, tok: torch.Tensor, cache: KVCache, pos: torch.Tensor,
                   position_ids: torch.Tensor | None, *, positions: bool) -> None:
    """Token ids and, with `positions` (a compiled step), positions, read back: a compiled step's graph checks
    neither (the model's checks skip a compiled step), so a position outside the cache or the position table failed
    deep in an inductor kernel ("index out of bounds: 0 <= tmp7 < 64L", where the eager step names the cache's
    positions), and an id past the vocabulary was torch's bare IndexError in either step. The eager step's forward
    checks the positions itself (on the CPU), with these same functions."""
    check_below(tok, model.config.vocab_size, "tok", "vocab_size")
    if not positions:
        return
    cache.check_positions(pos, 1)
    if model.config.position in ("learned", "sinusoidal"):  # tables of block_size rows
        model._check_table_positions(1, pos, position_ids, static=False)


def _freezes(rows: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a compiled step's graph freezes the weights (inductor folds them into it as constants): only where
    inductor runs GEMMs on them, which it packs for oneDNN when frozen (1.4x faster at batch 8), i.e. on other devices
    and for batches whose dtype rowdot's batch loops do not run. A CPU graph whose linear layers all go through
    rowdot or the one-row multiply-sum runs as fast unfrozen (GPT-2 124M on 2 Zen 3 cores, side by side: batch 1
    fp32 19.1 ms both, bf16 13.1 vs 12.9; batch 8 fp32 44.1 vs 44.5, bf16 34.9 vs 35.5), and unfrozen it can be
    loaded from AOT autograd's cache, which freezing bypasses (a later process gets GPT-2's steps in 6-11 s instead
    of 15-35), and it keeps no copy of the weights once its model is gone."""
    if device.type != "cpu":
        return True
    return rows > 1 and dtype not in RowLinear.batch_dtypes


def _window(attend: int, columns: int) -> int:
    """The cache columns a step reads: `attend` rounded up to a multiple of 16, short of the last column (a spare
    one from DecodeStep.new_cache) unless `attend` needs it."""
    if attend >= columns:
        return columns
    return min(-(-attend // 16) * 16, columns - 1)


def _finds_cpp_compiler() -> bool:
    """Whether inductor finds a C++ compiler: without one the first compiled step failed in the middle of generate(),
    after the prompt's prefill, or in a server's warm-up, with inductor's InvalidCxxCompiler."""
    try:
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # private modules: if they move, torch.compile says it itself
        return True
    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True


def prepare_for_decode(model: nn.Module, *, dtype: torch.dtype | None = None, compile: bool = True,
                       mode: str = "default") -> nn.Module:
    """Make generate() and stream() decode `model` with a fast one-token step; returns the same model.

    Args:
        model: a DecoderLM; it is put in eval mode and, when `dtype` is given, cast in place.
        dtype: the weight (and KV cache) dtype: torch.float32, torch.bfloat16 (fast on CPUs with bf16 dot products
            and on GPUs), torch.float16 or torch.float64; None keeps the model's dtype. Never float16 on CPU (no fast
            kernels).
        compile: compile the step with torch.compile (inductor freezing where it packs GEMMs); False runs the same
            static-shape step eagerly: no compile time, and where the rowdot kernel runs, batch-1 steps about half as
            fast as compiled ones (GPT-2 124M on 2 cores: fp32 17.4 vs 11.7 ms, bf16 11.9 vs 6.4 ms; the plain path
            takes 35 ms). On CPU without a C++ compiler (which torch.compile needs there), False with a warning.
        mode: torch.compile mode: "default" or "max-autotune-no-cudagraphs" (autotunes GEMMs: slower to compile).

    Raises:
        ValueError: a model that is not a causal LM with a KV cache, or a bad dtype or mode.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "new_cache") or not hasattr(model, "config"):
        raise ValueError(f"model must be a DecoderLM (a causal LM with new_cache), got {type(model).__name__}")
    if dtype is not None and dtype not in WEIGHT_DTYPES:  # float8 too: cast in place, then no op of a step runs it
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(map(str, WEIGHT_DTYPES))} (the dtypes weights "
                         "decode in)")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: valid modes are {', '.join(MODES)}")
    model.eval()
    if dtype is not None:
        model.to(dtype)
    if compile and next(model.parameters()).device.type == "cpu" and not _finds_cpp_compiler():
        warnings.warn("compile=True needs a C++ compiler on CPU (torch.compile builds its kernels with g++ or $CXX) "
                      "and none was found: the decode step runs eagerly, as with compile=False", stacklevel=2)
        compile = False
    for module in model.modules():
        if type(module) is nn.Linear:  # same parameters and state dict; only the compiled one-row forward differs
            module.__class__ = RowLinear
    _STEPS[model] = DecodeStep(model, compile=compile, mode=mode)
    if torch.bfloat16 not in RowLinear.batch_dtypes:  # where they run, rowdot's batch loops make bf16 fast
        from neurallayers.nn.cpu import warn_if_slow_bf16

        warn_if_slow_bf16(dtype, next(model.parameters()).device, advice="prompts and batches will be slow; use fp32 "
                          "(batch-1 decode steps still read bf16 weights at memory speed)")
    return model


def decode_step_for(model: nn.Module) -> DecodeStep | None:
    """The step prepare_for_decode registered for `model`, or None (generate() then runs the plain forward)."""
    return _STEPS.get(model)


def release(model: nn.Module) -> None:
    """Forget the fast step of `model`: generate() goes back to the plain path, its linear layers to nn.Linear."""
    _STEPS.pop(model, None)
    for module in model.modules():
        if type(module) is RowLinear:
            module.__class__ = nn.Linear
