"""A safetensors file cut short is refused by our own check, naming the tensor that runs past the end. The check in
test_weights_io.py matches "truncated" anywhere in the message, and its file lies in a folder named after that test
("test_truncated_data_refused0"), so it passed on the safetensors library's own "file not fully covered" as well."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from neurallayers.weights import CheckpointError, read_safetensors


def test_a_file_cut_short_names_the_tensor_past_its_end(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4), "w": torch.randn(64, 64)}, str(path))  # w is stored last: bytes 16 .. 16400
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])
    with pytest.raises(CheckpointError, match=r"tensor 'w' ends at byte 16400 of the data but the file holds only "
                                              r"16300 data bytes \(truncated\?\)"):
        read_safetensors(path)


def test_a_header_one_byte_past_the_end_is_refused_as_such(tmp_path):
    """test_weights_io.py claims 5000 header bytes in a 10-byte file; a length just past the end, whose JSON still
    parses from the bytes there are, must be refused by the same check."""
    path = tmp_path / "model.safetensors"
    path.write_bytes((3).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length 3 runs past the end of the 10-byte file"):
        read_safetensors(path)
