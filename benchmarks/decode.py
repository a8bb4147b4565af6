"""Decode and prefill speed: our generate() (plain, and with the fast step of generation.fast.prepare_for_decode)
against Hugging Face transformers' generate() on the same random GPT-2 124M weights (preset "gpt2"), fp32 and bf16,
greedy, EOS ignored, fixed lengths. Every engine of every dtype runs in one process, timed call by call in
alternation (fp32 fast, plain, HF, bf16 fast, plain, HF, fp32 fast ...) so machine noise hits all alike; figures
are medians, and each row's ratios (to HF in the same dtype, and to HF fp32) come from the same alternation.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decode.py [--new 128] [--batches 1,8] [--rounds 5]

On a machine shared with other busy processes, also set OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads then
make single calls up to 50x slower at random, whichever engine runs. On a quiet machine leave it unset: sleeping
threads wake late for each of the ~100 small kernels of a decode step (the fast step measured 64 vs 73 tokens/s
in fp32 and 79 vs 128 in bf16 at batch 1, HF about the same either way).

Rows:
- prefill: a 512-token prompt, batch 1, one new token: prompt tokens/s.
- decode: a 16-token prompt per row, `--new` new tokens: (batch x (new - 1)) / (t(new) - t(1)) tokens/s, so
  the prefill is not counted.

Floors (the roofline): a decode step reads every weight once (the tied embedding/lm_head counted once; the KV
cache, small here, is left out), so tokens/s cannot pass batch x bandwidth / weight bytes, with the streaming read
bandwidth measured here (sum over a 1 GiB tensor; the median of measurements between rows); nor can it pass the
measured GEMM rate of the dtype (for bf16 at least fp32's: a CPU without bf16 dot products computes bf16 in fp32)
/ matmul FLOPs per token, which binds first for fp32 at batch 8 and for prefill.
"same ids" compares greedy token ids with transformers (rows whose ids all agree; in bf16 different kernels round
differently, so a near tie may flip a token, after which the sequences part). "compile s" is the first fast call's
extra time (torch.compile of the one-token step for that batch size).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VOCAB = 50257


def build(dtype: torch.dtype, seed: int):
    """(hf, ours_plain, ours_fast) on the same weights: ours from the preset, HF from our config via interop."""
    import transformers

    from neurallayers.config import ModelConfig
    from neurallayers.generation.fast import prepare_for_decode
    from neurallayers.interop import gpt2
    from neurallayers.models.decoder import DecoderLM

    torch.manual_seed(seed)
    cfg = ModelConfig.from_name("gpt2")
    plain = DecoderLM(cfg).eval()
    hf_cfg = transformers.GPT2Config(**{k: v for k, v in gpt2.config_to_hf(cfg).items() if k != "architectures"})
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.load_state_dict(gpt2.to_hf(plain.state_dict(), cfg), strict=False)  # strict=False: attn.bias buffers
    hf.generation_config.eos_token_id = None  # fixed lengths: never stop early
    hf.generation_config.pad_token_id = 0
    fast = DecoderLM(cfg).eval()
    fast.load_state_dict(plain.state_dict())
    prepare_for_decode(fast, dtype=dtype)
    return hf.to(dtype), plain.to(dtype), fast


def timed(engines: dict[str, Callable[[], object]], *, budget: float, min_rounds: int = 3) -> dict[str, float]:
    """Median seconds per call of each engine, called in turn (a, b, c, a, b, c ...) for `budget` seconds."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_rounds or time.perf_counter() - start < budget:
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def read_bandwidth(reps: int = 5) -> list[float]:
    """Streaming read rates in bytes/s: summing a 1 GiB fp32 tensor of random values (a tensor of equal values can
    read faster than memory allows on a VM that merges identical pages)."""
    x = torch.rand(2**28)
    x.sum()
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        rates.append(x.numel() * 4 / (time.perf_counter() - t0))
    return rates


def gemm_rate(dtype: torch.dtype, reps: int = 5) -> float:
    """FLOP/s of a (512 x 768) @ (768 x 3072) matmul, the MLP shape of a 512-token prefill."""
    a, b = torch.randn(512, 768).to(dtype), torch.randn(768, 3072).to(dtype)
    a @ b
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * 512 * 768 * 3072 / (time.perf_counter() - t0))
    return statistics.median(rates)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: every parameter once (a tied lm_head is the embedding), less the position
    table, of which a step reads one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    wpe = getattr(model, "wpe", None)
    return total - (wpe.weight.numel() * wpe.weight.element_size() if wpe is not None else 0)


def prefill_flops(model: torch.nn.Module, t: int) -> float:
    """Matmul FLOPs of a t-token prefill that keeps the last position's logits only."""
    cfg = model.config
    embed = model.wte.weight.numel() + (model.wpe.weight.numel() if model.wpe is not None else 0)
    body = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2) - embed
    attention = 2 * 2 * cfg.n_layer * cfg.n_embd * t * t / 2  # q k^T and a v, causal half
    return 2 * body * t + attention + 2 * cfg.vocab_size * cfg.n_embd


def decode_flops(model: torch.nn.Module) -> float:
    """Matmul FLOPs per generated token (every weight matrix once; attention over a short context left out)."""
    embed = model.wpe.weight.numel() if model.wpe is not None else 0
    return 2 * (sum(p.numel() for p in model.parameters() if p.ndim == 2) - embed)


def engines(models: dict[str, tuple], prompts: list[list[int]], new: int) -> dict[str, Callable[[], list]]:
    """"<dtype> <engine>" -> a call generating `new` tokens for `prompts`, for every dtype's hf/plain/fast."""
    from neurallayers.generation import GenerationConfig, generate_ids

    cfg = GenerationConfig(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    x = torch.tensor(prompts)

    def ours(model):
        return lambda: [g.token_ids for g in generate_ids(model, prompts, cfg, eos_ids=[])]

    def theirs(hf):
        def call():
            out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=new,
                              min_new_tokens=new)
            return out[:, x.shape[1]:].tolist()
        return call

    fns = {}
    for name, (hf, plain, fast) in models.items():
        fns.update({f"{name} fast": ours(fast), f"{name} plain": ours(plain), f"{name} hf": theirs(hf)})
    return fns


def row(dtype: str, phase: str, batch: int, tok: dict[str, float], floor: float, floor_kind: str, same: str,
        compile_s: str) -> str:
    """One table row of `dtype` from the tokens/s of every engine in the alternation (keys "<dtype> <engine>")."""
    fast, plain, hf = (tok[f"{dtype} {e}"] for e in ("fast", "plain", "hf"))
    hf32 = tok.get("fp32 hf")
    vs_fp32 = f"{fast / hf32:.2f}x" if hf32 else "-"
    digits = 0 if phase.startswith("prefill") else 1
    return (f"| {dtype} | {phase} | {batch} | {fast:.{digits}f} | {plain:.{digits}f} | {hf:.{digits}f} | "
            f"{fast / hf:.2f}x | {vs_fp32} | {plain / hf:.2f}x | {floor:.0f} ({floor_kind}) | {fast / floor:.0%} | "
            f"{same} | {compile_s} |")


def same_rows(a: list[list[int]], b: list[list[int]]) -> str:
    same = sum(x == y for x, y in zip(a, b, strict=True))
    if same == len(a):
        return f"{same}/{len(a)}"
    first = min(next(i for i, (s, t) in enumerate(zip(x, y, strict=True)) if s != t)
                for x, y in zip(a, b, strict=True) if x != y)
    return f"{same}/{len(a)} (from {first})"


@torch.inference_mode()
def main() -> None:
    from bench_common import argument_parser, at_least, counts, default_precisions, names_of, seconds

    p = argument_parser(__doc__)
    p.add_argument("--new", type=at_least(2), default=128, help="new tokens per row in the decode rows")
    p.add_argument("--prompt", type=at_least(1), default=512, help="prompt tokens in the prefill row")
    p.add_argument("--decode-prompt", type=at_least(1), default=16, help="prompt tokens per row in the decode rows")
    p.add_argument("--batches", type=counts, default="1,8", help="decode batch sizes")
    p.add_argument("--dtypes", type=names_of(*DTYPES), default=None,
                   help="comma separated (default fp32,bf16; fp32 alone on a CPU without bf16 dot products)")
    p.add_argument("--rounds", type=at_least(1), default=5, help="timed calls of each engine per row (at least)")
    p.add_argument("--budget", type=seconds(zero=True), default=0.0,
                   help="or more: seconds of alternating timing per row")
    args = p.parse_args()
    args.dtypes = args.dtypes or default_precisions()
    batches = [int(b) for b in args.batches.split(",")]
    gen = torch.Generator().manual_seed(1)
    from neurallayers.generation import rowdot

    kernel = rowdot.isa() or "none (inductor's loop)"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, GPT-2 124M random weights, greedy, batch-1 rowdot kernel: "
          f"{kernel}\n", flush=True)

    models = {name: build(DTYPES[name], seed=0) for name in args.dtypes.split(",")}
    wbytes = {name: weight_bytes(m[2]) for name, m in models.items()}
    bandwidths, rates = read_bandwidth(), {name: gemm_rate(DTYPES[name]) for name in models}
    if "bf16" in rates:  # a CPU without bf16 dot products widens bf16 to fp32 (the kernel does): that is its roof
        rates["bf16"] = max(rates["bf16"], rates.get("fp32") or gemm_rate(torch.float32))
    head = ("| dtype | phase | batch | fast tok/s | plain tok/s | HF tok/s | fast/HF | fast/HF fp32 | plain/HF | "
            "floor tok/s | fast/floor | same ids fast=HF | compile s |")
    table = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []

    # prefill: one new token, so each call is a prefill of `prompt` tokens
    prompt = [torch.randint(0, VOCAB, (args.prompt,), generator=gen).tolist()]
    fns = engines(models, prompt, 1)
    ids = {k: fn() for k, fn in fns.items()}
    med = timed(fns, budget=args.budget, min_rounds=args.rounds)
    tok = {k: args.prompt / v for k, v in med.items()}
    for name in models:
        floor = args.prompt / (prefill_flops(models[name][2], args.prompt) / rates[name])
        table.append(row(name, f"prefill {args.prompt}", 1, tok, floor, "compute",
                         same_rows(ids[f"{name} fast"], ids[f"{name} hf"]), "-"))
        print(table[-1], flush=True)

    for b in batches:
        prompts = [torch.randint(0, VOCAB, (args.decode_prompt,), generator=gen).tolist() for _ in range(b)]
        long, short = engines(models, prompts, args.new), engines(models, prompts, 1)
        ids, first = {}, {}
        for k, fn in long.items():  # the first fast call compiles the step for this batch size and cache bucket
            t0 = time.perf_counter()
            ids[k] = fn()
            first[k] = time.perf_counter() - t0
        bandwidths += read_bandwidth()
        med_long = timed(long, budget=args.budget, min_rounds=args.rounds)
        med_short = timed(short, budget=args.budget / 4, min_rounds=args.rounds)
        bandwidths += read_bandwidth()
        tok = {k: b * (args.new - 1) / (med_long[k] - med_short[k]) for k in long}
        for name in models:
            by_bandwidth = b * statistics.median(bandwidths) / wbytes[name]
            by_compute = rates[name] / decode_flops(models[name][2])
            floor, kind = min((by_bandwidth, "bandwidth"), (by_compute, "compute"))
            compile_s = first[f"{name} fast"] - med_long[f"{name} fast"]
            table.append(row(name, f"decode {args.new}", b, tok, floor, kind,
                             same_rows(ids[f"{name} fast"], ids[f"{name} hf"]), f"{compile_s:.0f}"))
            fast_ids = ids[f"{name} fast"]
            notes.append(f"{name} batch {b}: fast == plain ids: {same_rows(fast_ids, ids[f'{name} plain'])}; fast == "
                         f"HF fp32 ids: {same_rows(fast_ids, ids['fp32 hf']) if 'fp32 hf' in ids else '-'}")
            print(table[-1], flush=True)

    bw = statistics.median(bandwidths)
    low, high = min(bandwidths) / 1e9, max(bandwidths) / 1e9
    notes.append(f"read bandwidth {bw / 1e9:.1f} GB/s (median; {low:.1f}-{high:.1f} GB/s)")
    notes += [f"{n}: compute roof {rates[n] / 1e9:.0f} GFLOP/s (GEMM; bf16 at least fp32's), {wbytes[n] / 1e6:.0f} MB "
              "of weights per step" for n in models]
    print("\n" + "\n".join(table))
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
