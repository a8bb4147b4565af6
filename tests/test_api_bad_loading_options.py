"""Loading options checked as nl.load checks them, on every way in."""

import pytest

import neurallayers as nl
from neurallayers.interop.hf_files import read_hf_weights


def test_load_minilm_names_a_bad_device():
    # load_hf alone: torch's "Expected one of cpu, cuda, ipu, xpu, mkldnn, ..." RuntimeError
    with pytest.raises(ValueError, match="device"):
        nl.load_minilm(device="tpu")


@pytest.mark.parametrize("value", ["false", "no", 1, None])
def test_allow_pickle_must_be_a_bool(tmp_path, value):
    """allow_pickle="false" is truthy: a folder of pickle weights went on to be unpickled."""
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"allow_pickle=.*: must be True or False"):
        read_hf_weights(tmp_path, allow_pickle=value)
