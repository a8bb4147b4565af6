"""generation.fast: the static-shape (and compiled) one-token step gives the plain path's tokens."""

from __future__ import annotations

import functools
import gc
import re

import numpy as np
import pytest
import torch
from nl_gen_helpers import next_logits, tiny_lm, unicode_tokenizer
from torch._dynamo.utils import counters

from neurallayers.config import ModelConfig
from neurallayers.generation import GenerationConfig, generate_ids, rowdot, stream
from neurallayers.generation.fast import decode_step_for, prepare_for_decode, release
from neurallayers.generation.generate import forward_step
from neurallayers.models.decoder import DecoderLM
from neurallayers.nn.kv_cache import CachePositionError

PROMPTS = [[5, 9, 2, 7, 1, 3], [4, 8], [11, 12, 13, 14]]  # different lengths: a left-padded batch


def _ids(model, prompts, **settings) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True, **settings)
    return [g.token_ids for g in generate_ids(model, prompts, cfg, eos_ids=[])]


def _pair(**kwargs):
    """Two models with the same weights: one plain, one prepared for fast decoding with `kwargs`."""
    plain, fast = tiny_lm(seed=1), tiny_lm(seed=1)
    return plain, prepare_for_decode(fast, **kwargs)


LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False)
ARCHITECTURES = {  # past the trained length of 16 the dynamic NTK base grows with every step (a traced tensor)
    "llama-gqa-dynamic-ntk": {**LLAMA, "rope_scaling": {"type": "dynamic", "factor": 2.0,
                                                        "original_max_position_embeddings": 16}},
    "mqa-linear-rope": {**LLAMA, "n_kv_head": 1, "rope_scaling": {"type": "linear", "factor": 2.0}},
    "llama3-rope": {**LLAMA, "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    "alibi": {"position": "alibi"},
    "sinusoidal": {"position": "sinusoidal"},
    "sliding-window": {**LLAMA, "sliding_window": 8},
    "post-norm-geglu-layerscale": {"norm_placement": "post", "mlp": "geglu", "layer_scale": 0.1},
    "qwen2-head-dim-16": {**LLAMA, "qkv_bias": True, "head_dim": 16},  # heads wider than n_embd / n_head
    "gpt1-untied-erf-gelu": {"norm_placement": "post", "final_norm": False, "tie_embeddings": False,
                             "gelu_approx": "none", "head_dim": 4},
}


def _arch_pair(arch: str, **kwargs):
    cfg = ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_embd=32, init_std=0.3,
                      **ARCHITECTURES[arch])
    torch.manual_seed(1)
    plain = DecoderLM(cfg).eval()
    torch.manual_seed(1)
    return plain, prepare_for_decode(DecoderLM(cfg).eval(), **kwargs)


def _token_mismatches(plain, fast) -> list[tuple[int, dict]]:
    """(rows, settings) where the models' tokens differ: greedy and sampled, one prompt and a padded batch, 40 new
    tokens (past position 16)."""
    differ = []
    for prompts in (PROMPTS[:1], PROMPTS):
        for settings in ({"temperature": 0.0}, {"temperature": 0.9, "seed": 3, "top_k": 10}):
            cfg = GenerationConfig(max_new_tokens=40, ignore_eos=True, **settings)
            want = [g.token_ids for g in generate_ids(plain, prompts, cfg, eos_ids=[])]
            if [g.token_ids for g in generate_ids(fast, prompts, cfg, eos_ids=[])] != want:
                differ.append((len(prompts), settings))
    return differ


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_static_step_of_every_architecture_equals_plain(arch):
    assert _token_mismatches(*_arch_pair(arch, compile=False)) == []


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_static_step_gives_each_row_its_own_context_room(arch):
    """A prompt near the end of the context ends its row early; the others decode on past the context's width in
    cache columns (their positions stay inside it) and get the tokens they get alone on the plain path."""
    plain, fast = _arch_pair(arch, compile=False)
    prompts = [PROMPTS[0], [3] * 60, PROMPTS[1]]
    for settings in ({"temperature": 0.0}, {"temperature": 0.9, "seed": 3, "top_k": 10}):
        cfg = GenerationConfig(max_new_tokens=20, ignore_eos=True, **settings)
        alone = [generate_ids(plain, [p], cfg, eos_ids=[])[0].token_ids for p in prompts]
        assert [len(t) for t in alone] == [20, 5, 20]
        assert [g.token_ids for g in generate_ids(fast, prompts, cfg, eos_ids=[])] == alone, settings


@pytest.mark.slow
def test_compiled_step_of_a_llama_with_dynamic_ntk_equals_plain():
    assert _token_mismatches(*_arch_pair("llama-gqa-dynamic-ntk", compile=True)) == []


@pytest.mark.parametrize("settings", [
    {"temperature": 0.0},
    {"temperature": 0.9, "top_k": 8, "seed": 3, "num_return_sequences": 2},
    {"temperature": 0.0, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
])
def test_static_step_equals_plain(settings):
    plain, fast = _pair(compile=False)
    assert _ids(fast, PROMPTS, **settings) == _ids(plain, PROMPTS, **settings)
    assert _ids(fast, PROMPTS[:1], **settings) == _ids(plain, PROMPTS[:1], **settings)


def test_static_step_logprobs_and_stream():
    tok = unicode_tokenizer()
    plain, fast = tiny_lm(seed=2, vocab=tok.vocab_size), tiny_lm(seed=2, vocab=tok.vocab_size)
    prepare_for_decode(fast, compile=False)
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, logprobs=3)
    (a,), (b,) = (generate_ids(m, [[3, 4, 5]], cfg, eos_ids=[]) for m in (fast, plain))
    assert a.token_ids == b.token_ids
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-5)
        assert [t for t, _ in x.top] == [t for t, _ in y.top]
    texts = ["".join(e.text for e in stream(m, tok, [3, 4, 5], max_new_tokens=10, temperature=0.0))
             for m in (fast, plain)]
    assert texts[0] == texts[1]


def test_static_step_under_autocast_equals_plain():
    """Decoding inside torch.autocast (as nanoGPT's sample.py does): the plain path stores the bf16 keys in its
    float32 cache, but the fast step failed on a batch, its per-row cache writes with torch's "Index put requires the
    source and destination dtypes match", then the decode attention kernel on a bf16 query over float32 keys."""
    plain, fast = _pair(compile=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for rows in (1, 3):  # one row's linear layers run in float32 (rowdot), not bf16: within bf16's precision
            want = next_logits(plain, functools.partial(forward_step, plain), rows)
            torch.testing.assert_close(next_logits(fast, decode_step_for(fast), rows), want, atol=0.1, rtol=0)
        assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain, PROMPTS, temperature=0.0)


def test_bf16_static_step_equals_plain_within_bf16():
    """The eager bf16 step against float32: logits within bf16's precision, as the plain bf16 path's are, and the
    same tokens (where the decode attention kernel runs, its float32 softmax keeps a near tie in this sequence that
    the plain bf16 path, which rounds scores and weights to bf16, flips)."""
    plain, fast = _pair(compile=False, dtype=torch.bfloat16)
    plain16 = tiny_lm(seed=1).to(torch.bfloat16)
    assert fast.wte.weight.dtype == torch.bfloat16
    assert decode_step_for(fast).new_cache(2, 10).k.dtype == torch.bfloat16
    for rows in (1, 3):
        want = next_logits(plain, functools.partial(forward_step, plain), rows)
        torch.testing.assert_close(next_logits(fast, decode_step_for(fast), rows), want, atol=0.1, rtol=0)
        torch.testing.assert_close(next_logits(plain16, functools.partial(forward_step, plain16), rows), want,
                                   atol=0.1, rtol=0)
    if torch.bfloat16 in rowdot.attention_dtypes():
        assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain, PROMPTS, temperature=0.0)
    else:  # torch's attention, as the plain bf16 path: the same roundings
        assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain16, PROMPTS, temperature=0.0)


@pytest.mark.slow
def test_compiled_step_equals_plain(monkeypatch):
    """The compiled step: batch 1 (its own graph, RowLinear GEMVs) and batch 3 (the graph of every batch > 1) give
    the plain path's logits and tokens, in fp32 and bf16; re-preparing after a weight change recompiles a graph that
    froze the old weights."""
    from neurallayers.generation.fast import RowLinear

    plain, fast = _pair(compile=True)
    # batches through inductor's GEMMs, as on a CPU with AVX-512: the batch graph freezes the weights on every host.
    # Freezing bypasses AOT autograd's cache and keeps a copy of the weights, so the batch-1 graph (rowdot or the
    # multiply-sum) is compiled unfrozen and only the batch graph frozen.
    monkeypatch.setattr(RowLinear, "batch_dtypes", ())
    counters.clear()
    assert _ids(fast, PROMPTS[:1], temperature=0.0) == _ids(plain, PROMPTS[:1], temperature=0.0)
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0 and counters["aot_autograd"]["total"] == 1
    assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain, PROMPTS, temperature=0.0)
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 1 and counters["aot_autograd"]["total"] == 2
    want = next_logits(plain, functools.partial(forward_step, plain))
    torch.testing.assert_close(next_logits(fast, decode_step_for(fast)), want, atol=1e-5, rtol=1e-5)
    sampled = {"temperature": 0.8, "seed": 5, "top_p": 0.9}
    assert _ids(fast, PROMPTS, **sampled) == _ids(plain, PROMPTS, **sampled)

    # bf16 rounds differently from the plain bf16 path (which rounds between ops and so flips a near tie in this
    # sequence): compare with float32 instead, within bf16's precision
    _, fast16 = _pair(compile=True, dtype=torch.bfloat16)
    torch.testing.assert_close(next_logits(fast16, decode_step_for(fast16)), want, atol=0.1, rtol=0)
    assert _ids(fast16, PROMPTS[:1], temperature=0.0) == _ids(plain, PROMPTS[:1], temperature=0.0)

    before = _ids(fast, PROMPTS, temperature=0.0)
    with torch.no_grad():
        for model in (plain, fast):
            model.blocks[0].mlp.fc.weight.mul_(-1)
    want = _ids(plain, PROMPTS, temperature=0.0)
    # preparing again compiles the new weights before decoding (without it, the next frozen step recompiles with a
    # warning: test_fast_weight_changes.py)
    prepare_for_decode(fast)
    after = _ids(fast, PROMPTS, temperature=0.0)
    assert after == want and after != before


@pytest.mark.slow
def test_a_batch_graph_through_rowdots_loops_is_not_frozen(monkeypatch):
    """Where rowdot's batch loops take the batch's dtype, the batch graph calls them and is compiled unfrozen (the
    frozen case, batches through inductor's GEMMs, is in test_compiled_step_equals_plain)."""
    from neurallayers.generation.fast import RowLinear

    plain, fast = _pair(compile=True)
    monkeypatch.setattr(RowLinear, "batch_dtypes", (torch.float32,))  # the batch loops take fp32 batches
    counters.clear()
    assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain, PROMPTS, temperature=0.0)
    assert counters["aot_autograd"]["total"] == 1 and counters["aot_autograd"]["autograd_cache_bypass"] == 0


@pytest.mark.slow
def test_each_prepared_model_has_its_own_recompile_limit():
    """dynamo counts recompilations (and keeps graphs) per code object: each step compiles its own copy of the
    step's code, so models prepared one after another (a server's reloads) never exhaust torch's recompile limit
    together (with fullgraph=True that is an error, not a fallback)."""
    with torch._dynamo.config.patch(recompile_limit=1):
        for seed in (1, 2, 3):
            fast = prepare_for_decode(tiny_lm(seed=seed))
            assert _ids(fast, PROMPTS[:1], temperature=0.0) == _ids(tiny_lm(seed=seed), PROMPTS[:1], temperature=0.0)


def test_per_row_positions_equal_plain_model():
    """A server's rows sit at different cache columns: the step takes a (R,) input_pos like DecoderLM.forward."""
    plain, fast = _pair(compile=False)
    prompts = torch.tensor([[5, 9, 2, 7, 1, 3], [4, 8, 6, 2, 2, 9]])
    lens, tok = torch.tensor([6, 3]), torch.tensor([[7], [1]])  # row 1 used only its first 3 tokens
    with torch.inference_mode():
        caches = plain.new_cache(2, 12), decode_step_for(fast).new_cache(2, 12)
        for model, cache in zip((plain, fast), caches, strict=True):
            for r in range(2):
                model(prompts[r:r + 1, :int(lens[r])], cache=cache.rows(r, r + 1), logits_to_keep=1)
        want = plain(tok, cache=caches[0], input_pos=lens).logits[:, -1].float()
        got = decode_step_for(fast)(tok, cache=caches[1], input_pos=lens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_new_cache_is_static():
    _, fast = _pair(compile=False)
    cache = decode_step_for(fast).new_cache(2, 17)
    assert cache.static and cache.max_len == 18 and cache.batch_size == 2  # a spare position: see new_cache


def test_release_and_weak_registry():
    _, fast = _pair(compile=False)
    assert decode_step_for(fast) is not None
    release(fast)
    assert decode_step_for(fast) is None
    prepare_for_decode(fast, compile=False)
    step = decode_step_for(fast)
    del fast
    gc.collect()
    with pytest.raises(RuntimeError, match="no longer exists"):
        step.new_cache(1, 4)


def test_step_refuses_a_plain_cache():
    _, fast = _pair(compile=False)
    with pytest.raises(ValueError, match="static cache"):
        decode_step_for(fast)(torch.zeros(1, 1, dtype=torch.long), cache=fast.new_cache(1, 8), input_pos=0,
                              position_ids=None, attention_mask=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": torch.int8}, "dtype"),
    ({"dtype": "bf16"}, "dtype"),
    ({"mode": "reduce-overhead"}, "mode='reduce-overhead'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_for_decode(tiny_lm(), compile=False, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_a_dtype_no_weight_is_kept_in_is_refused_before_the_cast(dtype):
    """A float8 dtype is floating point, so it was taken: the model was cast in place (its weights rounded to 3 or 2
    bits of mantissa, for good) and the first step failed deep in torch ('"add_stub" not implemented for
    'Float8_e4m3fn''). Now it is refused first, naming the dtypes allowed, and the weights are left as they were."""
    model = tiny_lm(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"dtype=torch.float8_\w+: .*torch.float32, torch.bfloat16"):
        prepare_for_decode(model, dtype=dtype, compile=False)
    assert decode_step_for(model) is None
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_bf16_on_a_cpu_without_bf16_dot_products_warns_unless_rowdot_runs_its_batches(monkeypatch):
    """Without bf16 dot products torch's bf16 matrix products are slow; rowdot's batch loops (AVX2) replace them in a
    prepared model, so the warning is for CPUs where those loops cannot run."""
    import warnings

    from neurallayers.generation.fast import RowLinear
    from neurallayers.nn import cpu

    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(cpu, "_WARNED_BF16", set())
    prepare_for_decode(tiny_lm(), compile=False)  # sets RowLinear's dtypes (the first step on a machine)
    monkeypatch.setattr(RowLinear, "batch_dtypes", (torch.float32, torch.bfloat16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_for_decode(tiny_lm(), dtype=torch.bfloat16, compile=False)
    monkeypatch.setattr(RowLinear, "batch_dtypes", (torch.float32,))
    with pytest.warns(UserWarning, match="bf16 weights on a CPU without bf16 dot products.*batch-1 decode steps"):
        prepare_for_decode(tiny_lm(), dtype=torch.bfloat16, compile=False)


def test_compile_without_a_cpp_compiler_runs_the_step_eagerly():
    """torch.compile on CPU builds its kernels with a C++ compiler: without one, prepare_for_decode says so and keeps
    the eager fast step, where the first compiled step raised inductor's InvalidCxxCompiler in the middle of
    generate(), after the prompt's prefill."""
    from torch._inductor import config as inductor_config

    plain = tiny_lm(seed=1)
    # inductor's own patch: monkeypatch's undo deleted the option (torch's config module then hides it)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}), \
            pytest.warns(UserWarning, match=r"needs a C\+\+ compiler on CPU.*runs eagerly"):
        fast = prepare_for_decode(tiny_lm(seed=1))
    assert not decode_step_for(fast).compiled
    assert _ids(fast, PROMPTS[:1], temperature=0.0) == _ids(plain, PROMPTS[:1], temperature=0.0)


def test_not_a_decoder():
    with pytest.raises(ValueError, match="DecoderLM"):
        prepare_for_decode(torch.nn.Linear(2, 2))


def test_step_reads_a_window_of_the_cache():
    """The step reads the cache's first columns only (every column any row may see, rounded up to 16), through a
    view that writes go through; a window too short for a row's position fails instead of dropping the write."""
    _, fast = _pair(compile=False)
    step = decode_step_for(fast)
    cache = step.new_cache(2, 40)
    window = cache.window(16)
    assert window.max_len == 16 and window.k.data_ptr() == cache.k.data_ptr()
    window.k[0, 0, 0, 3] = 7.0
    assert cache.k[0, 0, 0, 3, 0] == 7.0
    for bad in (0, 42):
        with pytest.raises(ValueError, match="window length"):
            cache.window(bad)
    tok, pos = torch.tensor([[1], [2]]), torch.tensor([3, 20])
    with torch.inference_mode():
        step(tok, cache=cache, input_pos=pos, attend=21)  # a window of 32 columns holds both rows' positions
        with pytest.raises((IndexError, RuntimeError)):
            step(tok, cache=cache, input_pos=pos, attend=4)  # row 1 writes at column 20, past a 16-column window
        for bad in (0, 42, 2.5, True):
            with pytest.raises(ValueError, match="attend"):
                step(tok, cache=cache, input_pos=pos, attend=bad)
        with pytest.raises(ValueError, match="input_pos=41"):
            step(tok[:1], cache=cache, input_pos=41)  # 40 positions and the spare one: 0..40


def test_step_refuses_a_mask_narrower_than_the_columns_it_attends():
    """A mask must cover every column the step attends, as DecoderLM.forward requires; a narrower one was padded with
    zeros, hiding the row's earlier tokens: logits far from the plain path's, silently. A mask of one row holds for
    every row, as in DecoderLM.forward."""
    plain, fast = _pair(compile=False)
    step = decode_step_for(fast)
    prompt, tok = torch.tensor([[5, 9, 2, 7, 1, 3, 4, 4, 2, 1]] * 2), torch.tensor([[3], [3]])
    with torch.inference_mode():
        cache = step.new_cache(2, 16)
        fast(prompt, cache=cache, logits_to_keep=1)
        with pytest.raises(ValueError, match=r"attention_mask must have shape \(R=2, S>=11\).*got \(2, 3\)"):
            step(tok, cache=cache, input_pos=10, attention_mask=torch.ones(2, 3, dtype=torch.long))
        got = step(tok, cache=cache, input_pos=10, attention_mask=torch.ones(1, 11, dtype=torch.long))
        want = plain(torch.cat([prompt, tok], 1)).logits[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_len", [0, -1, None, 2.5, True])
def test_new_cache_refuses_a_length_that_is_not_a_count(max_len):
    """DecodeStep.new_cache adds its spare column to max_len: 0 (or True) made a cache of one (or two) positions
    silently, None was a TypeError and -1 an error naming max_len=0. DecoderLM.new_cache refuses them itself."""
    _, fast = _pair(compile=False)
    with pytest.raises(ValueError, match=f"new_cache max_len={re.escape(repr(max_len))}: must be an int >= 1"):
        decode_step_for(fast).new_cache(1, max_len)
    assert decode_step_for(fast).new_cache(1, np.int64(3)).max_len == 4  # numpy counts are counts


@pytest.mark.parametrize("shape", [(2,), (1, 1), (3, 1), (2, 2)])
def test_step_refuses_tokens_that_do_not_fit_its_cache(shape):
    """tok is (R, 1) for the cache's R rows: compiled, a mismatch failed deep in a generated kernel."""
    _, fast = _pair(compile=False)
    step = decode_step_for(fast)
    with torch.inference_mode(), pytest.raises(ValueError, match=r"tok must have shape \(R, 1\) with R=2"):
        step(torch.ones(shape, dtype=torch.long), cache=step.new_cache(2, 16), input_pos=0)
    with torch.inference_mode(), pytest.raises(ValueError, match=r"input_pos must be .* \(R,\)=\(2,\)"):
        step(torch.ones(2, 1, dtype=torch.long), cache=step.new_cache(2, 16), input_pos=torch.tensor([[1, 2]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_step_refuses_positions_that_are_not_integers(dtype):
    """DecoderLM.forward refuses an input_pos tensor that does not hold integers; the step cast it to long, silently
    (a float 6.7 wrote and attended at column 6, True at 1)."""
    _, fast = _pair(compile=False)
    step = decode_step_for(fast)
    with torch.inference_mode(), pytest.raises(ValueError, match=f"input_pos must be .*integer.*got a {dtype}"):
        step(torch.ones(2, 1, dtype=torch.long), cache=step.new_cache(2, 16),
             input_pos=torch.tensor([6.7, 1]).to(dtype))


@pytest.mark.parametrize("compile", [False, True])
def test_step_refuses_ids_and_positions_outside_the_model_before_running(compile):
    """A compiled step's graph checks no id or position (the model's own checks skip it): a position outside the cache
    or the position table failed deep in an inductor kernel ("index out of bounds: 0 <= tmp7 < 64L") after a compile,
    an id past the vocabulary was torch's bare IndexError in either step. On the CPU the step names them first, as
    the eager model names the positions (nothing here compiles once they are checked)."""
    _, fast = _pair(compile=compile)
    step = decode_step_for(fast)
    cache, tok = step.new_cache(2, 16), torch.tensor([[3], [4]])
    with torch.inference_mode():
        with pytest.raises(CachePositionError, match="start at 0; writing at -1"):
            step(tok, cache=cache, input_pos=torch.tensor([-1, 4]))
        with pytest.raises(CachePositionError, match="holds 17 positions; writing up to 18"):
            step(tok, cache=cache, input_pos=torch.tensor([4, 17]))
        with pytest.raises(ValueError, match="position 70 is past the learned position table"):
            step(tok, cache=cache, input_pos=torch.tensor([4, 4]), position_ids=torch.tensor([[4], [70]]))
        with pytest.raises(ValueError, match=r"tok must be in \[0, vocab_size=64\), got values in \[3, 64\]"):
            step(torch.tensor([[3], [64]]), cache=cache, input_pos=4)


@pytest.mark.slow
def test_compiled_step_compiles_once_across_windows():
    """A long generation crosses several window lengths (16, 32, 48, ...) and a padded batch reads its mask through
    the same windows: one graph for batch 1 and one for the batch, compiled once each, tokens as the plain path's."""
    plain, fast = _pair(compile=True)
    graphs = counters["stats"]["unique_graphs"]
    for prompts in (PROMPTS[:1], PROMPTS):
        cfg = GenerationConfig(max_new_tokens=45, ignore_eos=True, temperature=0.0)
        got, want = (generate_ids(m, prompts, cfg, eos_ids=[]) for m in (fast, plain))
        assert [g.token_ids for g in got] == [g.token_ids for g in want]
    assert counters["stats"]["unique_graphs"] - graphs == 2
