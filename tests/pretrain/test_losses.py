import math

import pytest
import torch

from pretrain.methods.losses import NTXentLoss


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR paper's definition, one anchor at a time, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / t) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(t: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)


def test_nt_xent_is_symmetric_in_the_views() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    loss = NTXentLoss(0.2)
    assert loss(z1, z2).item() == pytest.approx(loss(z2, z1).item(), rel=1e-6)


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped_ones() -> None:
    z = torch.eye(4) * 5
    loss = NTXentLoss(0.1)
    assert loss(z, z).item() < 1e-3
    assert loss(z, z.roll(1, dims=0)).item() > 5


def test_nt_xent_rejects_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
