"""What starting from pretrained weights buys: a run fine-tuned from a source run (`train.init_from`) against the same
model trained from scratch, with the same tokenizer, steps, batches and schedule, on a second corpus.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/finetune.py runs/demo --data python-stdlib [--steps 300]

The source is a run directory or Hugging Face folder (e.g. the one `make demo` writes, `runs/demo`). Prints the
validation loss of both runs at every evaluation, and their training wall times (fit's own clock: preparing the data
and loading the weights not counted). The from-scratch run uses the source's tokenizer file, so both see the same token
ids; the source's own shape, dropout and precision setting.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path


def val_losses(run_dir: Path) -> dict[int, float]:
    import json

    rows = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def source_val_loss(run, source: Path) -> float | None:
    """The source model's val loss on the run's corpus, as fit's evaluations measure it (None for an encoder
    without a masked-LM head: it cannot predict tokens)."""
    import torch

    from neurallayers import load
    from neurallayers.data.masking import Masker
    from neurallayers.training.prepare import prepare_data
    from neurallayers.training.trainer import mean_loss

    model, tokenizer = load(source)
    if not model.config.causal and model.config.head != "mlm":
        return None
    _, tokens, run = prepare_data(run, tokenizer=tokenizer, pretrained=True)
    masker = None if run.model.causal else Masker.for_tokenizer(tokenizer, prob=run.train.mask_prob,
                                                                seed=run.train.seed)
    loss, _ = mean_loss(model, tokens.val, block_size=run.model.block_size, batch_size=run.train.batch_size,
                        max_batches=run.train.eval_batches, device=torch.device("cpu"), masker=masker)
    return loss


def main() -> None:
    from bench_common import argument_parser

    p = argument_parser(__doc__)
    p.add_argument("source", help="the pretrained run directory or Hugging Face folder")
    p.add_argument("--data", default="python-stdlib", help="the corpus to fine-tune on")
    p.add_argument("--steps", type=int, default=300, help="training steps of each run")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the fine-tune (cosine to lr / 10)")
    p.add_argument("--scratch-lr", type=float, default=2e-3, help="... and of the run from scratch (the demo's)")
    p.add_argument("--eval-interval", type=int, default=50, help="steps between the val losses of the table")
    p.add_argument("--block-size", type=int, help="a shorter context than the source's")
    p.add_argument("--out", help="keep the two run directories here (default: a temporary folder)")
    args = p.parse_args()
    from neurallayers.api import resolve_model_path
    from neurallayers.training import RunConfig, fit
    from neurallayers.training.init_from import source_path

    if not resolve_model_path(args.source).exists():  # all-MiniLM-L6-v2 names the bundled encoder
        p.error(f"source {args.source}: no such run directory or model folder (`make demo` writes runs/demo)")

    logging.basicConfig(level=logging.WARNING)
    source = source_path(args.source)
    train = dict(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
                 warmup_steps=min(50, args.steps // 10), eval_interval=args.eval_interval, eval_batches=20,
                 save_interval=0, sample_tokens=0, log_interval=args.steps)
    model = {"block_size": args.block_size} if args.block_size else {}
    tuned = RunConfig.from_dict({"model": model, "train": {**train, "init_from": str(source)},
                                 "data": {"source": args.data}})
    scratch = RunConfig.from_dict({"model": tuned.model.to_dict(),
                                   "train": {**train, "lr": args.scratch_lr, "min_lr": args.scratch_lr / 10},
                                   "data": {"source": args.data, "tokenizer": str(source / "tokenizer.json")}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        rows, walls = {}, {}
        for label, run in (("fine-tuned (init_from)", tuned), ("from scratch", scratch)):
            run_dir = out / label.split()[0].replace("-", "_")
            # fit's own clock: the first run alone tokenizes the corpus (the second reads its cache)
            walls[label] = fit(run, run_dir, progress=False).wall_seconds
            rows[label] = val_losses(run_dir)
    before = source_val_loss(tuned, source)
    if before is not None:
        rows["fine-tuned (init_from)"][0] = before
    rows["from scratch"][0] = math.log(tuned.model.vocab_size)  # a fresh model's expected loss: uniform
    steps = sorted(set().union(*rows.values()))
    print(f"\n{source} -> {args.data}: {args.steps} steps of {args.batch_size} x {tuned.model.block_size} tokens, "
          f"lr {args.lr:g} (fine-tune) and {args.scratch_lr:g} (from scratch); step 0: the source's val loss "
          f"({'none: no head' if before is None else f'{before:.4f}'}) and ln(vocab)\n")
    print("| run | " + " | ".join(f"val loss @ {s}" for s in steps) + " | wall s |")
    print("|---|" + "---|" * (len(steps) + 1))
    for label, losses in rows.items():
        cells = " | ".join(f"{losses[s]:.4f}" if s in losses else "-" for s in steps)
        print(f"| {label} | {cells} | {walls[label]:.0f} |")


if __name__ == "__main__":
    main()
