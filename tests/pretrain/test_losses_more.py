"""MoCo, DrLIM, SwAV, DINO and VICRegL losses against plain reference computations."""
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from pretrain.ground.backbones import FeatureMapTap
from pretrain.methods.losses import (
    DINOLoss,
    drlim_loss,
    info_nce,
    sinkhorn,
    swapped_prediction,
    vicregl_global_terms,
    vicregl_local_terms,
)
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
        moco.keys.enqueue(b)
    assert moco.keys.vectors.shape == (5, 3)
    # 8 keys through 5 slots in order 0 1 2 3 4 0 1 2: the 5 newest stay, the pointer is at 8 % 5.
    assert moco.keys.vectors[:, 0].tolist() == [3.0, 4.0, 4.0, 2.0, 3.0] and int(moco.keys.ptr) == 3
    moco.keys.enqueue(torch.arange(12.0).reshape(4, 3))  # keys 0, 3, 6, 9 wrap round: slots 3, 4, 0, 1
    assert moco.keys.vectors[:, 0].tolist() == [6.0, 9.0, 4.0, 0.0, 3.0] and int(moco.keys.ptr) == 2


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


def _plain_vicreg_of_matches(xs: list[list[torch.Tensor]], ys: list[list[torch.Tensor]]) -> tuple[float, ...]:
    """The authors' _vicreg_loss, written with loops: xs[n][j] is the j-th match of image n."""
    b, k = len(xs), len(xs[0])
    inv = sum(float(((xs[n][j] - ys[n][j]) ** 2).mean()) for n in range(b) for j in range(k)) / (b * k)
    var = cov = 0.0
    for zs in (xs, ys):
        for j in range(k):  # one sample per match rank: the j-th match of every image
            sample = torch.stack([zs[n][j] for n in range(b)]).double()
            sample = sample - sample.mean(0)
            var += float(torch.relu(1 - torch.sqrt(sample.var(0) + 1e-4)).mean()) / 2 / k
            c = sample.T @ sample / (b - 1)
            d = c.shape[0]
            cov += sum(float(c[p, q]) ** 2 for p in range(d) for q in range(d) if p != q) / d / 2 / k
    return inv, var, cov


def _plain_match(x, y, dist, k):
    """Each row of x with its nearest y; the k closest pairs, in x's position order (the authors' selection)."""
    xs, ys = [], []
    for n in range(x.shape[0]):
        best = sorted((float(dist[n, i].min()), i, int(dist[n, i].argmin())) for i in range(x.shape[1]))
        chosen = sorted(best[: (x.shape[1] if k is None else k)], key=lambda t: t[1])
        xs.append([x[n, i] for _, i, _ in chosen])
        ys.append([y[n, j] for _, _, j in chosen])
    return xs, ys


def test_vicregl_local_terms_match_the_authors_formula() -> None:
    za, zb = randn(5, 4, 3, seed=30), randn(5, 6, 3, seed=31)
    pa, pb = torch.rand(5, 4, 2), torch.rand(5, 6, 2)
    expected = [0.0, 0.0, 0.0]
    # feature matches use every position (l2_all_matches), location matches (3 from a, 2 from b)
    for dist_ab, (k_ab, k_ba) in ((torch.cdist(za, zb), (None, None)), (torch.cdist(pa, pb), (3, 2))):
        for x, y, d, k in ((za, zb, dist_ab, k_ab), (zb, za, dist_ab.transpose(1, 2), k_ba)):
            for t, value in enumerate(_plain_vicreg_of_matches(*_plain_match(x, y, d, k))):
                expected[t] += value / 2  # each kind: mean of the two directions; the kinds add up
    got = vicregl_local_terms(za, zb, pa, pb, (3, 2))
    assert [float(t) for t in got] == pytest.approx(expected, rel=1e-5)


def test_vicregl_global_terms_average_over_views() -> None:
    zs = [randn(8, 5, seed=40 + v) for v in range(3)]  # 2 global views and 1 local view
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    inv = sum(float(((zs[i] - zs[j]) ** 2).mean()) for i, j in pairs) / len(pairs)
    var = cov = 0.0
    for z in zs:
        z = z.double() - z.double().mean(0)
        var += float(torch.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean()) / 3
        c = z.T @ z / 7
        cov += (float((c ** 2).sum()) - float((torch.diagonal(c) ** 2).sum())) / 5 / 3  # averaged, not summed
    assert [float(t) for t in vicregl_global_terms(zs, 2)] == pytest.approx([inv, var, cov], rel=1e-5)


def test_vicregl_objective_weights_global_and_local_by_alpha() -> None:
    from pretrain.ground.backbones import build_backbone, resolve_spec
    from pretrain.methods.vicregl import VICRegL

    torch.manual_seed(0)
    net, dim = build_backbone(resolve_spec("resnet18", True, 16, {}), 16)
    views = [torch.randn(6, 3, 16, 16) for _ in range(2)]
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.9, 0.9]]).expand(6, 2, 4)
    losses = {}
    for alpha in (0.0, 1.0, 0.25):
        torch.manual_seed(1)
        method = VICRegL(net, dim, alpha=alpha, proj_dim=16, proj_layers=2, local_proj_dim=8, matches_ab=4,
                         matches_ba=2).eval()
        losses[alpha] = float(method(views, boxes)[0])
    assert losses[0.25] == pytest.approx(0.25 * losses[1.0] + 0.75 * losses[0.0], rel=1e-5)


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
