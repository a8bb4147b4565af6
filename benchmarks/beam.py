"""Beam search throughput: our beam_search vs transformers' generate(num_beams=4) on the same random GPT-2 weights
(a small 6x512 shape and the 124M shape), in one process, timed call by call in alternation so machine noise hits
both alike.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/beam.py [--beams 4] [--prompt 32] [--new 32] [--budget 6]

Prints one row per shape: median seconds per call, beam tokens/s (num_beams x new tokens / s) of each, the ratio,
and whether both returned the same token ids.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {"6x512": dict(n_layer=6, n_embd=512, n_head=8), "124M": dict(n_layer=12, n_embd=768, n_head=12)}


def build(shape: dict, seed: int):
    import transformers

    from neurallayers.interop import gpt2
    from neurallayers.models.decoder import DecoderLM

    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(vocab_size=50257, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, **shape)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = gpt2.config_from_hf(hf_cfg.to_dict())
    ours = DecoderLM(cfg).eval()
    ours.load_state_dict(gpt2.to_ours(hf.state_dict(), cfg), strict=False)
    return hf, ours


def compare(fn_a, fn_b, *, budget: float, min_pairs: int = 3) -> tuple[float, float]:
    """Median seconds per call of a and b, alternating a, b, a, b ... after one warm-up call each."""
    fn_a(), fn_b()
    ta, tb = [], []
    start = time.perf_counter()
    while len(ta) < min_pairs or time.perf_counter() - start < budget:
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


@torch.inference_mode()
def main() -> None:
    from bench_common import argument_parser, at_least, names_of, seconds

    p = argument_parser(__doc__)
    p.add_argument("--beams", type=at_least(1), default=4, help="beams per prompt")
    p.add_argument("--prompt", type=at_least(1), default=32, help="prompt tokens")
    p.add_argument("--new", type=at_least(1), default=32, help="new tokens per sequence")
    p.add_argument("--budget", type=seconds(zero=True), default=6.0, help="seconds of timing per shape")
    p.add_argument("--shapes", type=names_of(*SHAPES), default=",".join(SHAPES),
                   help=f"GPT-2 shapes, comma separated: {', '.join(SHAPES)}")
    args = p.parse_args()

    from neurallayers.generation.config import GenerationConfig
    from neurallayers.generation.search import beam_search

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, num_beams {args.beams}, "
          f"prompt {args.prompt}, new {args.new}")
    print(f"{'shape':8} {'ours s':>8} {'hf s':>8} {'ours tok/s':>11} {'hf tok/s':>10} {'ours/hf':>8} {'same ids':>9}")
    for name in args.shapes.split(","):
        hf, ours = build(SHAPES[name], seed=0)
        prompt = torch.randint(0, 50257, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
        cfg = GenerationConfig(max_new_tokens=args.new, num_beams=args.beams, early_stopping=False)
        x = torch.tensor([prompt])

        def run_ours(cfg=cfg, ours=ours, prompt=prompt):
            return beam_search(ours, [prompt], cfg, eos_ids=[])[0][0].token_ids

        def run_hf(hf=hf, x=x):
            out = hf.generate(x, attention_mask=torch.ones_like(x), num_beams=args.beams, do_sample=False,
                              max_new_tokens=args.new, min_new_tokens=args.new, eos_token_id=None, pad_token_id=0)
            return out[0, x.shape[1]:].tolist()

        same = run_ours() == run_hf()
        t_ours, t_hf = compare(run_ours, run_hf, budget=args.budget)
        rate = args.beams * args.new
        print(f"{name:8} {t_ours:8.3f} {t_hf:8.3f} {rate / t_ours:11.1f} {rate / t_hf:10.1f} "
              f"{t_hf / t_ours:7.2f}x {str(same):>9}", flush=True)


if __name__ == "__main__":
    main()
