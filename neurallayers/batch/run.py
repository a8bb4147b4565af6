"""run_batch: every record of a JSONL file answered once, resumably (neurallayers.batch describes the formats)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from neurallayers.batch.decoding import _check_prompts, _generate, _plan
from neurallayers.batch.fingerprint import _fingerprint
from neurallayers.batch.inputs import read_inputs
from neurallayers.batch.journal import _append, _finish_jsonl, _line, _Progress, _resume_jsonl
from neurallayers.batch.vectors import (
    VECTOR_SUFFIXES,
    _check_texts,
    _embed_todo,
    _finish_vectors,
    _npz_ids,
    _resume_parts,
)
from neurallayers.checks import is_int
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.files import exclusive
from neurallayers.generation import GenerationConfig

LINE_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class BatchResult:
    """What a run did: records in the input, records already done by an earlier run, records computed now, and
    bytes of an unfinished batch cut from the output before resuming."""

    output: Path
    total: int
    resumed: int
    computed: int
    repaired_bytes: int = 0


def run_batch(model: nn.Module, tokenizer: Tokenizer, input_path: str | os.PathLike, output_path: str | os.PathLike,
              *, config: GenerationConfig | None = None, batch_size: int = 8,
              pooling: str | None = None, normalize: bool | None = None, max_length: int | None = None,
              model_files: dict | None = None, overwrite: bool = False, progress: bool = True) -> BatchResult:
    """Answer every record of a JSONL file once: generations from a decoder, embeddings from an encoder.

    Started again after an interruption with the same arguments, it resumes where the earlier run stopped (see the
    module docstring for the file formats and how results are committed).

    Args:
        model: a DecoderLM (generation) or an encoder (embeddings), in eval mode.
        tokenizer: the model's tokenizer.
        input_path: the input JSONL (see read_inputs).
        output_path: `.jsonl` for results; for embeddings also `.npy` or `.npz`.
        config: generation settings (default GenerationConfig()); lines may override LINE_PARAMS.
        batch_size: prompts (or texts) per forward batch. Keep it on resume for a file equal byte for byte to an
            uninterrupted run's: rows batched with others round differently (matrix kernels differ by shape), in fp32
            at the last bit of some embeddings (about 1e-7; a changed token only at a near tie), more in bf16.
        pooling, normalize, max_length: embedding settings, as in neurallayers.embeddings.embed (pooling None:
            the model's).
        model_files: what identifies the model's files (model_files_identity); part of the fingerprint. None: a
            digest of the weights takes its place (one pass over them).
        overwrite: discard an earlier run's output and progress instead of resuming.
        progress: show a tqdm progress bar.

    Raises:
        ValueError: bad input lines (naming the line), a bad setting, or a resume whose input, settings or model
            changed (naming what changed).
    """
    input_path, output = Path(input_path), Path(output_path)
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if output.is_dir():  # "exists ...; pass --overwrite", and --overwrite then failed with "Is a directory"
        raise ValueError(f"output {output} is a folder; name a file, e.g. {output / 'results.jsonl'}")
    causal = bool(model.config.causal)
    kind = output.suffix.lower()  # "vectors.NPY" was refused, naming .npy as allowed, where "results.JSONL" ran
    vectors = kind in VECTOR_SUFFIXES
    if causal and vectors:
        raise ValueError(f"output {output.name}: {'/'.join(VECTOR_SUFFIXES)} files hold embeddings, which need an "
                         "encoder model (causal=False); write generations to a .jsonl file")
    if not vectors and kind not in LINE_SUFFIXES:
        also = f"; embeddings may also go to {' or '.join(VECTOR_SUFFIXES)}" if not causal else ""
        raise ValueError(f"output {output.name}: results are written as JSON lines: name the file .jsonl{also}")
    if output.exists() and input_path.exists() and output.resolve() == input_path.resolve():
        raise ValueError(f"output {output} is the input file; choose another --output")
    items = read_inputs(input_path, mode="generate" if causal else "embed")
    if causal:
        config = config or GenerationConfig()
        if not isinstance(config, GenerationConfig):
            raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
        if config.num_return_sequences != 1:
            raise ValueError(f"num_return_sequences={config.num_return_sequences}: batch writes one result per input "
                             "line; repeat a line under other ids for more samples (each id samples with its own seed)")
        prompts, configs, seeds = _check_prompts(items, tokenizer, config, model.config.block_size,
                                                 source=input_path)
        # "seeding": runs before lines were seeded by their ids drew every line from the one seed
        settings = {"mode": "generate", **dataclasses.asdict(config), "seeding": "per line"}
    else:
        from neurallayers.embeddings import model_pooling, pooling_modes

        pooling = pooling or model_pooling(model)
        pooling_modes(pooling)  # checked before any work
        _check_texts(items, tokenizer, source=input_path)
        if max_length is not None and (not is_int(max_length)
                                       or not 2 <= max_length <= model.config.block_size):  # before any file
            raise ValueError(f"max_length={max_length!r}: must be in [2, {model.config.block_size}] (a whole number of "
                             "tokens, up to the model's context length)")
        if normalize is None:  # the model's own (a sentence-transformers pipeline without Normalize: raw vectors)
            normalize = bool(model.config.extra.get("normalize", True))
        settings = {"mode": "embed", "pooling": pooling, "normalize": bool(normalize), "max_length": max_length,
                    "output": kind if vectors else ".jsonl"}
        if kind == ".npz":
            _npz_ids(items, source=input_path)  # checked before any work
    output.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = json.loads(json.dumps(_fingerprint(input_path, settings, model, tokenizer, model_files)))
    busy = f"another batch run is writing {output}; wait for it to end or choose another --output"
    with exclusive(output.with_name(output.name + ".lock"), busy):
        record = _Progress(output, fingerprint, len(items))
        earlier = record.open(overwrite=overwrite)
        if earlier is not None and earlier["complete"]:
            shutil.rmtree(record.parts, ignore_errors=True)  # a run killed after its last record, before this
            return BatchResult(output=output, total=len(items), resumed=len(items), computed=0)

        from tqdm.auto import tqdm

        if vectors:
            done_idx = _resume_parts(record, len(items))
            done, repaired = {it.key for it in items if it.index in done_idx}, 0
        else:
            lines, repaired = _resume_jsonl(record, items)
            done = set(lines)
        todo = [it for it in items if it.key not in done]
        bar = tqdm(total=len(items), initial=len(done), unit=" prompts" if causal else " texts",
                   disable=not progress, desc=output.name)
        with bar:
            if causal:
                batches = _plan(todo, {i: len(p) for i, p in prompts.items()}, configs, batch_size=batch_size)
                for batch in batches:
                    gens = _generate(model, tokenizer, batch, prompts, configs[batch[0].index], seeds,
                                     source=input_path)
                    _append(record, [_line({"id": it.id, "text": g.text, "finish_reason": g.finish_reason,
                                            "prompt_tokens": g.prompt_tokens,
                                            "completion_tokens": g.completion_tokens})
                                     for it, g in zip(batch, gens, strict=True)])
                    bar.update(len(batch))
            else:
                _embed_todo(model, tokenizer, todo, record, bar, vectors=vectors, batch_size=batch_size,
                            pooling=pooling, normalize=normalize, max_length=max_length)
        if vectors:
            _finish_vectors(record, items)
        else:
            _finish_jsonl(record, items)
        return BatchResult(output=output, total=len(items), resumed=len(done), computed=len(todo),
                           repaired_bytes=repaired)
