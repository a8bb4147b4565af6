"""Sentences/s of our encoder vs transformers' BertModel on all-MiniLM-L6-v2: the same weights, the same
tokenized batches, in the same process, timed alternately so machine noise hits both alike.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/encoder.py [--device cuda] [--budget 4]

Prints one row per (precision, batch size, sentence length): sentences/s of each (median call time) and the
ratio.
"""

from __future__ import annotations

import contextlib
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the model reads a sentence and writes one vector that keeps its meaning so that similar sentences "
         "land close together while unrelated ones stay far apart in the space").split()


def sentences(n: int, n_words: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n_words + int(k),), generator=g).tolist())
            for k in torch.randint(0, 4, (n,), generator=g)]


def main() -> None:
    from bench_common import argument_parser, compare, default_precisions, names_of, seconds

    p = argument_parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--budget", type=seconds(zero=True), default=4.0, help="seconds of alternating calls per table cell")
    p.add_argument("--precisions", type=names_of("fp32", "bf16"), default=None,
                   help="comma separated (default fp32,bf16; fp32 alone on a CPU without bf16 dot products)")
    args = p.parse_args()

    precisions = (args.precisions or default_precisions(torch.device(args.device).type)).split(",")

    from transformers import AutoModel

    from neurallayers.embeddings import load_minilm, minilm_folder, tokenize_batch

    device = args.device
    ours, tok = load_minilm(device=device)
    ref = AutoModel.from_pretrained(str(minilm_folder())).to(device).eval()
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"transformers attn={ref.config._attn_implementation} load average={os.getloadavg()[0]:.2f}")
    header = f"{'precision':<9} {'batch':>5} {'tokens':>6} {'ours sent/s':>12} {'HF sent/s':>10} {'ours/HF':>8}"
    print(header)
    print("-" * len(header))
    for precision in precisions:
        amp = (torch.autocast(device_type=device, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        for batch_size in (1, 32):
            for n_words in (8, 100):  # ~13 and ~105 tokens with [CLS]/[SEP]
                batch = tokenize_batch(tok, sentences(batch_size, n_words, seed=n_words), max_length=256)
                batch = {k: v.to(device) for k, v in batch.items()}

                def run_ours(batch=batch):
                    ours(batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"])

                def run_ref(batch=batch):
                    ref(**batch)

                with torch.inference_mode(), amp:
                    t_ours, t_ref = compare(run_ours, run_ref, device=device, budget=args.budget)
                s_ours, s_ref = batch_size / t_ours, batch_size / t_ref
                print(f"{precision:<9} {batch_size:>5} {batch['input_ids'].shape[1]:>6} {s_ours:>12.1f} "
                      f"{s_ref:>10.1f} {s_ours / s_ref:>8.2f}", flush=True)
    print(f"load average at the end={os.getloadavg()[0]:.2f} (a shared machine: compare the ratio, not the rates)")


if __name__ == "__main__":
    main()
