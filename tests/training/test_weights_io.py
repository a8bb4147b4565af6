import json
import os
import struct
import tracemalloc

import pytest
import torch
from nl_train_helpers import Evil
from safetensors.torch import save_file

from neurallayers import ModelConfig, build_model
from neurallayers.weights import (
    CheckpointError,
    check_state_dict,
    read_safetensors,
    save_safetensors,
    torch_load_safe,
    validate_safetensors,
)


def _raw(path, header: dict | bytes, data: bytes = b"", *, claimed: int | None = None):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if claimed is None else claimed) + blob + data)
    return path


def _assert_refused_cheaply(path, needle):
    """Refused with a message naming the file, without first reading what the header claims (up to 2^62 bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=needle) as e:
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(e.value)
    assert peak < 1_000_000, f"allocated {peak} bytes to refuse a {path.stat().st_size}-byte file"
    return e.value


def test_huge_header_length_refused(tmp_path):
    _assert_refused_cheaply(_raw(tmp_path / "huge.safetensors", {}, claimed=2**62), "over the")


def test_header_past_end_refused(tmp_path):
    _assert_refused_cheaply(_raw(tmp_path / "past.safetensors", b"{}", claimed=5000), "past the end")


def test_bad_json_refused(tmp_path):
    _assert_refused_cheaply(_raw(tmp_path / "bad.safetensors", b"{not json"), "not valid JSON")


def test_deeply_nested_json_refused(tmp_path):
    """'[' x 200,000 is a 0.4 MB header, far under the size limit: json.loads raised RecursionError (a traceback)."""
    _assert_refused_cheaply(_raw(tmp_path / "deep.safetensors", b"[" * 200_000 + b"]" * 200_000),
                            "nested too deep")


def test_unknown_dtype_refused(tmp_path):
    hdr = {"w": {"dtype": "F17", "shape": [2], "data_offsets": [0, 8]}}
    _assert_refused_cheaply(_raw(tmp_path / "dtype.safetensors", hdr, b"\0" * 8), "unknown dtype 'F17'")


def test_truncated_data_refused(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 100])
    _assert_refused_cheaply(path, r"ends at byte \d+ of the data .*\(truncated\?\)")  # not the folder's name


def test_offsets_inconsistent_with_shape_refused(tmp_path):
    hdr = {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}
    _assert_refused_cheaply(_raw(tmp_path / "shape.safetensors", hdr, b"\0" * 16), "needs 64")


def test_tiny_file_refused(tmp_path):
    (tmp_path / "t.safetensors").write_bytes(b"\x01\x02")
    _assert_refused_cheaply(tmp_path / "t.safetensors", "shorter than")


def test_tied_weights_saved_once_and_restored(tmp_path):
    model = build_model(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["wte.weight"].data_ptr()
    path = save_safetensors(sd, tmp_path / "m.safetensors")
    header, meta = validate_safetensors(path)
    assert "lm_head.weight" not in header and "wte.weight" in header
    assert json.loads(meta["neurallayers_tied"]) == {"lm_head.weight": "wte.weight"}
    back = read_safetensors(path)
    assert set(back) == set(sd)
    assert back["lm_head.weight"].data_ptr() == back["wte.weight"].data_ptr()
    for k in sd:
        assert torch.equal(back[k], sd[k])
    check_state_dict(model, back)
    assert not list(tmp_path.glob(".*tmp*"))


def test_check_state_dict_names_keys():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    sd = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as e:
        check_state_dict(expected, sd, source="x.safetensors")
    msg = str(e.value)
    assert "1 missing: c" in msg and "1 unexpected: extra" in msg and "1 mis-shaped: a (3, 2)" in msg
    check_state_dict(expected, sd | {"a": torch.zeros(2, 3), "c": torch.zeros(1)}, ignore=["extra"])
    with pytest.raises(CheckpointError, match="NaN/Inf values: b"):
        check_state_dict(expected, {"a": torch.zeros(2, 3), "b": torch.tensor([0, 1, float("inf"), 2]),
                                    "c": torch.zeros(1)})
    model = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError, match=r"2 not floating point: bias \(int64\), weight \(bool\)"):
        check_state_dict(model, {"weight": torch.ones(3, 2, dtype=torch.bool),
                                 "bias": torch.zeros(3, dtype=torch.long)})
    check_state_dict(model, {"weight": torch.ones(3, 2, dtype=torch.bfloat16), "bias": torch.zeros(3)})
    # float8 weights: torch has no isfinite for them (a NotImplementedError traceback); read as their values
    fp8 = {"weight": torch.ones(3, 2).to(torch.float8_e4m3fn), "bias": torch.zeros(3)}
    check_state_dict(model, fp8)
    fp8["weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN/Inf values: weight"):
        check_state_dict(model, fp8)
    many = {f"k{i}": (1,) for i in range(9)}
    with pytest.raises(CheckpointError, match=r"9 missing: .*\(\+4 more\)"):
        check_state_dict(many, {})


def test_malicious_pickle_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load .*contains code/objects"):
        torch_load_safe(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"step": torch.tensor(3), "rng": [1, 2.0, None]}, tmp_path / "ok.pt")
    assert torch_load_safe(tmp_path / "ok.pt")["step"].item() == 3
    (tmp_path / "junk.pt").write_bytes(b"garbage")  # corrupt bytes are not taken for a malicious pickle
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch checkpoint .*corrupt"):
        torch_load_safe(tmp_path / "junk.pt")
    (tmp_path / "empty.pt").write_bytes(b"")  # EOFError(''): its message was indexed, an IndexError
    with pytest.raises(CheckpointError, match="empty.pt: not a readable torch checkpoint"):
        torch_load_safe(tmp_path / "empty.pt")


def test_random_bytes_are_refused_as_unreadable(tmp_path):
    """torch's unpickler raises KeyError ("error: 101", naming no file) or IndexError on some random bytes: 152 of 600
    random files got past the refusal as bare tracebacks."""
    import random

    path = tmp_path / "state.pt"
    for seed in range(60):
        rng = random.Random(seed)
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        path.write_bytes(b"hello world" * (seed + 1) if seed % 5 == 0 else data)
        with pytest.raises(CheckpointError, match="state.pt: not a readable torch checkpoint"):
            torch_load_safe(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_weights_are_readable_as_the_umask_says(tmp_path):
    """safetensors creates its file 0o600, so a run's model.safetensors could not be read by a team sharing the folder
    or a server running as another user, while every other file of the run was 0o644."""
    import os

    old = os.umask(0o022)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
        os.umask(0o002)
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o664


def test_a_number_of_thousands_of_digits_refused(tmp_path):
    """Python refuses to parse an integer of over 4300 digits with a bare ValueError that named no file."""
    hdr = b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    err = _assert_refused_cheaply(_raw(tmp_path / "digits.safetensors", hdr, b"\0" * 4), "not a safetensors header")
    assert "set_int_max_str_digits" not in str(err)


@pytest.mark.skipif(os.name != "posix", reason="FIFOs and symlinks")
def test_a_folder_fifo_or_symlink_loop_is_named_as_such(tmp_path):
    """Each was "no weights file at ..." (a FileNotFoundError), as if the user had mistyped the path; a FIFO must
    not be opened (a read blocks until some writer comes)."""
    (tmp_path / "dir.safetensors").mkdir()
    os.mkfifo(tmp_path / "fifo.safetensors")
    os.symlink(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    os.symlink(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    os.symlink(tmp_path / "gone.safetensors", tmp_path / "dangling.safetensors")
    for name, needle in [("dir", "is a directory, not a weights file"), ("fifo", "is a FIFO, socket or device"),
                         ("a", "cannot open the weights file .*symbolic links")]:
        _assert_refused_cheaply(tmp_path / f"{name}.safetensors", needle)
    with pytest.raises(FileNotFoundError, match="a symbolic link to a missing file"):
        read_safetensors(tmp_path / "dangling.safetensors")
    (tmp_path / "state.pt").mkdir()
    with pytest.raises(CheckpointError, match="state.pt is a directory, not a checkpoint file"):
        torch_load_safe(tmp_path / "state.pt")


def test_a_torch_archive_cut_short_is_refused_naming_the_file(tmp_path):
    """A state.pt or pytorch_model.bin cut short (a copy that ran out of space) made torch's zip reader raise a bare
    "OSError: [Errno 22] Invalid argument": a traceback from the CLI, naming no file."""
    torch.save({"step": 3, "optimizer": {"state": {0: {"exp_avg": torch.randn(2000)}}}}, tmp_path / "whole.pt")
    blob = (tmp_path / "whole.pt").read_bytes()  # cut past its first 4 KB, the bare OSError
    path = tmp_path / "state.pt"
    for cut in range(0, len(blob), 101):
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="state.pt: not a readable torch checkpoint"):
            torch_load_safe(path)


def test_a_refused_pickle_does_not_advise_allowlisting_its_code(tmp_path):
    """The refusal quoted torch's whole line, which asks the user to `add_safe_globals([io.open])` if they trust it:
    advice to run the attacker's global."""
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*Unsupported global: GLOBAL io.open") as e:
        torch_load_safe(tmp_path / "pytorch_model.bin")
    assert "safe_globals" not in str(e.value) and not marker.exists()


def test_a_header_of_a_million_empty_tensors_is_refused_before_parsing(tmp_path):
    """A well-formed 67 MB header (under the format's 100 MB limit) listing 1,000,000 empty tensors took 41 s and
    1.4 GB to read before the key check refused it: RELIABILITY 3 asks for a clean error within a second."""
    entry = '"t{}": {{"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'
    hdr = ("{" + ", ".join(entry.format(i) for i in range(1_000_000)) + "}").encode()
    path = _raw(tmp_path / "bomb.safetensors", hdr, b"")
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="header lists over 65,536 tensors"):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(hdr)  # the header's bytes, not a parsed million objects (about 20x them)
