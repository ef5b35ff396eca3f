"""MoCo, DrLIM, SwAV, DINO and VICRegL losses against plain reference computations."""
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from pretrain.backbones import FeatureMapTap
from pretrain.losses import DINOLoss, VICRegLoss, drlim_loss, info_nce, sinkhorn, swapped_prediction, vicregl_local_loss
from pretrain.methods.moco import MoCo
from pretrain.methods.vicregl import cell_positions


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_info_nce_matches_a_loop_over_queries() -> None:
    q, k, queue, t = randn(5, 4, seed=1), randn(5, 4, seed=2), randn(7, 4, seed=3), 0.2
    total = 0.0
    for i in range(5):
        qi = q[i] / q[i].norm()
        sims = [float(qi @ (k[i] / k[i].norm()))] + [float(qi @ (r / r.norm())) for r in queue]
        total += -math.log(math.exp(sims[0] / t) / sum(math.exp(s / t) for s in sims))
    assert info_nce(q, k, queue, t).item() == pytest.approx(total / 5, rel=1e-5)


def test_moco_queue_is_fifo_with_fixed_size() -> None:
    moco = MoCo(torch.nn.Flatten(), 12, queue_size=5, proj_hidden_dim=8, proj_dim=3)
    batches = [torch.full((2, 3), float(i)) for i in range(1, 5)]  # keys 1,1 2,2 3,3 4,4
    for b in batches:
        moco.enqueue(b)
    assert moco.queue.shape == (5, 3)
    # 8 keys through 5 slots in order 0 1 2 3 4 0 1 2: the 5 newest stay, the pointer is at 8 % 5.
    assert moco.queue[:, 0].tolist() == [3.0, 4.0, 4.0, 2.0, 3.0] and int(moco.queue_ptr) == 3
    moco.enqueue(torch.arange(12.0).reshape(4, 3))  # keys 0, 3, 6, 9 wrap round: slots 3, 4, 0, 1
    assert moco.queue[:, 0].tolist() == [6.0, 9.0, 4.0, 0.0, 3.0] and int(moco.queue_ptr) == 2


def test_drlim_matches_pairwise_loop() -> None:
    z1, z2, m = randn(4, 3, seed=4), randn(4, 3, seed=5), 1.2
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    pos, neg = [], []
    for i in range(4):
        for j in range(4):
            d = float((a[i] - b[j]).norm())
            (pos if i == j else neg).append(d * d / 2 if i == j else max(0.0, m - d) ** 2 / 2)
    assert drlim_loss(z1, z2, m).item() == pytest.approx(np.mean(pos) + np.mean(neg), rel=1e-5)


def test_sinkhorn_marginals_and_reference() -> None:
    scores = randn(12, 5, seed=6)
    q = sinkhorn(scores, epsilon=0.5, iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))  # every sample: a distribution
    torch.testing.assert_close(q.sum(dim=0), torch.full((5,), 12 / 5), atol=1e-4, rtol=0)  # equal shares
    # The SwAV paper's algorithm, written out in numpy, for the 3 iterations of the default.
    ref = np.exp(scores.numpy().astype(np.float64) / 0.5).T  # K x B
    ref /= ref.sum()
    for _ in range(3):
        ref /= ref.sum(axis=1, keepdims=True) * 5
        ref /= ref.sum(axis=0, keepdims=True) * 12
    np.testing.assert_allclose(sinkhorn(scores, 0.5, 3).numpy(), (ref * 12).T, rtol=1e-4)


def test_swapped_prediction_matches_loop() -> None:
    scores = [randn(3, 4, seed=s) for s in range(7, 10)]  # 2 globals and 1 local
    codes = [F.softmax(randn(3, 4, seed=s), dim=1) for s in (11, 12)]
    terms = [-(codes[i][n] * F.log_softmax(scores[v][n] / 0.1, dim=0)).sum().item()
             for i in range(2) for v in range(3) if v != i for n in range(3)]
    assert swapped_prediction(scores, codes, 0.1).item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_dino_loss_and_center_update() -> None:
    loss = DINOLoss(4, student_temp=0.1, center_momentum=0.9)
    loss.center.fill_(0.5)
    student = [randn(3, 4, seed=s) for s in range(3)]
    teacher = [randn(3, 4, seed=s) for s in (20, 21)]
    terms = [-(F.softmax((teacher[i][n] - 0.5) / 0.04, dim=0) * F.log_softmax(student[v][n] / 0.1, dim=0)).sum()
             for i in range(2) for v in range(3) if v != i for n in range(3)]
    assert loss(student, teacher, 0.04).item() == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    torch.testing.assert_close(loss.center, 0.9 * 0.5 + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True))


def test_cell_positions_follow_boxes_and_flips() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.5]])  # whole image; left-top quarter, flipped
    pos = cell_positions(boxes, 2, 2)
    torch.testing.assert_close(pos[0], torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    torch.testing.assert_close(pos[1], torch.tensor([[0.375, 0.125], [0.125, 0.125], [0.375, 0.375],
                                                     [0.125, 0.375]]))


def test_vicregl_local_loss_uses_nearest_locations_and_features() -> None:
    criterion = VICRegLoss()
    za, zb = randn(3, 4, 6, seed=30), randn(3, 5, 6, seed=31)
    pa, pb = torch.rand(3, 4, 2), torch.rand(3, 5, 2)

    def matched(x, y, d, k):  # plain loops: the k rows of x whose nearest y is closest
        xs, ys = [], []
        for n in range(x.shape[0]):
            best = [(float(d[n, i].min()), i, int(d[n, i].argmin())) for i in range(x.shape[1])]
            for _, i, j in sorted(best)[:k]:
                xs.append(x[n, i])
                ys.append(y[n, j])
        return torch.stack(xs), torch.stack(ys)

    expected = 0.0
    for x, y, px, py in ((za, zb, pa, pb), (zb, za, pb, pa)):
        for d in (torch.cdist(px, py), torch.cdist(x, y)):
            expected += criterion(*matched(x, y, d, 2)).item() / 4
    assert vicregl_local_loss(za, zb, pa, pb, 2, criterion).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("make", [lambda: torchvision.models.resnet18(num_classes=10),
                                  lambda: timm.create_model("test_resnet", num_classes=0),
                                  lambda: timm.create_model("test_convnext", num_classes=0),
                                  lambda: timm.create_model("test_vit", num_classes=0)])
def test_feature_map_tap_sees_the_map_the_backbone_pools(make) -> None:
    model = make().eval()
    if isinstance(model, torchvision.models.ResNet):
        model.fc = torch.nn.Identity()
    tap = FeatureMapTap(model)
    size = 32 if "vit" not in type(model).__name__.lower() else model.patch_embed.img_size[0]
    with torch.no_grad():
        pooled = model(torch.randn(2, 3, size, size))
    assert tap.map.ndim == 4 and tap.map.shape[0] == 2 and tap.map.shape[1] == pooled.shape[1]
    if isinstance(model, (torchvision.models.ResNet, timm.models.ResNet)):  # plain average pooling
        torch.testing.assert_close(tap.map.mean(dim=(2, 3)), pooled, atol=1e-5, rtol=1e-5)
