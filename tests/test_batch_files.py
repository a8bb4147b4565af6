"""Batch outputs on a full disk and after a kill at the very end of a run."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neurallayers.batch import run_batch
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models import build_model
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["A man is eating food.", "A man rides a horse.", "Two dogs play in the snow.", "Rain.", "Cats sleep a lot."]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A run directory with a random BERT-style encoder (2 layers, 32 wide) and a char tokenizer."""
    out = tmp_path_factory.mktemp("encoder")
    tok = Tokenizer.train_char(TEXTS)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                                                     n_embd=32)
    RunConfig(model=cfg).to_yaml(out / "config.yaml")
    tok.save(out)
    save_model(out, build_model(cfg).state_dict())
    return out


def texts_file(path: Path, n: int = 60) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": TEXTS[i % len(TEXTS)] * (1 + i % 3)}) + "\n"
                            for i in range(n)))
    return path


def batch(encoder_dir: Path, inp: Path, out: Path, *, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """`neurallayers batch` in a child process whose files may not grow past file_limit bytes (a full disk)."""
    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, "-m", "neurallayers", "batch", str(encoder_dir), "--input", str(inp),
                           "--output", str(out), "--no-progress"], capture_output=True, text=True, cwd=REPO,
                          preexec_fn=limit, timeout=120)


def test_a_full_disk_during_the_npy_join_is_an_error_not_a_cut_off_file(encoder_dir, tmp_path):
    inp = texts_file(tmp_path / "texts.jsonl")
    straight = tmp_path / "straight.npy"
    assert batch(encoder_dir, inp, straight).returncode == 0
    size = straight.stat().st_size  # 60 x 32 float32 and a header: each part and the progress record are smaller
    out = tmp_path / "vectors.npy"
    failed = batch(encoder_dir, inp, out, file_limit=size - 512)
    assert failed.returncode != 0 and f"could not write {out}" in failed.stderr, failed.stderr
    assert not out.exists()
    assert not json.loads((tmp_path / "vectors.npy.progress.json").read_text())["complete"]
    rerun = batch(encoder_dir, inp, out)
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == straight.read_bytes()


def test_a_kill_after_the_run_is_recorded_complete_leaves_no_parts_behind(encoder_dir, tmp_path, monkeypatch):
    from neurallayers.api import load

    model, tok = load(encoder_dir)
    inp, out = texts_file(tmp_path / "texts.jsonl"), tmp_path / "vectors.npy"

    rmtree, record = shutil.rmtree, tmp_path / "vectors.npy.progress.json"

    def killed(path, **kwargs):  # the kill lands after the complete record, before the parts are removed
        if record.is_file() and json.loads(record.read_text())["complete"]:
            raise KeyboardInterrupt
        rmtree(path, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        run_batch(model, tok, inp, out, progress=False)
    monkeypatch.undo()
    parts = tmp_path / "vectors.npy.parts"
    assert any(parts.iterdir())
    result = run_batch(model, tok, inp, out, progress=False)
    assert result.computed == 0 and not parts.exists()
    assert np.load(out).shape == (60, 32)
