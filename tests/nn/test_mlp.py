"""Feed-forward blocks: the GELU MLP and the gated ones are their formulas; a bad activation is refused when built."""

from __future__ import annotations

import pytest
import torch

from neurallayers.nn.mlp import MLP, GatedMLP


def test_mlp_is_its_formula_in_float64():
    torch.manual_seed(0)
    mlp = MLP(6, 10, gelu_approx="none").double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    h = x @ mlp.fc.weight.T + mlp.fc.bias
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))  # exact GELU
    torch.testing.assert_close(mlp(x), h @ mlp.proj.weight.T + mlp.proj.bias)


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_gated_mlp_is_its_formula_in_float64(activation):
    torch.manual_seed(0)
    mlp = GatedMLP(6, 10, activation=activation).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    gate, up = x @ mlp.fc.weight[:10].T, x @ mlp.fc.weight[10:].T
    if activation == "silu":
        act = gate / (1 + torch.exp(-gate))
    elif activation == "gelu":
        act = 0.5 * gate * (1 + torch.erf(gate / 2**0.5))
    else:
        act = 0.5 * gate * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (gate + 0.044715 * gate**3)))
    torch.testing.assert_close(mlp(x), (act * up) @ mlp.proj.weight.T)


def test_an_unknown_gelu_approximation_is_refused_when_built():
    """It was accepted, then every forward failed in torch ("approximate argument must be either none or tanh")."""
    with pytest.raises(ValueError, match=r"MLP gelu_approx='exact': valid: 'tanh', 'none'"):
        MLP(4, 8, gelu_approx="exact")
