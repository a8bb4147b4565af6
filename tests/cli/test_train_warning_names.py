"""A warning that a train config value causes while training names the value as the user gave it: the override
(`--train.precision='bf16'`) or the key of the --config file (`my.yaml: train.precision='bf16'`), as errors do; the
Python API names the field (`TrainConfig.precision='bf16'`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from nl_cli_helpers import TEXT, in_process

import neurallayers.training.runtime as runtime
from neurallayers.nn import cpu

SLOW_BF16 = "on a CPU without bf16 dot products"


@pytest.fixture
def slow_bf16_cpu(monkeypatch):
    """A CPU without bf16 dot products (this one may have them), warned afresh."""
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(cpu, "_WARNED_BF16", set())


def train(tmp_path: Path, monkeypatch, *args: str, train: dict | None = None):
    (tmp_path / "text.txt").write_text(TEXT)
    config = {"model": {"preset": "tiny", "block_size": 16, "n_layer": 1},
              "train": {"max_steps": 1, "batch_size": 2, "eval_interval": 0, "eval_batches": 1, "warmup_steps": 0,
                        "sample_tokens": 0, "device": "cpu", **(train or {})},
              "data": {"source": str(tmp_path / "text.txt"), "tokenizer": "char"}}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = in_process("train", "--config", "my.yaml", "--out", "run", "--no-progress", *args, cwd=tmp_path,
                          monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    return [str(w.message) for w in caught if SLOW_BF16 in str(w.message)]


def test_bf16_given_as_an_override_is_named_as_the_override(tmp_path, monkeypatch, slow_bf16_cpu):
    (message,) = train(tmp_path, monkeypatch, "--train.precision", "bf16")
    assert message.startswith(f"--train.precision='bf16' {SLOW_BF16}"), message


def test_bf16_given_in_the_config_file_is_named_by_its_key(tmp_path, monkeypatch, slow_bf16_cpu):
    (message,) = train(tmp_path, monkeypatch, train={"precision": "bf16"})
    assert message.startswith(f"my.yaml: train.precision='bf16' {SLOW_BF16}"), message


def test_auto_on_such_a_cpu_trains_in_fp32_without_the_warning(tmp_path, monkeypatch, slow_bf16_cpu):
    assert train(tmp_path, monkeypatch, train={"precision": "auto"}) == []


def test_the_python_api_names_the_field(slow_bf16_cpu):
    import torch

    with pytest.warns(UserWarning, match=f"^TrainConfig.precision='bf16' {SLOW_BF16}"):
        assert runtime.resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)
