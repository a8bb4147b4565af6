"""A fast one-token decode step for generate() (gpt-fast style): static shapes, optionally compiled, bf16 weights.

    model = prepare_for_decode(model, dtype=torch.bfloat16)   # once; generate()/stream() then use the step
    generate(model, tokenizer, "Once upon a time", max_new_tokens=64)

Only the one-token step is compiled: prefill runs eagerly (its length changes every call) and so do the sampling
rules. The step's shapes never change while a batch decodes: the KV cache is static (`KVCache(static=True)`),
its length rounded up to a multiple of `bucket` so that prompts of nearby lengths share one compiled graph, the
write position is a tensor, and attention covers every cache column with a mask that hides the unwritten ones.
A new batch size or cache bucket compiles once more (seconds); the graph is then reused.

Inductor's freezing folds the weights into the compiled graph as constants (prepacked for oneDNN / MKL), which
is where most of the speed comes from on CPU. The compiled step therefore does not see later changes to the
weights: call prepare_for_decode again after training or loading new weights (or `release(model)`).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from neurallayers.nn.kv_cache import KVCache

MODES = ("default", "max-autotune-no-cudagraphs")
_STEPS: weakref.WeakKeyDictionary[nn.Module, DecodeStep] = weakref.WeakKeyDictionary()


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

    def __init__(self, model: nn.Module, *, compile: bool, mode: str, bucket: int) -> None:
        self._model = weakref.ref(model)  # the registry is keyed weakly by the model: hold no strong reference
        self.bucket = bucket
        self.compiled = compile
        self._ones: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        # dynamic=False: one graph per (batch, cache length); a dynamic graph would lose the static GEMM shapes.
        self._fn = (torch.compile(_step, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)
                    if compile else _step)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this decode step no longer exists")
        return model

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A static cache for batch_size rows holding at least max_len positions (rounded up to the bucket,
        never past the model's context length)."""
        model = self.model
        length = max(max_len, min(-(-max_len // self.bucket) * self.bucket, model.config.block_size))
        return model.new_cache(batch_size, length, static=True)

    def __call__(self, tok: torch.Tensor, *, cache: KVCache, input_pos: int, position_ids: torch.Tensor | None,
                 attention_mask: torch.Tensor | None) -> torch.Tensor:
        if not cache.static:
            raise ValueError("the fast decode step needs a static cache from DecodeStep.new_cache")
        rows, length = tok.shape[0], cache.max_len
        pos = torch.full((rows,), input_pos, dtype=torch.long, device=tok.device)  # a tensor: no recompile per step
        positions = pos[:, None] if position_ids is None else position_ids
        mask = self._mask(attention_mask, rows, length, tok.device)
        # The math attention (q k^T, softmax, a v) beats the CPU flash kernel for one query: 7x in bf16, a
        # little in fp32 (inductor fuses its mask and softmax). Freezing is read while tracing as well as while
        # compiling: patch it per call rather than process-wide, so that no other torch.compile freezes weights.
        from torch._inductor import config as inductor_config

        attention = sdpa_kernel(SDPBackend.MATH) if tok.device.type == "cpu" else contextlib.nullcontext()
        freezing = inductor_config.patch(freezing=True) if self.compiled else contextlib.nullcontext()
        with freezing, attention:
            return self._fn(self.model, tok, cache, pos, positions, mask)

    def _mask(self, attention_mask: torch.Tensor | None, rows: int, length: int, device: torch.device) -> torch.Tensor:
        """(rows, length) padding mask over every cache column; always a tensor, so one graph serves both."""
        if attention_mask is None:
            key = (rows, length, device)
            if key not in self._ones:
                self._ones[key] = torch.ones(rows, length, dtype=torch.long, device=device)
            return self._ones[key]
        if attention_mask.shape[1] >= length:
            return attention_mask[:, :length]
        return F.pad(attention_mask, (0, length - attention_mask.shape[1]))  # columns past the prompt: by position


def prepare_for_decode(model: nn.Module, *, dtype: torch.dtype | None = None, compile: bool = True,
                       mode: str = "default", bucket: int = 256) -> nn.Module:
    """Make generate() and stream() decode `model` with a fast one-token step; returns the same model.

    Args:
        model: a DecoderLM; it is put in eval mode and, when `dtype` is given, cast in place.
        dtype: the weight (and KV cache) dtype, e.g. torch.bfloat16 (fast on CPUs with bf16 dot products and on
            GPUs); None keeps the model's dtype. Never float16 on CPU (no fast kernels).
        compile: compile the step with torch.compile and inductor freezing; False uses the same static-shape step
            eagerly (no compile time, little speed-up).
        mode: torch.compile mode: "default" or "max-autotune-no-cudagraphs" (autotunes GEMMs: slower to compile).
        bucket: cache lengths are rounded up to a multiple of this many positions; each distinct (batch size,
            cache length) compiles once.

    Raises:
        ValueError: a model that is not a causal LM with a KV cache, or a bad dtype, mode or bucket.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "new_cache") or not hasattr(model, "config"):
        raise ValueError(f"model must be a DecoderLM (a causal LM with new_cache), got {type(model).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: valid modes are {', '.join(MODES)}")
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
        raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
    model.eval()
    if dtype is not None:
        model.to(dtype)
    _STEPS[model] = DecodeStep(model, compile=compile, mode=mode, bucket=bucket)
    return model


def decode_step_for(model: nn.Module) -> DecodeStep | None:
    """The step prepare_for_decode registered for `model`, or None (generate() then runs the plain forward)."""
    return _STEPS.get(model)


def release(model: nn.Module) -> None:
    """Forget the fast step of `model` (and its compiled graphs): generate() goes back to the plain path."""
    _STEPS.pop(model, None)
