"""RoPE against the RoFormer formula itself. Relative-position invariance and norm keeping (test_positions.py) hold for
a rotation the wrong way round or with the wrong rates too; only the formula pins the direction and each pair's rate,
which Llama checkpoints were trained with."""

from __future__ import annotations

import cmath

import pytest
import torch

from neurallayers.nn.positions import RotaryEmbedding, apply_rotary


def roformer(x: torch.Tensor, position: int, theta: float, factor: float) -> torch.Tensor:
    """x (head_dim,) rotated as RoFormer writes it, in the half-split layout of Hugging Face Llama: channels i and
    i + d/2 are the complex number x_i + j x_{i+d/2}, multiplied by exp(j (position / factor) theta^(-2i/d))."""
    d = x.shape[-1]
    half = d // 2
    out = [0.0] * d
    for i in range(half):
        z = complex(x[i], x[i + half]) * cmath.exp(1j * (position / factor) * theta ** (-2 * i / d))
        out[i], out[i + half] = z.real, z.imag
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("theta", "factor"), [(10000.0, 1.0), (500.0, 1.0), (10000.0, 4.0)])
def test_rope_rotates_each_channel_pair_as_roformer_does(theta, factor):
    head_dim = 8
    scaling = None if factor == 1.0 else {"type": "linear", "factor": factor}
    rope = RotaryEmbedding(head_dim, theta=theta, scaling=scaling, max_position=256)
    positions = [0, 1, 5, 37, 200]
    x = torch.randn(len(positions), head_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cos, sin = rope(torch.tensor([positions]), torch.float64)  # (1, 1, T, head_dim)
    got = apply_rotary(x[None, None], cos, sin)[0, 0]
    want = torch.stack([roformer(x[t], p, theta, factor) for t, p in enumerate(positions)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # the rates are float32, as transformers keeps them
