"""Masked-LM training steps/s of our encoder vs transformers' BertForMaskedLM: the same initial weights, the same
masked batches (BERT's 15% masking), the same AdamW, in one process, timed step by step in alternation.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mlm_train.py [--device cuda] [--budget 10] [--batch 16]

A step is what `fit` does per optimizer step without accumulation: forward with labels, backward, clip the
gradient norm, AdamW. "ours" runs the prediction head only at the masked positions, as `fit` does
(`logits_at_labels=True`); "ours, all logits" runs it at every position, as transformers does. Rows: the bert-tiny
and bert-mini presets at a 4,096-token vocabulary and context 128 (what a BPE trained on a small corpus gives). The
first step's loss is printed from each as a check that all compute the same thing.
"""

from __future__ import annotations

import contextlib
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Trainer:
    """One training step per call over the given batches in turn; remembers the first loss."""

    def __init__(self, model: torch.nn.Module, batches: list, amp, *, sparse: bool) -> None:
        self.model, self.batches, self.amp, self.sparse = model.train(), batches, amp, sparse
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        self.count, self.first_loss = 0, None

    def __call__(self) -> None:
        x, y = self.batches[self.count % len(self.batches)]
        with self.amp:
            out = self.model(x, labels=y, logits_at_labels=True) if self.sparse else self.model(x, labels=y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.first_loss = out.loss.item() if self.first_loss is None else self.first_loss
        self.count += 1


def main() -> None:
    from bench_common import argument_parser, at_least, compare, default_precisions, names_of, seconds

    p = argument_parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--budget", type=seconds(zero=True), default=10.0, help="seconds of alternating steps per row")
    p.add_argument("--batch", type=at_least(1), default=16, help="sequences per step")
    p.add_argument("--context", type=at_least(1), default=128, help="tokens per sequence")
    p.add_argument("--precisions", type=names_of("fp32", "bf16"), default=None,
                   help="comma separated (default fp32,bf16; fp32 alone on a CPU without bf16 dot products)")
    args = p.parse_args()
    import transformers

    from neurallayers import ModelConfig
    from neurallayers.data.masking import Masker
    from neurallayers.interop import bert
    from neurallayers.models import build_model

    device = args.device
    precisions = (args.precisions or default_precisions(torch.device(device).type)).split(",")
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"transformers={transformers.__version__} load average={os.getloadavg()[0]:.2f}")
    header = (f"{'model':<10} {'precision':<9} {'params':>7} {'ours ms/step':>12} {'all logits':>10} "
              f"{'HF ms/step':>10} {'ours tok/s':>10} {'HF tok/s':>9} {'ours/HF':>8} {'step-1 loss ours / HF':>22}")
    print(header)
    print("-" * len(header))
    vocab, tokens = 4096, args.batch * args.context
    masker = Masker(mask_id=vocab - 1, vocab_size=vocab, special_ids=[0], seed=0)
    for preset in ("bert-tiny", "bert-mini"):
        cfg = ModelConfig.from_name(preset).replace(vocab_size=vocab, block_size=args.context, head="mlm",
                                                    pad_token_id=None, dropout=0.0)
        for precision in precisions:
            torch.manual_seed(0)
            ours, full = build_model(cfg).to(device), build_model(cfg).to(device)
            full.load_state_dict(ours.state_dict())
            ref = transformers.BertForMaskedLM(transformers.BertConfig(**bert.config_to_hf(cfg)))
            ref.load_state_dict(bert.to_hf(ours.state_dict(), cfg), strict=False)
            models = {"ours": ours, "full": full, "hf": ref.to(device)}
            amp = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                   if precision == "bf16" else contextlib.nullcontext())
            g = torch.Generator().manual_seed(1)
            batches = [masker(torch.randint(1, vocab - 1, (args.batch, args.context), generator=g), i)
                       for i in range(4)]
            batches = [(x.to(device), y.to(device)) for x, y in batches]
            steps = {name: Trainer(m, batches, amp, sparse=name == "ours") for name, m in models.items()}
            t_ours, t_ref = compare(steps["ours"], steps["hf"], device=device, budget=args.budget)
            t_full, _ = compare(steps["full"], steps["hf"], device=device, budget=args.budget / 2)
            n_params = sum(q.numel() for q in ours.parameters())
            print(f"{preset:<10} {precision:<9} {n_params / 1e6:>6.1f}M {1e3 * t_ours:>12.1f} {1e3 * t_full:>10.1f} "
                  f"{1e3 * t_ref:>10.1f} {tokens / t_ours:>10,.0f} {tokens / t_ref:>9,.0f} {t_ref / t_ours:>8.2f} "
                  f"{steps['ours'].first_loss:>10.4f} / {steps['hf'].first_loss:<10.4f}", flush=True)
    print(f"load average at the end={os.getloadavg()[0]:.2f} (a shared machine: compare the ratio, not the rates)")


if __name__ == "__main__":
    main()
