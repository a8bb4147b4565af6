"""Offline, resumable batch generation (decoder models) or embedding (encoder models) of a JSONL file.

Input: one JSON object per line (blank lines are skipped):

    {"id": "q1", "prompt": "Once upon a time", "max_new_tokens": 32, "temperature": 0}
    {"text": "a sentence to embed"}

`prompt` and `text` are synonyms. `id` (a string or an integer) is optional and defaults to the line number; ids
must be unique. A generation line may override the run's settings with any of LINE_PARAMS; an embedding line
holds only id and text.

Output: `.jsonl` (or `.ndjson`; other names are refused) gets one result per input, `{"id", "text",
"finish_reason", "prompt_tokens", "completion_tokens"}` for generation or `{"id", "embedding"}` for embeddings, in
input order once the run is complete (completion order while it runs). Embeddings may instead go to `.npy` (an
(N, C) float32 array, rows in input order) or `.npz` (arrays `ids` and `embeddings`; ids are int64 where all are
integers that fit, else strings, so ids equal as text, such as 1 and "1", are refused before any work).

Resume: a killed run, started again with the same command, skips what is done and loses nothing. JSONL results are
appended one batch at a time as whole lines, fsync'd, and only then counted in the progress record
`<output>.progress.json` (written to a temp name, fsync'd, renamed); bytes past the counted length (a torn line,
a batch cut short) are cut off on resume and recomputed, so every input is answered exactly once. Vectors go to
per-batch part files under `<output>.parts/` (each written to a temp name, then renamed) and are joined into the
NPY/NPZ file, again atomically, at the end. The progress record holds a fingerprint of the input file, the
settings and the model (its config, tokenizer, files, dtype and end-of-text ids; without `model_files`, a digest of
its weights); a resume with any of them changed is refused, naming what changed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import operator
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from neurallayers.checks import is_int
from neurallayers.config import NEWER_FIELDS
from neurallayers.data.corpora import lone_surrogate
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.files import WriteError, exclusive, fsync_dir
from neurallayers.generation import GenerationConfig, generate

log = logging.getLogger("neurallayers.batch")

FORMAT = "neurallayers-batch/1"
TEXT_KEYS = ("prompt", "text")
# Settings one generation line may override (the rest of GenerationConfig stays the run's).
LINE_PARAMS = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
               "presence_penalty", "frequency_penalty", "no_repeat_ngram_size", "stop", "seed", "ignore_eos")
VECTOR_SUFFIXES = (".npy", ".npz")
LINE_SUFFIXES = (".jsonl", ".ndjson")
# Files whose change means another model (size and mtime are compared, not contents: weights can be large).
MODEL_FILES = ("config.yaml", "config.json", "tokenizer.json", "tokenizer_config.json",
               "model.safetensors.index.json")
ENCODE_CHUNK = 2048  # prompts tokenized at a time (see _encoded)


@dataclass
class BatchItem:
    """One input record: its 0-based index among the records, 1-based line number, id, text and overrides."""

    index: int
    line: int
    id: str | int
    text: str
    params: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps(self.id)  # 1 and "1" are different ids


@dataclass
class BatchResult:
    """What a run did: records in the input, records already done by an earlier run, records computed now, and
    bytes of an unfinished batch cut from the output before resuming."""

    output: Path
    total: int
    resumed: int
    computed: int
    repaired_bytes: int = 0


# ----- input -----
def read_inputs(path: str | os.PathLike, *, mode: Literal["generate", "embed"]) -> list[BatchItem]:
    """Parse and check the input JSONL; every error names the file and line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad JSON, a missing text or an empty prompt, an unknown or bad field, a duplicate id, no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    allowed = ("id", *TEXT_KEYS, *(LINE_PARAMS if mode == "generate" else ()))
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8-sig")  # a BOM (Notepad writes one) before the first line is not JSON
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:  # a plain-text prompt file is the likely cause: say what a line is
                hint = "" if line.lstrip().startswith("{") else '; each line is a JSON object such as {"prompt": "..."}'
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None
            except ValueError as e:  # an integer of over 4300 digits (Python's limit): the error named no line
                raise ValueError(f"{where}: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object like {{\"prompt\": \"...\"}}, "
                                 f"got {type(record).__name__}")
            _check_unicode(record, where)
            for key in record:
                if key not in allowed:
                    hint = difflib.get_close_matches(key, allowed, n=1)
                    did = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise ValueError(f"{where}: unknown field {key!r}{did}; allowed: {', '.join(allowed)}")
            texts = [k for k in TEXT_KEYS if k in record]
            if len(texts) != 1:
                raise ValueError(f"{where}: needs exactly one of 'prompt' or 'text', got {texts or 'neither'}")
            text = record[texts[0]]
            # a blank text embeds as sentence-transformers embeds it (nl.embed does too); a blank prompt is a mistake
            if not isinstance(text, str) or (mode == "generate" and not text.strip()):
                need = "a non-empty string" if mode == "generate" else "a string"
                raise ValueError(f"{where}: {texts[0]!r} must be {need}, got {text!r}")
            rid = record.get("id", n)
            if not (isinstance(rid, str) or is_int(rid)):
                raise ValueError(f"{where}: 'id' must be a string or an integer, got {rid!r}")
            # as the server reads them: null is the default, and one stop string may stand for a list of it
            params = {k: v for k, v in record.items() if k in LINE_PARAMS and v is not None}
            if isinstance(params.get("stop"), str):
                params["stop"] = [params["stop"]]
            item = BatchItem(index=len(items), line=n, id=rid, text=text, params=params)
            if item.key in seen:
                raise ValueError(f"{where}: id {rid!r} is already used on line {seen[item.key]}; ids must be unique")
            seen[item.key] = n
            items.append(item)
    if not items:
        raise ValueError(f"{path} holds no records: give one JSON object per line, e.g. {{\"prompt\": \"Hello\"}}")
    return items


def _check_unicode(record: dict, where: str) -> None:
    """JSON may escape half a surrogate pair ("\\ud83d"): no tokenizer encodes it and no UTF-8 output holds it (an
    id with one failed only when its result was written, after the work)."""
    for key, value in record.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and (bad := lone_surrogate(text)):
                raise ValueError(f"{where}: {key!r} has a lone surrogate (U+{ord(bad[0]):04X}) at position "
                                 f"{bad.start()}: not valid Unicode text")


# ----- fingerprint -----
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files_identity(path: str | os.PathLike) -> dict[str, list[int]]:
    """Size and mtime (ns) of a run directory's or HF folder's config, tokenizer and weight files."""
    folder = Path(path)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name in MODEL_FILES or p.suffix == ".safetensors"))
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def _fingerprint(input_path: Path, settings: dict, model: nn.Module, tokenizer: Tokenizer,
                 model_files: dict | None) -> dict:
    # bf16 results differ from fp32 ones; the ids that end a generation come from generation_config.json too
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    weights = _weights_sha256(model) if model_files is None else None  # the files say it, without a pass over them
    return {"input_sha256": _sha256(input_path), "settings": settings,
            "model": {"config": model.config.to_dict(), "tokenizer": tokenizer.fingerprint(),
                      "files": model_files, "dtype": dtype, "eos_ids": tokenizer.eos_ids, "weights": weights}}


def _weights_sha256(model: nn.Module) -> str:
    """A digest of the weights of a model given without its files (run_batch from Python): one trained further in
    the same session resumed into the output of its earlier weights, mixing two models' results in one file."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        for t in value if isinstance(value, tuple | list) else (value,):  # quantize_dynamic packs (weight, bias)
            if torch.is_tensor(t):
                t = t.int_repr() if t.is_quantized else t
                h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def _changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    if old.get("input_sha256") != new["input_sha256"]:
        out.append("the input file's contents")
    old_s, new_s = old.get("settings", {}), new["settings"]
    out += [f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}" for k in sorted(set(old_s) | set(new_s))
            if old_s.get(k) != new_s.get(k)]
    old_m, new_m = old.get("model", {}), new["model"]
    same = {"config": _same_config}
    out += [f"the model's {k}" for k in ("config", "tokenizer", "files")
            if not same.get(k, operator.eq)(old_m.get(k), new_m.get(k))]
    out += [f"the model's {k}: {old_m[k]} -> {new_m[k]}" for k in ("dtype", "eos_ids")
            if k in old_m and old_m[k] != new_m[k]]  # records written before these were kept have neither
    if old_m.get("weights") not in (None, new_m["weights"]):
        out.append("the model's weights")
    return out


def _same_config(old: dict | None, new: dict) -> bool:
    """A record written before a ModelConfig field existed lacks it (config.NEWER_FIELDS); the field at None, its
    default, describes that same model, so the run still resumes."""
    return isinstance(old, dict) and {k: v for k, v in new.items()
                                      if k in old or k not in NEWER_FIELDS or v is not None} == old


# ----- atomic files -----
def _write_atomic(path: Path, write) -> None:
    """Call write(binary file) on a temp name beside `path`, fsync, rename over `path`, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _write_failed(e, path) from e
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # a no-op where folders cannot be opened (Windows)


def _write_failed(e: OSError, path: Path) -> WriteError:
    """One line for a failed write (a full disk: a 28-line traceback before), saying that nothing done is lost."""
    return WriteError(e.errno, f"could not write {path}: {e.strerror or e}; the results written before are kept: "
                               "run the same command again to go on")


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


# ----- the progress record and the JSONL journal -----
class _Progress:
    """`<output>.progress.json`: the fingerprint, committed output bytes (JSONL) and whether the run is done."""

    def __init__(self, output: Path, fingerprint: dict, total: int) -> None:
        self.path = output.with_name(output.name + ".progress.json")
        self.parts = output.with_name(output.name + ".parts")
        self.output = output
        self.data = {"format": FORMAT, "fingerprint": fingerprint, "total": total, "committed_bytes": 0,
                     "complete": False}

    def open(self, *, overwrite: bool) -> dict | None:
        """Start fresh (None) or return the earlier run's record after checking it may be resumed."""
        if overwrite:
            for p in (self.output, self.path):
                p.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        if not self.path.is_file():
            if self.output.exists() and self.output.stat().st_size > 0:
                raise ValueError(f"{self.output} exists and is not the output of an interrupted batch run (no "
                                 f"{self.path.name}); pass --overwrite to replace it or choose another --output")
            shutil.rmtree(self.parts, ignore_errors=True)
            self.save()
            return None
        try:
            old = json.loads(self.path.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a batch progress record; remove it or pass --overwrite")
        changed = _changes(old.get("fingerprint", {}), self.data["fingerprint"])
        if changed:
            raise ValueError(f"cannot resume into {self.output}: changed since that run started: {'; '.join(changed)}. "
                             "Run with the same input, settings and model, or pass --overwrite to start again")
        if (old["committed_bytes"] or old["complete"]) and not self.output.is_file():
            raise ValueError(f"{self.output} is missing but {self.path.name} records results in it; pass --overwrite "
                             "to start again")
        self.data.update(committed_bytes=old["committed_bytes"], complete=old["complete"])
        return old

    def save(self) -> None:
        _write_json(self.path, self.data)


def _resume_jsonl(progress: _Progress, items: list[BatchItem]) -> tuple[dict[str, tuple[int, int]], int]:
    """Where the earlier run's result lines are, by id key: (offset, length) in the output, after cutting it back to
    its committed length."""
    out, committed = progress.output, progress.data["committed_bytes"]
    out.touch()
    size = out.stat().st_size
    if size < committed:
        raise ValueError(f"{out} is shorter ({size} bytes) than its progress record says ({committed}): it was changed "
                         "outside this run; pass --overwrite to start again")
    repaired = size - committed
    if repaired:
        with out.open("r+b") as f:  # a torn line or a batch not yet committed: recompute it
            f.truncate(committed)
            os.fsync(f.fileno())
    known = {it.key for it in items}
    done: dict[str, tuple[int, int]] = {}
    offset = 0
    with out.open("rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                key = json.dumps(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{out} line {n} is not a batch result; pass --overwrite to start again") from None
            if key not in known or key in done:
                raise ValueError(f"{out} line {n}: id {key} is not in the input or answered twice; pass --overwrite")
            done[key] = offset, len(line)
            offset += len(line)
    return done, repaired


def _append(progress: _Progress, lines: list[bytes]) -> None:
    """Whole lines, fsync'd, then counted in the progress record: a kill leaves at most an uncounted tail."""
    try:
        with progress.output.open("ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
            progress.data["committed_bytes"] = f.tell()
    except OSError as e:  # the uncounted tail is cut off on resume
        raise _write_failed(e, progress.output) from e
    progress.save()


def _finish_jsonl(progress: _Progress, items: list[BatchItem]) -> None:
    """Rewrite the output in input order (atomically) and mark the run complete. Line by line: the results of a large
    file were held in memory twice over."""
    done, _ = _resume_jsonl(progress, items)

    def write(f) -> None:
        with progress.output.open("rb") as results:
            for it in items:
                offset, length = done[it.key]
                results.seek(offset)
                f.write(results.read(length))

    _write_atomic(progress.output, write)
    progress.data.update(committed_bytes=progress.output.stat().st_size, complete=True)
    progress.save()


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


# ----- planning generation batches -----
def _generate(model: nn.Module, tokenizer: Tokenizer, batch: list[BatchItem], prompts: dict[int, list[int]],
              config: GenerationConfig, seeds: dict[int, int], *, source: Path) -> list:
    """generate() for one batch; an error only decoding finds (no_repeat_ngram_size leaving a small vocabulary no
    token) names the batch's input lines, which a rerun would stop at again."""
    try:
        return generate(model, tokenizer, [prompts[it.index] for it in batch], config,
                        seeds=[seeds[it.index] for it in batch])
    except ValueError as e:
        lines = ", ".join(str(it.line) for it in sorted(batch, key=lambda it: it.line))
        raise ValueError(f"{source} line{'s' * (len(batch) > 1)} {lines}: {e}") from None


def _plan(todo: list[BatchItem], lengths: dict[int, int], configs: dict[int, GenerationConfig], *,
          batch_size: int) -> list[list[BatchItem]]:
    """Batches of items that share a config, shortest prompts first (less padding). generate() gives each prompt
    of a batch the tokens it gets alone (its own seed, its own room in the context), so a resumed run, whose
    batches differ, equals a straight one."""
    groups: dict[str, list[BatchItem]] = {}
    keys: dict[int, str] = {}  # lines with the same settings share one config object: describe each object once
    for it in todo:
        config = configs[it.index]
        if id(config) not in keys:
            keys[id(config)] = json.dumps(dataclasses.asdict(config), sort_keys=True)
        groups.setdefault(keys[id(config)], []).append(it)
    batches: list[list[BatchItem]] = []
    for group in groups.values():
        ordered = sorted(group, key=lambda it: lengths[it.index])
        batches += [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches


# ----- the run -----
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


def line_seed(seed: int, rid: str | int) -> int:
    """The seed of a line without its own: from the run's seed and the line's id, so that every line draws its own
    random numbers (equal prompts give independent samples) and a resumed run gives what a straight one would."""
    digest = hashlib.sha256(f"{seed}\0{json.dumps(rid)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _check_prompts(items: list[BatchItem], tokenizer: Tokenizer, config: GenerationConfig, block_size: int, *,
                   source: Path) -> tuple[dict[int, list[int]], dict[int, GenerationConfig], dict[int, int]]:
    """Token ids, the effective GenerationConfig (seed aside) and the seed of every item, checked before anything
    is written: a line's own "seed", else line_seed(config.seed, id), else (an unseeded run) a fresh one."""
    prompts: dict[int, list[int]] = {}
    configs: dict[int, GenerationConfig] = {}
    seeds: dict[int, int] = {}
    # one config per distinct line settings, shared by the lines that have them: a config per line took half a minute
    # and hundreds of MB for 200k lines before the first was generated
    cached: dict[str, GenerationConfig] = {}
    for it, ids in zip(items, _encoded(tokenizer, items), strict=True):
        where = f"{source} line {it.line}"
        if len(ids) > block_size:
            raise ValueError(f"{where}: the prompt has {len(ids)} tokens but the model's context length is "
                             f"{block_size}; shorten it")
        key = json.dumps(it.params, sort_keys=True)
        if key not in cached:
            try:
                cached[key] = config.replace(**it.params).replace(seed=config.seed)  # the line's seed checked
            except (ValueError, TypeError) as e:
                raise ValueError(f"{where}: {e}") from None
        own = it.params.get("seed")
        seeds[it.index] = (own if own is not None else line_seed(config.seed, it.id) if config.seed is not None
                           else secrets.randbits(62))
        prompts[it.index], configs[it.index] = ids, cached[key]
    return prompts, configs, seeds


def _encoded(tokenizer: Tokenizer, items: list[BatchItem]):
    """The items' token ids, ENCODE_CHUNK texts at a time: the tokenizer's objects for every text of a large file at
    once took several times the memory of the ids themselves (500 MB for a 6 MB file of 200k short lines)."""
    for start in range(0, len(items), ENCODE_CHUNK):
        yield from tokenizer.encode_batch([it.text for it in items[start:start + ENCODE_CHUNK]],
                                          add_special_tokens=True)


# ----- embeddings -----
def _embed_todo(model: nn.Module, tokenizer: Tokenizer, todo: list[BatchItem], record: _Progress, bar, *,
                vectors: bool, batch_size: int, pooling: str, normalize: bool, max_length: int | None) -> None:
    import numpy as np

    from neurallayers.embeddings import embed

    todo = sorted(todo, key=lambda it: len(it.text))  # similar lengths batch with less padding
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        vecs = embed(model, tokenizer, [it.text for it in chunk], pooling=pooling, normalize=normalize,
                     batch_size=batch_size, max_length=max_length).cpu().numpy()
        if vectors:
            part = record.parts / f"part-{chunk[0].index:09d}.npz"
            index = np.array([it.index for it in chunk], dtype=np.int64)
            _write_atomic(part, lambda f, index=index, vecs=vecs: np.savez(f, index=index, vectors=vecs))
        else:
            _append(record, [_line({"id": it.id, "embedding": v.tolist()}) for it, v in zip(chunk, vecs, strict=True)])
        bar.update(len(chunk))


def _resume_parts(record: _Progress, total: int) -> dict[int, Any]:
    """Vectors of earlier batches by record index, from the complete part files (unfinished temp files removed)."""
    import numpy as np

    record.parts.mkdir(exist_ok=True)
    done: dict[int, Any] = {}
    for part in sorted(record.parts.iterdir()):
        if part.suffix != ".npz":
            part.unlink()  # a temp file of a batch cut short: it is recomputed
            continue
        try:
            with np.load(part, allow_pickle=False) as z:
                index, vecs = z["index"], z["vectors"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{part} is not a readable batch part ({e}); pass --overwrite to start again") from None
        for i, v in zip(index.tolist(), vecs, strict=True):
            if not 0 <= i < total or i in done:
                raise ValueError(f"{part}: record {i} is out of range or answered twice; pass --overwrite")
            done[i] = v
    return done


def _npz_ids(items: list[BatchItem], *, source: Path) -> list[str | int]:
    """The ids as the .npz file holds them: integers that int64 holds stay numbers; any other id makes them all
    strings (a 25-digit id overflowed), which must stay unique: 1 and "1" both became "1" (two rows, one name)."""
    ids = [it.id for it in items]
    if all(isinstance(i, int) and -(2**63) <= i < 2**63 for i in ids):
        return ids
    seen: dict[str, BatchItem] = {}
    for it in items:
        if (text := str(it.id)) in seen:
            raise ValueError(f"{source} line {it.line}: id {it.id!r} and line {seen[text].line}'s id "
                             f"{seen[text].id!r} are both {text!r} in a .npz file, whose ids are all strings when any "
                             "is not an int64; make them unique as text, or write .jsonl")
        seen[text] = it
    return [str(i) for i in ids]


class _Writer:
    """A file seen only through its write() method, whose errors raise."""

    def __init__(self, file) -> None:
        self.write = file.write


def _finish_vectors(record: _Progress, items: list[BatchItem]) -> None:
    """Join the parts into the NPY/NPZ output in input order (atomically), mark the run complete, drop the parts."""
    import numpy as np

    done = _resume_parts(record, len(items))
    missing = [it.line for it in items if it.index not in done]
    if missing:
        raise RuntimeError(f"batch parts are missing the records of lines {missing[:5]}")
    matrix = np.stack([done[it.index] for it in items]).astype(np.float32)  # (N, C)
    if record.output.suffix.lower() == ".npy":
        # through write(): given a real file, np.save writes with C's fwrite and ignores its errors, so a full disk
        # left a cut-off .npy marked complete
        _write_atomic(record.output, lambda f: np.save(_Writer(f), matrix))
    else:
        ids = _npz_ids(items, source=record.output)
        id_array = np.array(ids, dtype=np.int64 if all(isinstance(i, int) for i in ids) else str)
        _write_atomic(record.output, lambda f: np.savez(f, ids=id_array, embeddings=matrix))
    record.data["complete"] = True
    record.save()
    shutil.rmtree(record.parts, ignore_errors=True)
