"""NNCLR's loss against its formula computed by hand, the support set's FIFO and nearest-neighbour lookup,
and MoCo reading checkpoints that predate the shared queue."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.methods.losses import nnclr_loss
from pretrain.methods.moco import MoCo
from pretrain.methods.nnclr import NNCLR
from pretrain.methods.queues import FeatureQueue


def nnclr_reference(nn_z: torch.Tensor, p: torch.Tensor, t: float) -> float:
    a = (nn_z / nn_z.norm(dim=1, keepdim=True)).double()
    b = (p / p.norm(dim=1, keepdim=True)).double()
    total = 0.0
    for i in range(len(a)):
        denominator = sum(math.exp(float(a[i] @ b[k]) / t) for k in range(len(b)))
        total += -math.log(math.exp(float(a[i] @ b[i]) / t) / denominator)
    return total / len(a)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nnclr_loss_matches_its_formula(t):
    g = torch.Generator().manual_seed(0)
    nn_z, p = torch.randn(7, 12, generator=g), torch.randn(7, 12, generator=g, requires_grad=True)
    loss = nnclr_loss(nn_z, p, t)
    assert loss.item() == pytest.approx(nnclr_reference(nn_z, p.detach(), t), rel=1e-5)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_queue_is_fifo_and_finds_the_nearest_row():
    q = FeatureQueue(4, 3)
    rows = torch.eye(3)[[0, 1, 2, 0, 1]] * torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    q.enqueue(rows[:3])
    q.enqueue(rows[3:])  # wraps: the oldest (row 0) is overwritten first
    assert int(q.ptr) == 1
    torch.testing.assert_close(q.vectors, torch.stack([rows[4], rows[1], rows[2], rows[3]]))
    hit = q.nearest(torch.tensor([[0.1, 0.0, 1.0]]))
    torch.testing.assert_close(hit, rows[2:3])  # cosine, not distance: the direction decides
    with pytest.raises(ValueError, match=">= 1"):
        FeatureQueue(0, 3)


def test_nnclr_uses_the_support_set_and_fills_it():
    torch.manual_seed(0)
    model = NNCLR(nn.Flatten(), 12, queue_size=10, proj_hidden_dim=8, proj_dim=4, pred_hidden_dim=8)
    before = model.support.vectors.clone()
    views = [torch.randn(6, 3, 2, 2) for _ in range(2)]
    loss, logs = model(views)
    loss.backward()
    assert torch.isfinite(loss) and "nn_similarity" in logs
    assert model.projector[0].weight.grad is not None and model.predictor[0].weight.grad is not None
    assert int(model.support.ptr) == 6 and not torch.equal(model.support.vectors[:6], before[:6])
    torch.testing.assert_close(model.support.vectors[6:], before[6:])


def test_moco_reads_checkpoints_with_the_old_queue_names():
    torch.manual_seed(0)
    moco = MoCo(nn.Flatten(), 12, queue_size=5, proj_hidden_dim=8, proj_dim=4)
    state = moco.state_dict()
    old = {("queue" if k == "keys.vectors" else "queue_ptr" if k == "keys.ptr" else k): v for k, v in state.items()}
    old["queue"] = torch.ones(5, 4)
    other = MoCo(nn.Flatten(), 12, queue_size=5, proj_hidden_dim=8, proj_dim=4)
    other.load_state_dict(old)
    torch.testing.assert_close(other.keys.vectors, torch.ones(5, 4))
