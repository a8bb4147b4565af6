"""neurallayers.batch is a package of modules; the names it offered as one module are still importable from it."""

from __future__ import annotations

import neurallayers.batch as batch


def test_the_public_names_stay_importable():
    names = ["FORMAT", "LINE_PARAMS", "LINE_SUFFIXES", "MODEL_FILES", "TEXT_KEYS", "VECTOR_SUFFIXES", "BatchItem",
             "BatchResult", "line_seed", "model_files_identity", "read_inputs", "run_batch"]
    assert sorted(batch.__all__) == sorted(names)
    assert all(callable(getattr(batch, n)) or isinstance(getattr(batch, n), str | tuple) for n in names)
    assert batch.run_batch.__module__ == "neurallayers.batch.run"
