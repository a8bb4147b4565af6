import contextlib
import errno
import math
import shutil
import signal
from pathlib import Path

import pytest
import torch
from nl_train_helpers import Evil, run_fit_process, tiny_run

from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit, load_run
from neurallayers.weights import CheckpointError


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 8-step run with checkpoints at steps 4 and 8."""
    tmp = tmp_path_factory.mktemp("base")
    run = tiny_run(tmp)
    fit(run, tmp / "run", progress=False)
    return tmp, run


def _copy(base_run, tmp_path):
    shutil.copytree(base_run[0] / "run", tmp_path / "run")
    return tmp_path / "run"


def test_layout_and_weights_only_state(base_run):
    run_dir = base_run[0] / "run"
    for name in ("config.yaml", "tokenizer.json", "tokenizer_config.json", "model.safetensors", "metrics.jsonl",
                 "loss.png"):
        assert (run_dir / name).is_file(), name
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-4", "step-8"]
    state = torch.load(run_dir / "checkpoints/step-8/state.pt", weights_only=True)  # no allowlist needed
    assert state["step"] == 8 and state["data_position"] == 8
    assert {"optimizer", "scheduler", "scaler", "rng", "best_val_loss", "bad_evals"} <= set(state)
    assert all(isinstance(v, torch.Tensor) for v in state["rng"].values())
    assert {"python", "numpy", "torch"} <= set(state["rng"])


def test_load_run_gives_model_and_tokenizer(base_run):
    model, tok, run = load_run(base_run[0] / "run")
    assert not model.training and run.model.vocab_size == tok.vocab_size
    assert model.lm_head.weight is model.wte.weight  # tie survives loading
    ids = torch.tensor([tok.encode("the fox")])
    assert model(ids).logits.shape == (1, ids.shape[1], tok.vocab_size)


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_keep_last_never_counts_incomplete(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / ckpt.COMPLETE).write_text("ok")
    (root / "step-6").mkdir()  # a partial checkpoint under a final-looking name: never complete
    (root / ".tmp-step-8-123").mkdir()
    ckpt.prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step-8-123", "step-4", "step-6"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-4"
    ckpt.clean_incomplete(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]


def test_write_error_reported_old_checkpoint_intact(base_run, tmp_path, monkeypatch):
    run_dir = _copy(base_run, tmp_path)
    before = (run_dir / "checkpoints/step-8/model.safetensors").read_bytes()

    def disk_full(state, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_state", disk_full)
    model_sd, state = ckpt.load_checkpoint(run_dir / "checkpoints/step-8")
    with pytest.raises(ckpt.CheckpointWriteError,
                       match="^could not write checkpoint step-12 .*the disk is full.*step-8 is intact"):
        ckpt.save_checkpoint(run_dir, step=12, model_state=model_sd, state={**state, "step": 12}, keep_last=1)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-8"]
    assert (run_dir / "checkpoints/step-8/model.safetensors").read_bytes() == before
    ckpt.load_checkpoint(run_dir / "checkpoints/step-8")


@pytest.mark.parametrize("failure", ["torch", "safetensors"])
def test_write_errors_of_torch_and_safetensors_are_write_errors_too(base_run, tmp_path, monkeypatch, failure):
    """A full disk (here: a file-size limit) makes torch's zip writer raise RuntimeError and safetensors its own
    error, not OSError: they went out as tracebacks and left the temp folder behind."""
    from safetensors import SafetensorError

    from neurallayers.cli.common import USER_ERRORS

    run_dir = _copy(base_run, tmp_path)

    def torch_full(state, path):
        path.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2240 vs 2134")

    def safetensors_full(sd, path, **kw):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(File too large (os error 27))")

    if failure == "torch":
        monkeypatch.setattr(ckpt, "_write_state", torch_full)
    else:
        monkeypatch.setattr(ckpt, "save_safetensors", safetensors_full)
    model_sd, state = ckpt.load_checkpoint(run_dir / "checkpoints/step-8")
    with pytest.raises(ckpt.CheckpointWriteError, match="step-12 .*(unexpected pos|File too large).*step-8 is intact") \
            as e:
        ckpt.save_checkpoint(run_dir, step=12, model_state=model_sd, state={**state, "step": 12}, keep_last=1)
    assert isinstance(e.value, USER_ERRORS)  # the CLI says it in one line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-8"]
    assert not str(e.value).startswith("[Errno")  # no "[Errno None]" before the message


def test_a_failed_write_of_the_best_weights_is_a_write_error(tmp_path, monkeypatch):
    """model.safetensors (written at each better evaluation) went through no such handling: a traceback."""
    from safetensors import SafetensorError

    def full(sd, path, **kw):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_safetensors", full)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"could not write .*model.safetensors: .*No space left"):
        fit(tiny_run(tmp_path, max_steps=4, eval_interval=2), tmp_path / "run", progress=False)


def test_a_nan_loss_has_a_nan_perplexity():
    from neurallayers.training.trainer import perplexity, perplexity_text

    assert math.isnan(perplexity(float("nan"))) and perplexity_text(float("nan")) == "nan"
    assert perplexity(800.0) == math.inf and perplexity_text(50.0) == "5.185e+21"


def test_write_error_during_fit_is_clear(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, max_steps=8, eval_interval=0)
    calls = []

    def fail_second(state, path):
        calls.append(state["step"])
        if len(calls) == 2:
            raise OSError(errno.EACCES, "Permission denied")
        torch.save(state, path)

    monkeypatch.setattr(ckpt, "_write_state", fail_second)
    with pytest.raises(ckpt.CheckpointWriteError, match="Permission denied.*step-4 is intact"):
        fit(run, tmp_path / "run", progress=False)
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step-4"]


KILL_HOOK = """
import os, signal
import neurallayers.training.checkpoint as c
_orig = c._write_state
def _hook(state, path):
    if state["step"] == 4:
        path.write_bytes(b"half a state file")
        os.kill(os.getpid(), signal.SIGKILL)
    _orig(state, path)
c._write_state = _hook
"""


def test_sigkill_while_saving_keeps_previous_checkpoint(tmp_path):
    run = tiny_run(tmp_path, max_steps=6, save_interval=2, keep_last=1, eval_interval=0)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    proc = run_fit_process(tmp_path, cfg, out, prelude=KILL_HOOK)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[0].startswith(".tmp-step-4-") and names[1:] == ["step-2"]
    assert ckpt.latest_checkpoint(out).name == "step-2"
    model_sd, state = ckpt.load_checkpoint(out / "checkpoints/step-2")
    assert state["step"] == 2
    ckpt.prune_checkpoints(out, keep_last=1)  # the partial one does not push the good one out
    assert (out / "checkpoints/step-2" / ckpt.COMPLETE).is_file()
    result = fit(run, out, resume=True, progress=False)
    assert result.steps == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-6"]  # partial cleaned, keep_last=1


def test_malicious_state_refused_on_resume(base_run, tmp_path):
    run_dir = _copy(base_run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"step": 8, "x": Evil(str(marker))}, run_dir / "checkpoints/step-8/state.pt")
    with pytest.raises(CheckpointError, match="refusing to load .*state.pt"):
        fit(base_run[1].__class__.from_yaml(run_dir / "config.yaml"), run_dir, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="refusing"):
        ckpt.load_checkpoint(run_dir / "checkpoints/step-8")
    assert not marker.exists()


def test_a_corrupt_newest_checkpoint_names_the_older_one_to_resume_from(base_run, tmp_path):
    run_dir = _copy(base_run, tmp_path)
    (run_dir / "checkpoints/step-8/state.pt").write_bytes(b"garbage")
    run = base_run[1].__class__.from_yaml(run_dir / "config.yaml")
    with pytest.raises(CheckpointError, match=r"not a readable torch checkpoint .*older checkpoint may load: "
                                              r"--resume \S+step-4"):
        fit(run, run_dir, resume=True, progress=False)
    assert fit(run, run_dir, resume=run_dir / "checkpoints/step-4", progress=False).steps == 8


def test_corrupt_weights_refused_by_load_run(base_run, tmp_path):
    run_dir = _copy(base_run, tmp_path)
    blob = (run_dir / "model.safetensors").read_bytes()
    (run_dir / "model.safetensors").write_bytes(blob[:-64])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_run(run_dir)


def _edit_state(path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize("edit, match", [
    # fused AdamW does not check: it wrote out of bounds (a crash), or checkpointed NaN weights as good ones
    (lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(3)),
     r"mis-shaped optimizer state: \S+\.exp_avg \(3,\) != "),
    (lambda s: s.pop("optimizer"), "not a complete training state: no optimizer"),  # a bare KeyError before
    (lambda s: s["rng"].__setitem__("torch", torch.zeros(7, dtype=torch.uint8)), "random-number generator states"),
    # a bare AttributeError or TypeError (a traceback from the CLI) before, naming no file
    (lambda s: s.__setitem__("optimizer", None), r"state.pt is not a training state: its 'optimizer' is a NoneType"),
    (lambda s: s.__setitem__("elapsed", "1:00"), r"state.pt is not a training state: its 'elapsed' is a str"),
    # the data position chooses the next batches: a negative one failed in the first step's RandomWindows.batch
    (lambda s: s.__setitem__("data_position", -2), r"state.pt: data_position=-2 must be >= 0"),
    (lambda s: s.__setitem__("data_position", 8.0), r"not a training state: its 'data_position' is a float"),
    # resumed and trained on: every weight NaN after the first step, saved as the run's checkpoints
    (lambda s: s["optimizer"]["state"][0]["exp_avg_sq"].fill_(float("nan")),
     r"state.pt: the optimizer state holds NaN/Inf values: 0\.exp_avg_sq"),
])
def test_a_hand_edited_training_state_is_refused_before_the_first_step(base_run, tmp_path, edit, match):
    run_dir = _copy(base_run, tmp_path)
    _edit_state(run_dir / "checkpoints/step-8/state.pt", edit)
    before = (run_dir / "metrics.jsonl").read_text()
    run = base_run[1]
    longer = run.__class__.from_dict({**run.to_dict(), "train": {**run.to_dict()["train"], "max_steps": 10}})
    with pytest.raises(CheckpointError, match=match):
        fit(longer, run_dir, resume=True, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_a_config_edited_to_a_huge_model_is_refused_before_it_is_built(base_run, tmp_path):
    """load_run built config.yaml's model, then compared the weights with it: a config edited to 200B parameters
    allocated them first (an out-of-memory kill, or a server's /reload taken down); now shapes are compared first."""
    import yaml

    run_dir = _copy(base_run, tmp_path)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["model"].update(n_layer=64, n_head=128, n_embd=16384)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_run(run_dir)


def test_a_config_edited_to_a_huge_depth_is_refused_before_any_model_is_built(base_run, tmp_path, monkeypatch):
    """The shapes check above builds config.yaml's model on the meta device, one Python module a layer: n_layer
    10**9 ran until memory ran out. The weights' layer count is compared first."""
    import yaml

    import neurallayers.models

    run_dir = _copy(base_run, tmp_path)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    layers = cfg["model"]["n_layer"]
    cfg["model"]["n_layer"] = 10**9
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))

    def no_build(config):
        raise AssertionError(f"built a model of {config.n_layer} layers before refusing the weights")

    monkeypatch.setattr(neurallayers.models, "build_model", no_build)
    with pytest.raises(CheckpointError, match=rf"n_layer=1000000000 .* weights of {layers} layers.* missing: layer "
                                              rf"{layers}\b"):
        load_run(run_dir)


@pytest.mark.parametrize("kind", ["folder", "broken link"])
def test_a_broken_model_file_is_refused_not_swapped_for_a_checkpoint(base_run, tmp_path, kind):
    """load_run took anything but a regular model.safetensors for a missing one and loaded the newest checkpoint's
    weights instead, silently: `generate` and `serve` answered from another model than the run's best."""
    run_dir = _copy(base_run, tmp_path)
    weights = run_dir / "model.safetensors"
    weights.unlink()
    if kind == "folder":
        weights.mkdir()
    else:
        weights.symlink_to(tmp_path / "unmounted/model.safetensors")
    with pytest.raises((CheckpointError, FileNotFoundError), match="model.safetensors"):
        load_run(run_dir)


@contextlib.contextmanager
def _second_folder_rename_raising(monkeypatch, error: BaseException):
    """os.replace raising `error` at the second rename of a folder in checkpoints/ (a step saved again moves the old
    folder aside, then renames the new one in), as it was until the block ends."""
    import os

    real_replace, calls = os.replace, []

    def replace(src, dst):
        if Path(src).parent.name == "checkpoints":
            calls.append(dst)
            if len(calls) == 2:
                raise error
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        yield
    finally:
        monkeypatch.setattr(os, "replace", real_replace)


def test_a_failed_replace_of_a_saved_step_puts_the_old_one_back(base_run, tmp_path, monkeypatch):
    """Saving a step again moves the old folder aside, then renames the new one in: a failure between the two left the
    step under a .tmp- name, which the message did not mention and the next clean-up deleted."""
    run_dir = _copy(base_run, tmp_path)
    model_sd, state = ckpt.load_checkpoint(run_dir / "checkpoints/step-8")
    with pytest.raises(ckpt.CheckpointWriteError, match="step-8 .*Input/output error"):
        with _second_folder_rename_raising(monkeypatch, OSError(errno.EIO, "Input/output error")):
            ckpt.save_checkpoint(run_dir, step=8, model_state=model_sd, state=state, keep_last=2)
    ckpt.clean_incomplete(run_dir)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-4", "step-8"]
    ckpt.load_checkpoint(run_dir / "checkpoints/step-8")


def test_a_kill_between_the_renames_of_a_saved_step_keeps_the_step(base_run, tmp_path, monkeypatch, caplog):
    """Saving a step again (a run ended at a checkpoint it then evaluated) moves the old folder aside, then renames
    the new one in: a kill between the two left both under .tmp- names, and the next resume went on from the step
    before and deleted them, the step with them (RELIABILITY 6: the previous checkpoint stays whole)."""
    run_dir = _copy(base_run, tmp_path)
    model_sd, state = ckpt.load_checkpoint(run_dir / "checkpoints/step-8")
    with pytest.raises(KeyboardInterrupt):
        with _second_folder_rename_raising(monkeypatch, KeyboardInterrupt()):  # stands for the kill
            ckpt.save_checkpoint(run_dir, step=8, model_state=model_sd, state=state, keep_last=2)
    with caplog.at_level("INFO", logger="neurallayers"):
        fit(base_run[1], run_dir, resume=True, progress=False)
    assert "resumed from step 8" in caplog.text and "nothing to train" in caplog.text  # not from step 4, again
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-8"]
    ckpt.load_checkpoint(run_dir / "checkpoints/step-8")


def test_pruning_unmarks_a_checkpoint_before_deleting_it(base_run, tmp_path, monkeypatch):
    """rmtree deletes in directory order: a kill after state.pt went and before COMPLETE did left a folder listed as
    complete without its state (and offered by a failed resume as "an older checkpoint may load")."""
    run_dir = _copy(base_run, tmp_path)

    def killed_mid_way(path, ignore_errors=False):
        (Path(path) / "state.pt").unlink()
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_mid_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(run_dir, keep_last=1)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-8"]


def test_copying_the_weights_fsyncs_the_folder(base_run, tmp_path, monkeypatch):
    """copy_model renamed model.safetensors into place without an fsync of the run folder: a power cut could lose
    the rename, leaving the weights of the abandoned history."""
    run_dir = _copy(base_run, tmp_path)
    synced = []
    monkeypatch.setattr(ckpt, "fsync_dir", lambda p: synced.append(Path(p)))
    ckpt.copy_model(run_dir / "checkpoints/step-4", run_dir)
    assert synced == [run_dir]


SAFETENSORS_KILL = """
import os, signal, sys
from pathlib import Path
import torch
import safetensors.torch
from neurallayers.training import checkpoint as c
def dies_mid_write(tensors, filename, metadata=None):
    # what safetensors does (a .tmpXXXXXX beside the file, renamed at the end), killed half-way
    Path(filename).with_name(".tmpAbC123").write_bytes(b"half the weights")
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = dies_mid_write
c.save_model(sys.argv[1], {"w": torch.zeros(4)})
"""


def test_a_kill_inside_safetensors_leaves_nothing_the_cleanup_misses(tmp_path):
    """safetensors writes its own `.tmpXXXXXX` beside the name it is given: a kill while it wrote model.safetensors
    left a model-sized file in the run folder that clean_incomplete did not know, once per kill."""
    import subprocess
    import sys

    from nl_train_helpers import child_env

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", SAFETENSORS_KILL, str(run_dir)], env=child_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in run_dir.iterdir()]  # the kill left its temporary
    ckpt.clean_incomplete(run_dir)
    assert list(run_dir.iterdir()) == []


SAVE_FOREVER = """
import sys, torch
from neurallayers.training import checkpoint as c
weights = {"w": torch.randn(8_000_000)}
print("ready", flush=True)
while True:
    c.save_model(sys.argv[1], weights)
"""


def test_a_real_sigkill_mid_write_leaves_the_old_weights_and_no_temporary(tmp_path):
    """A real SIGKILL the moment a temporary of a 32 MB write appears: model.safetensors is the old file, whole, and
    clean_incomplete removes every temporary (whatever wrote it: ours, or safetensors' own)."""
    import os
    import subprocess
    import sys
    import time

    from nl_train_helpers import child_env

    from neurallayers.weights import read_safetensors, save_safetensors

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_safetensors({"w": torch.ones(3)}, run_dir / "model.safetensors")
    proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(run_dir)], env=child_env(tmp_path),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not any(name.startswith(".") for name in os.listdir(run_dir)) and time.monotonic() < deadline:
            pass
    finally:
        proc.kill()
        proc.wait()
    assert torch.equal(read_safetensors(run_dir / "model.safetensors")["w"], torch.ones(3))
    ckpt.clean_incomplete(run_dir)
    assert [p.name for p in run_dir.iterdir()] == ["model.safetensors"]
