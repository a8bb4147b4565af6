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

An OpenAI Batch API file ({"custom_id", "method", "url", "body"} per line) is answered by the server instead, through
run_requests (module requests; the CLI supplies the server).

Modules: inputs (reading and checking the JSONL), decoding (per-line settings, seeds, batches of generation), vectors
(embeddings), journal (the progress record and the output files), fingerprint (what a resume must find unchanged), run
(run_batch).
"""

from neurallayers.batch.decoding import line_seed
from neurallayers.batch.fingerprint import MODEL_FILES, model_files_identity
from neurallayers.batch.inputs import LINE_PARAMS, TEXT_KEYS, BatchItem, read_inputs
from neurallayers.batch.journal import FORMAT
from neurallayers.batch.run import LINE_SUFFIXES, BatchResult, run_batch
from neurallayers.batch.vectors import VECTOR_SUFFIXES

__all__ = ["FORMAT", "LINE_PARAMS", "LINE_SUFFIXES", "MODEL_FILES", "TEXT_KEYS", "VECTOR_SUFFIXES", "BatchItem",
           "BatchResult", "line_seed", "model_files_identity", "read_inputs", "run_batch"]
