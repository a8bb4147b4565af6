"""`neurallayers eval`: loss and perplexity of a model on a corpus (a run's own validation split by default).

A decoder is scored by its next-token loss, a masked LM (an encoder with head 'mlm') by its masked-LM loss. A
decoder's windows are training's evaluation windows (non-overlapping, so that eval gives the val loss training
logged), or with --stride transformers' sliding windows, which also give lm-evaluation-harness's bits per byte; or with
--per-document each document on its own, as lm-evaluation-harness's perplexity tasks (wikitext) score them.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from neurallayers.cli.common import add_device_dtype, add_model_path, load_model, non_empty, positive_int

MASK_PROB = 0.15


def _probability(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_path(parser)
    parser.add_argument("--data", type=non_empty, help="corpus name or path (default: the run's own corpus)")
    parser.add_argument("--text-field", type=non_empty, default=None,
                        help="the field that holds the text in a JSONL --data (default: text)")
    parser.add_argument("--split", choices=["val", "train", "all"], default=None,
                        help="which tokens: the run's split of its own corpus (default val); another corpus is "
                        "evaluated whole (all)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows scored together")
    parser.add_argument("--max-batches", type=positive_int, default=None, help="default: every window")
    parser.add_argument("--block-size", type=positive_int, default=None, help="window length (default: the model's)")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help="a decoder: windows of --block-size tokens every N tokens, each token scored once with "
                        "at least block_size - N tokens before it (transformers' sliding-window perplexity), and "
                        "bits per byte, byte and word perplexity as lm-evaluation-harness defines them; "
                        "--max-batches keeps the first windows (default: non-overlapping windows, training's)")
    parser.add_argument("--per-document", action="store_true",
                        help="a decoder: each document of the corpus scored on its own from its start, after the bos "
                        "(else eos), in disjoint windows of --block-size tokens, with word and byte perplexity and "
                        "bits per byte over the documents' own text: lm-evaluation-harness's loglikelihood_rolling "
                        "(its wikitext task); the whole corpus (--split all)")
    parser.add_argument("--mask-prob", type=_probability, default=None,
                        help="a masked LM: the share of tokens masked, with the same masks for every model (default: "
                        "on a run's own split, the run's train.mask_prob and seed, so that --batch-size and "
                        f"--max-batches as in training give its logged val loss; else {MASK_PROB}, seed 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_dtype(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from neurallayers.api import checkpoint_run, is_checkpoint_folder
    from neurallayers.data import load_corpus
    from neurallayers.data.corpora import absolute_spec
    from neurallayers.training.config import DataConfig, RunConfig
    from neurallayers.training.losses import mean_loss, perplexity_text
    from neurallayers.training.prepare import tokenize_corpus

    model, tokenizer = load_model(args.path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    run_dir = Path(args.path)
    if is_checkpoint_folder(run_dir):  # a run's checkpoints/step-N: that step's weights on the run's own split
        run_dir = checkpoint_run(run_dir)
    # a saved run: its data and split settings, where a value this version refuses only warns
    run_cfg = RunConfig.from_yaml(run_dir / "config.yaml", saved=True) if (run_dir / "config.yaml").is_file() else None
    own = run_cfg is not None and (args.data is None or absolute_spec(args.data) == absolute_spec(run_cfg.data.source))
    if args.data is None and not own:
        raise ValueError(f"{args.path} is not a run directory: name the corpus with --data")
    split = args.split or ("val" if own else "all")
    if split != "all" and not own:
        raise ValueError("--split val/train needs the run's own corpus; another corpus is evaluated whole (all)")
    masker = None
    if not model.config.causal:  # an encoder: its masked-LM loss, the same masks for every model (they compare)
        from neurallayers.data.masking import Masker

        if model.config.head != "mlm":
            raise ValueError(f"{args.path} is an encoder with head={model.config.head!r}: eval scores a decoder's "
                             "next-token loss or a masked LM's (head 'mlm')")
        if args.stride is not None:
            raise ValueError("--stride applies to a decoder's next-token loss; this model is a masked LM, scored on "
                             "the tokens it masks (--mask-prob)")
        # on its own split, the masks the run's evaluations drew; the whole of a corpus, those any model gets
        split_of_run = own and split != "all"
        prob = args.mask_prob or (run_cfg.train.mask_prob if split_of_run else MASK_PROB)
        masker = Masker.for_tokenizer(tokenizer, prob=prob, seed=run_cfg.train.seed if split_of_run else 0)
    elif args.mask_prob is not None:
        raise ValueError("--mask-prob applies to masked LMs (encoders); this model is a decoder")
    if args.per_document:
        _check_per_document(args, masked=masker is not None, split=split)
    window = args.block_size or model.config.block_size
    if window > model.config.block_size:  # before tokenizing a corpus (minutes for a large one)
        raise ValueError(f"--block-size {window} is over the model's context length {model.config.block_size}")
    if args.stride is not None and window < 2:  # a window's first token has no prediction: one of 1 scores nothing
        raise ValueError(f"--stride needs windows of at least 2 tokens; --block-size {window} predicts none: use 2 or "
                         "more")
    if args.stride is not None and args.stride > window:  # before tokenizing: tokens between windows go unscored
        raise ValueError(f"--stride {args.stride} is over the window length {window} (--block-size, default the "
                         "model's context): it must be at most the window")
    data = run_cfg.data if own else DataConfig(source=args.data)
    if run_cfg is not None:  # any corpus is tokenized as the run's was: a bos before each document or none, framed
        # or not (a run from before config.yaml recorded them had neither)
        data = dataclasses.replace(data, document_bos=bool(run_cfg.data.document_bos),
                                   document_frame=bool(run_cfg.data.document_frame))
    if args.text_field is not None:
        data = dataclasses.replace(data, text_field=args.text_field)
    try:
        corpus = load_corpus(data.source, text_field=data.text_field)
    except FileNotFoundError:
        if args.data is not None:
            raise
        # the user named no corpus: say it is the run's own (moved or deleted since), and how to name another
        raise FileNotFoundError(f"the run's corpus {data.source!r} (its config.yaml's data.source) is not there: "
                                "name the corpus with --data") from None
    if args.text_field is not None:
        _check_text_field(corpus, args.text_field)
    if args.per_document:  # the documents' own text: no token cache, whose streams join them
        return _per_document(args, model, tokenizer, corpus, block=window, name=args.data or data.source)
    val_fraction = data.val_fraction if own else 0.0
    seed = run_cfg.train.seed if own else 0
    tokens = tokenize_corpus(data, corpus, tokenizer, seed=seed, val_fraction=val_fraction,
                             show_progress=not args.no_progress)
    arr = {"val": tokens.val, "train": tokens.train, "all": np.concatenate([tokens.train, tokens.val])}[split]
    block = window
    if args.stride is not None:
        # the whole corpus in its order: its documents' own text gives the bytes and words
        documents = corpus if split == "all" and not len(tokens.val) else None
        return _sliding(args, model, tokenizer, arr, block=block, name=args.data or data.source, split=split,
                        val_fraction=val_fraction, documents=documents)
    if len(arr) < block + 1 and args.block_size is None and len(arr) >= 2:
        block = len(arr) - 1  # a text shorter than the context: one window of all of it
    if len(arr) < block + 1:
        hint = ""
        if len(arr) >= 2:  # only an explicit --block-size gets here: "(try --block-size)" alone named the flag set
            shorter = "" if masker is not None else ", or --stride, whose windows may be shorter"
            hint = f" (try --block-size): {len(arr) - 1} or less{shorter}"
        if split == "val" and not len(arr):  # a run trained with data.val_fraction 0: it has only a train split
            hint = f" (the run's data.val_fraction is {val_fraction}: try --split train)"
        raise ValueError(f"the {split} split has {len(arr)} tokens; a window needs {block + 1}{hint}")
    loss, count = mean_loss(model, arr, block_size=block, batch_size=args.batch_size, max_batches=args.max_batches,
                            device=next(model.parameters()).device, progress=not args.no_progress, masker=masker)
    if not count:  # a masked LM's windows of special tokens only: the empty mean printed "loss: 0.0000" as a score
        raise ValueError(
            f"corpus {args.data or data.source!r} (split {split}): its windows hold only special tokens, "
            "which a masked LM never masks: no loss to score"
        )
    what = "masked tokens scored" if masker is not None else "tokens scored"
    print(f"corpus: {args.data or data.source}  split: {split}  {what}: {count:,}  loss: {loss:.4f}  "
          f"perplexity: {perplexity_text(loss)}")
    return 0


def _sliding(args: argparse.Namespace, model, tokenizer, arr, *, block: int, name: str, split: str,
             val_fraction: float, documents=None) -> int:
    """--stride: transformers' sliding windows, and lm-evaluation-harness's scores of the text they covered."""
    from neurallayers.training.evaluate import TextScores, boundary_ids, sliding_window_score, text_size
    from neurallayers.training.losses import perplexity_text

    if len(arr) < 2:
        hint = f" (the run's data.val_fraction is {val_fraction}: try --split train)" if split == "val" else ""
        raise ValueError(f"the {split} split has {len(arr)} tokens; scoring needs at least 2{hint}")
    score = sliding_window_score(model, arr, max_length=block, stride=args.stride, batch_size=args.batch_size,
                                 max_batches=args.max_batches, special_ids=boundary_ids(tokenizer),
                                 device=next(model.parameters()).device, progress=not args.no_progress)
    print(f"corpus: {name}  split: {split}  stride: {args.stride}  window: {block}  tokens scored: {score.tokens:,}  "
          f"loss: {score.loss:.4f}  perplexity: {perplexity_text(score.loss)}")
    if not score.whole:
        print(f"bits per byte: not scored: with --stride {args.stride} = the window, each window's first token has no "
              "prediction; a stride below the window scores every token, and so do --per-document's disjoint "
              "windows (lm-evaluation-harness's)")
        return 0
    texts = (doc.text for doc in documents.documents()) if documents is not None else None
    # the text of the targets scored, read after the first token
    n_bytes, n_words = text_size(tokenizer, arr[1 : score.scored_end], before=arr[:1], documents=texts)
    if not n_bytes:  # the targets scored are boundary tokens only (a one-token text's eos): said, not left out
        print("bits per byte: not scored: no text token was scored (the stream's first token has no prediction; the "
              "eos and bos between documents are not text)")
        return 0
    text = TextScores(score.text_nll, n_bytes, n_words)
    print(f"bytes: {n_bytes:,}  words: {n_words:,}  bits per byte: {text.bits_per_byte:.4f}  "
          f"byte perplexity: {text.byte_perplexity:.4f}  word perplexity: {text.word_perplexity:.2f}")
    return 0


def _check_per_document(args: argparse.Namespace, *, masked: bool, split: str) -> None:
    """What --per-document cannot take, named before a corpus is read."""
    if masked:
        raise ValueError("--per-document applies to a decoder's next-token loss; this model is a masked LM, scored on "
                         "the tokens it masks (--mask-prob)")
    if args.stride is not None:
        raise ValueError("--per-document scores each document in disjoint windows of --block-size "
                         "(lm-evaluation-harness); --stride slides windows over one stream (transformers' guide): "
                         "use one of them")
    if args.max_batches is not None:
        raise ValueError("--max-batches keeps the first windows of one stream; --per-document scores every document "
                         "whole: leave it out")
    if split != "all":
        # --data may name the run's own corpus, whose split is the run's too: naming it again changes nothing
        fix = (f"use --split all (--data {args.data} is the run's own corpus, scored in the run's split)"
               if args.data is not None else "use --split all, or name the corpus with --data")
        raise ValueError(f"--per-document scores whole documents, and the run's {split} split holds pieces of them: "
                         f"{fix}")


def _per_document(args: argparse.Namespace, model, tokenizer, corpus, *, block: int, name: str) -> int:
    """--per-document: lm-evaluation-harness's rolling log-likelihood of each document, and its weighted scores."""
    from tqdm.auto import tqdm

    from neurallayers.training.evaluate import TextScores, document_scores, document_size
    from neurallayers.training.losses import perplexity_text

    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id  # lm-eval's prefix_token_id
    if prefix is None:
        raise ValueError("--per-document starts each document after the tokenizer's bos (else its eos), as "
                         "lm-evaluation-harness does; this tokenizer has neither")
    device = next(model.parameters()).device
    n_docs = tokens = n_bytes = n_words = 0
    nll = 0.0
    with tqdm(desc="eval", unit="char", unit_scale=True, dynamic_ncols=True, disable=args.no_progress) as bar:
        for texts in _document_groups(corpus):  # a group at a time: a large corpus's ids are never all held
            ids = tokenizer.encode_batch(texts)
            nll += sum(document_scores(model, ids, prefix_id=prefix, max_length=block, batch_size=args.batch_size,
                                       device=device))
            for text in texts:
                size = document_size(text)
                n_bytes, n_words = n_bytes + size[0], n_words + size[1]
            n_docs, tokens = n_docs + len(texts), tokens + sum(map(len, ids))
            bar.update(sum(map(len, texts)))
    if not tokens:
        raise ValueError(f"corpus {name!r} has no text to score")
    loss = nll / tokens
    print(f"corpus: {name}  split: all  documents: {n_docs:,}  window: {block}  tokens scored: {tokens:,}  "
          f"loss: {loss:.4f}  perplexity: {perplexity_text(loss)}")
    text = TextScores(nll, n_bytes, n_words)
    print(f"bytes: {n_bytes:,}  words: {n_words:,}  bits per byte: {text.bits_per_byte:.4f}  "
          f"byte perplexity: {text.byte_perplexity:.4f}  word perplexity: {text.word_perplexity:.4f}")
    return 0


def _document_groups(corpus, chars: int = 1 << 22):
    """The corpus's document texts, in lists that end once they hold `chars` characters (the last may hold fewer)."""
    group, size = [], 0
    for doc in corpus.documents():
        group.append(doc.text)
        size += len(group[-1])
        if size >= chars:
            yield group
            group, size = [], 0
    if group:
        yield group


def _check_text_field(corpus, field: str) -> None:
    """--text-field names the text of JSON-lines records: on a corpus of text files it was silently ignored."""
    from neurallayers.data.corpora import JSONL_SUFFIXES

    if not any(corpus.reads_records(p) for p in getattr(corpus, "files", [])):
        raise ValueError(f"--text-field {field}: corpus {corpus.name!r} holds no JSON-lines file "
                         f"({', '.join(JSONL_SUFFIXES)}) or named .json file, whose field it would name; leave it out")
