"""Training speed of `neurallayers.training.fit`, and nanoGPT's CPU Shakespeare recipe run through it.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train.py [--data PATH] [--rounds 7] [--steps 30] [--compile]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train.py --recipe [--data PATH] [--precision auto] [--compile]

Speed (default): short fit() runs of (a) nanoGPT's CPU Shakespeare shape (4 layers, 4 heads, 128 wide, context
64, batch 12, character vocabulary, dropout 0) in fp32 and bf16, and (b) GPT-2 124M (12x768, context 1024,
batch 1, its 50257-token vocabulary) for a few steps. Configurations run in alternation, round after round, so
machine noise hits all alike; a row is the median over rounds of each run's median step time. MFU is measured
against this machine's best matmul rate in that precision (printed; 2048^3 `torch.mm`, best of several). The
"x nanoGPT" column compares with nanoGPT's own fp32 loop at shape (a), 39.9 ms/iter on these machines; the
"x plain loop" column with `plain_gpt.py`, a nanoGPT-style fp32 loop timed in the same alternation. "first step s" is
the slowest first step over rounds: warm-up, and with --compile the compilation (inductor's on-disk cache makes
later compilations faster; a fresh cache took 19 s at shape (a)).

Recipe (--recipe): nanoGPT's `train_shakespeare_char` CPU recipe (4x4x128, context 64, batch 12, 2000
iterations, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4, AdamW beta2 0.99 and weight decay 0.1,
clip 1.0, dropout 0; the text split 90/10 by position; evaluation every 250 steps) through fit(), once per
--positions entry: nanoGPT's model (learned position table), and the same shape and recipe with rotary positions
(RoPE, as the Llama presets use) or ALiBi biases (neither has a position table: 8,192 fewer parameters). Prints
the final validation loss (all 1,742 non-overlapping windows of the validation text) and the training speed next
to nanoGPT's: val loss 1.8857 at 39.9 ms/iter (19,250 tokens/s). --reference adds the plain-PyTorch loop of
plain_gpt.py.

Data: the benchmark text `tinyshakespeare.txt` (nanoGPT's `shakespeare_char`), by default looked for at
`../shared/data/tinyshakespeare.txt` relative to the repository root (pass --data PATH). Without it the speed
table trains on the built-in `shakespeare` corpus instead, and the recipe is skipped with a message.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT = {"ms_per_iter": 39.9, "tokens_per_sec": 19_250, "val_loss": 1.8857}  # its fp32 loop, these machines
NANOGPT_MS = NANOGPT["ms_per_iter"]
NANOGPT_MODEL = dict(
    name="nanogpt-shakespeare-char",
    block_size=64,
    n_layer=4,
    n_head=4,
    n_embd=128,
    bias=False,
    dropout=0.0,
    gelu_approx="none",
)  # nanoGPT: no biases, exact-erf GELU, tied embeddings


def peak_flops(dtype: torch.dtype, *, n: int = 2048, tries: int = 5) -> float:
    """Best matmul rate of this machine in `dtype` (FLOP/s): n^3 `torch.mm`, best of `tries`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def nanogpt_run(data: str, tokenizer: str, out_cache: str | None, *, position: str = "learned", **train) -> object:
    """A RunConfig of nanoGPT's Shakespeare recipe; `train` overrides TrainConfig fields. position "rope": the
    same shape with rotary positions in place of nanoGPT's learned position table."""
    from neurallayers.config import ModelConfig
    from neurallayers.training import DataConfig, RunConfig, TrainConfig

    split = "tail" if Path(data).is_file() else "documents"
    settings = dict(
        max_steps=2000,
        batch_size=12,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=250,
        eval_batches=200,
        log_interval=50,
        save_interval=0,
        sample_tokens=0,
        device="cpu",
        seed=1337,
    )
    settings.update(train)
    return RunConfig(
        model=ModelConfig(vocab_size=65, **NANOGPT_MODEL).replace(position=position),
        train=TrainConfig(**settings),
        data=DataConfig(source=data, tokenizer=tokenizer, split=split, val_fraction=0.1, cache_dir=out_cache),
    )


def gpt2_run(data: str, out_cache: str | None, *, batch: int, context: int, **train) -> object:
    from neurallayers.config import ModelConfig
    from neurallayers.training import DataConfig, RunConfig, TrainConfig

    settings = dict(
        batch_size=batch,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=2,
        eval_interval=0,
        eval_batches=1,
        log_interval=1000,
        save_interval=0,
        sample_tokens=0,
        device="cpu",
    )
    settings.update(train)
    return RunConfig(
        model=ModelConfig.from_name("gpt2").replace(block_size=context, dropout=0.0),
        train=TrainConfig(**settings),
        data=DataConfig(source=data, tokenizer="gpt2", cache_dir=out_cache),
    )


def timed_fit(run: object) -> object:
    """fit() into a temporary run directory (removed afterwards); returns its TrainResult."""
    from neurallayers.training import fit

    with tempfile.TemporaryDirectory(prefix="nl-bench-") as out:
        return fit(run, Path(out) / "run", progress=False)


def plain_steps(data: str, steps: int) -> list[float]:
    """Per-step seconds of the plain nanoGPT-style loop (fp32) at shape (a), on the text or random ids."""
    from plain_gpt import PlainTrainer, char_split

    if Path(data).is_file():
        train, val, _ = char_split(Path(data).read_text(encoding="utf-8"))
    else:
        train = val = torch.randint(0, 65, (100_000,), generator=torch.Generator().manual_seed(0))
    trainer = PlainTrainer(train, val, max_iters=steps)
    return [trainer.step() for _ in range(steps)]


def speed(args: argparse.Namespace, data: str) -> None:
    from neurallayers.models import build_model

    def nanogpt(precision: str, comp: bool, position: str = "learned") -> object:
        # a warmup shorter than the run: timing is the same, and fit() warns of one as long as the run
        return nanogpt_run(data, "char", args.cache_dir, max_steps=args.steps, eval_interval=0, eval_batches=1,
                           warmup_steps=min(100, args.steps // 10), precision=precision, compile=comp,
                           position=position)  # fmt: skip


    def gpt2(precision: str, comp: bool) -> object:
        return gpt2_run(data, args.cache_dir, batch=args.gpt2_batch, context=args.gpt2_context,
                        max_steps=args.gpt2_steps, warmup_steps=min(2, args.gpt2_steps // 2), precision=precision,
                        compile=comp)  # fmt: skip

    precisions = [p for p in args.precisions.split(",") if p]
    shapes = args.shapes.split(",")
    configs = []  # (shape label, precision, compile, RunConfig factory; None: the plain loop)
    if "nanogpt" in shapes and not args.no_plain:
        configs.append(("nanogpt 4x128", "fp32", False, None))
    for precision in precisions:
        for comp in [False, True] if args.compile else [False]:
            if "nanogpt" in shapes:
                configs.append(("nanogpt 4x128", precision, comp, nanogpt))
            for position in ("rope", "alibi"):  # nanoGPT's shape with other position encodings
                if position in shapes:
                    configs.append((f"nanogpt 4x128 {position}", precision, comp,
                                    functools.partial(nanogpt, position=position)))  # fmt: skip
            if "gpt2" in shapes:
                configs.append(("gpt2 124M", precision, comp, gpt2))
    peaks = {p: peak_flops(torch.bfloat16 if p == "bf16" else torch.float32) for p in ["fp32", *precisions]}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
        "matmul peak " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())
    )
    medians: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    firsts: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    models = {}
    for r in range(args.rounds):
        for i, (label, precision, comp, factory) in enumerate(configs):
            if label.startswith("gpt2") and r >= args.gpt2_rounds:
                continue
            if factory is None:
                times = plain_steps(data, args.steps)
                medians[i].append(statistics.median(times))
                firsts[i].append(times[0])
                name = "plain loop"
            else:
                run = factory(precision, comp)
                result = timed_fit(run)
                medians[i].append(result.median_step_seconds)
                firsts[i].append(result.first_step_seconds)
                models[i] = run.model
                name = f"fit() {precision}{' compiled' if comp else ''}"
            print(f"  round {r + 1}: {label} {name}: {1e3 * medians[i][-1]:.1f} ms/iter", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}; ms/iter = median over rounds of each run's median step\n")
    print(
        "| shape | trainer | precision | compile | tokens/iter | ms/iter | tokens/s | MFU | first step s (max) "
        "| x plain loop | x nanoGPT 39.9 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    plain_ms = 1e3 * statistics.median(medians[0]) if configs and configs[0][3] is None else None
    for i, (label, precision, comp, factory) in enumerate(configs):
        if not medians[i]:
            continue
        ms = 1e3 * statistics.median(medians[i])
        cfg = models.get(i) or nanogpt_run(data, "char", args.cache_dir).model
        n_tokens = (12 if label.startswith("nanogpt") else args.gpt2_batch) * cfg.block_size
        tps = n_tokens / (ms / 1e3)
        with torch.device("meta"):
            mfu = build_model(cfg).estimate_mfu(tps, peaks[precision])
        nano = label.startswith("nanogpt")
        print(
            f"| {label} | {'plain loop' if factory is None else 'fit()'} | {precision} | {'yes' if comp else 'no'} "
            f"| {n_tokens} | {ms:.1f} | {tps:,.0f} | {100 * mfu:.1f}% | {max(firsts[i]):.1f} "
            f"| {f'{plain_ms / ms:.2f}x' if nano and plain_ms else ''} "
            f"| {f'{NANOGPT_MS / ms:.2f}x' if nano else ''} |"
        )


def recipe(args: argparse.Namespace, data: str) -> None:
    from neurallayers.training import fit

    if not Path(data).is_file():
        print(f"recipe skipped: the benchmark text {data} is not there (pass --data PATH to tinyshakespeare.txt)")
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
        f"precision {args.precision}, compile {args.compile}; data {data}"
    )
    rows = []  # (trainer, position table, val loss, median step s, mean tokens/s, first step s, wall s)
    for position in args.positions.split(","):
        run = nanogpt_run(data, "char", args.cache_dir, position=position, precision=args.precision,
                          compile=args.compile, log_interval=250)  # fmt: skip
        out = Path(args.out or tempfile.mkdtemp(prefix="nl-recipe-")) / f"run-{position}"
        result = fit(run, out, progress=not args.quiet)
        rows.append(("neurallayers fit()", position, result.final_val_loss, result.median_step_seconds,
                     result.tokens_per_second, result.first_step_seconds, result.wall_seconds))  # fmt: skip
        print(f"  {position}: val loss {result.final_val_loss:.4f}, run directory {out}", flush=True)
    if args.reference:
        from plain_gpt import PlainTrainer, char_split

        train, val, _ = char_split(Path(data).read_text(encoding="utf-8"))
        plain = PlainTrainer(train, val, max_iters=2000)
        t0 = time.perf_counter()
        times = [plain.step() for _ in range(2000)]
        rows.append(("plain PyTorch loop (nanoGPT-style, fp32)", "learned", plain.evaluate(), statistics.median(times),
                     len(times) * 768 / sum(times), times[0], time.perf_counter() - t0))  # fmt: skip
    print(f"\nload average {os.getloadavg()[0]:.1f}\n")
    print(
        "| trainer | positions | steps | final val loss | ms/iter (median) | tokens/s (median step) "
        "| x nanoGPT tokens/s | tokens/s (mean step) | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, position, loss, step_s, mean_tps, _first, wall in rows:
        print(
            f"| {name} | {position} | 2000 | {loss:.4f} | {1e3 * step_s:.1f} | {768 / step_s:,.0f} "
            f"| {768 / step_s / NANOGPT['tokens_per_sec']:.2f}x | {mean_tps:,.0f} | {wall:.0f} |"
        )
    print(
        f"| nanoGPT train.py (reported) | learned | 2000 | {NANOGPT['val_loss']} | {NANOGPT_MS} | "
        f"{NANOGPT['tokens_per_sec']:,} | 1.00x | | |"
    )
    print(
        "\nval loss: fit() evaluates all 1,742 non-overlapping 64-token windows of the validation text; the plain "
        "loop's is the mean of 200 random batches (PlainTrainer.evaluate), nanoGPT's figure the mean of 20. wall s: "
        "fit() with its 8 evaluations and final checkpoint."
    )


def main() -> None:
    from bench_common import argument_parser, at_least, default_precisions, names_of

    p = argument_parser(__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare.txt (default: %(default)s)")
    p.add_argument("--recipe", action="store_true", help="run nanoGPT's 2000-step recipe instead of the speed table")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="recipe precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (speed: extra rows)")
    p.add_argument("--out", default=None, help="recipe: keep the run directories here (default: a temp folder)")
    p.add_argument(
        "--positions",
        type=names_of("learned", "rope", "alibi"),
        default="learned,rope,alibi",
        help="recipe: position encodings to train, comma separated (learned: nanoGPT's model; rope, alibi: its shape "
        "with rotary positions or ALiBi biases)",
    )
    p.add_argument("--quiet", action="store_true", help="recipe: no progress bar")
    p.add_argument(
        "--reference",
        action="store_true",
        help="recipe: also run the plain-PyTorch nanoGPT-style loop (fp32) for the same 2000 steps",
    )
    p.add_argument("--cache-dir", default=None, help="token/tokenizer cache (default: the framework's)")
    p.add_argument(
        "--shapes",
        type=names_of("nanogpt", "rope", "alibi", "gpt2"),
        default="nanogpt,rope,alibi,gpt2",
        help="speed: nanogpt, rope and alibi (nanogpt's shape with those positions), gpt2; comma separated",
    )
    p.add_argument("--precisions", type=names_of("fp32", "bf16"), default=None,
                   help="speed: comma separated (default fp32,bf16; fp32 alone on a CPU without bf16 dot products)")
    p.add_argument("--no-plain", action="store_true", help="speed: leave out the plain-PyTorch baseline loop")
    p.add_argument("--rounds", type=at_least(1), default=7, help="speed: alternating rounds of the nanogpt shape")
    p.add_argument("--steps", type=at_least(1), default=30, help="speed: steps per nanogpt-shape run")
    p.add_argument("--gpt2-rounds", type=at_least(1), default=1, help="speed: alternating rounds of the gpt2 shape")
    p.add_argument("--gpt2-steps", type=at_least(1), default=4, help="speed: steps per gpt2-shape run")
    p.add_argument("--gpt2-batch", type=at_least(1), default=1, help="speed: the gpt2 shape's sequences per step")
    p.add_argument("--gpt2-context", type=at_least(1), default=1024, help="speed: ... and their tokens")
    args = p.parse_args()
    args.precisions = args.precisions or default_precisions()
    logging.basicConfig(level=logging.WARNING)
    data = args.data if Path(args.data).is_file() else "shakespeare"
    if not args.recipe and data != args.data:
        print(f"{args.data} not found: the speed table trains on the built-in shakespeare corpus")
    (recipe if args.recipe else speed)(args, args.data if args.recipe else data)


if __name__ == "__main__":
    main()
