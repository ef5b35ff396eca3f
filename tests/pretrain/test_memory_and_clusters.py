"""The memory bank, PIRL's and CPC's losses and views, k-means with DeepCluster's fixes, SeLA's equal-size labels
and the data pass, each against a plain computation."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from shared_helpers import full_and_resumed

from pretrain.methods.clustering import balance_weights, balanced_argmax, fix_empty, kmeans, sela_assign
from pretrain.methods.losses import cpc_loss, info_nce, pirl_loss, pseudo_label_loss
from pretrain.methods.memorybank import MemoryBank


def test_memory_bank_update_is_a_normalised_moving_average() -> None:
    torch.manual_seed(0)
    bank = MemoryBank(10, 4, momentum=0.7)
    before = bank.vectors.clone()
    new = torch.randn(3, 4)
    idx = torch.tensor([2, 5, 9])
    bank.update(idx, new)
    for row, i in enumerate(idx.tolist()):
        mixed = [0.7 * float(before[i, d]) + 0.3 * float(F.normalize(new, dim=1)[row, d]) for d in range(4)]
        norm = math.sqrt(sum(v * v for v in mixed))
        assert bank.vectors[i].tolist() == pytest.approx([v / norm for v in mixed], abs=1e-6)
    untouched = [i for i in range(10) if i not in idx.tolist()]
    torch.testing.assert_close(bank.vectors[untouched], before[untouched])


def test_memory_bank_samples_only_other_images() -> None:
    torch.manual_seed(0)
    bank = MemoryBank(6, 3)
    bank.vectors.copy_(torch.arange(6).float().unsqueeze(1).repeat(1, 3))  # row i holds i, to read back which
    drawn = bank.sample(500, exclude=torch.tensor([0, 3]))
    assert set(drawn[:, 0].long().tolist()) == {1, 2, 4, 5}
    with pytest.raises(ValueError, match="excluded"):
        bank.sample(2, exclude=torch.arange(6))


def test_nt_xent_with_bank_negatives_matches_a_loop() -> None:
    from pretrain.methods.losses import NTXentLoss

    torch.manual_seed(0)
    z1, z2, bank = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    neg = F.normalize(bank.double(), dim=1)
    t, terms = 0.3, []
    for i in range(6):
        positive = float(z[i] @ z[(i + 3) % 6]) / t
        others = [float(z[i] @ z[k]) / t for k in range(6) if k != i] + [float(z[i] @ m) / t for m in neg]
        terms.append(-positive + math.log(sum(math.exp(o) for o in others)))
    assert float(NTXentLoss(t)(z1, z2, bank)) == pytest.approx(sum(terms) / 6, rel=1e-5)


def test_bank_negatives_exclude_the_batch_then_move_to_the_views_mean() -> None:
    from pretrain.methods.memorybank import BankNegatives

    torch.manual_seed(0)
    switch = BankNegatives(6, 2, count=300, momentum=0.25)
    switch.bank.vectors.copy_(F.normalize(torch.arange(1, 13).float().reshape(6, 2), dim=1))
    before = switch.bank.vectors.clone()
    index, v1, v2 = torch.tensor([1, 4]), torch.randn(2, 2), torch.randn(2, 2)
    drawn = switch.negatives(index, v1, v2)
    assert drawn.shape == (300, 2)
    assert {int((before - d).norm(dim=1).argmin()) for d in drawn} == {0, 2, 3, 5}  # drawn before the update
    mean = F.normalize(v1, dim=1) + F.normalize(v2, dim=1)
    want = F.normalize(0.25 * before[index] + 0.75 * F.normalize(mean, dim=1), dim=1)
    torch.testing.assert_close(switch.bank.vectors[index], want)
    torch.testing.assert_close(switch.bank.vectors[[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    switch.eval()
    switch.negatives(index, v1, v2)  # evaluation: the bank stays
    torch.testing.assert_close(switch.bank.vectors[index], want)


def test_simclr_with_bank_negatives_trains_and_resumes_exactly(image_folder: Path, tmp_path: Path,
                                                                       tiny_config) -> None:
    from safetensors.torch import load_file

    from pretrain.ground.errors import ConfigError
    from pretrain.methods import build_method
    args = {"out_dim": 16, "bank_negatives": 8}

    def config(name: str):
        return tiny_config(image_folder, tmp_path / name, method_args=args, checkpoint_every_steps=2, lr=0.05)

    full, resumed = full_and_resumed(config)
    a, b = torch.load(full / "checkpoint.pt", weights_only=True)["model"], \
        torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert a["bank.bank.vectors"].shape == (len(list(image_folder.rglob("*.jpg"))), 16)
    assert load_file(full / "backbone.safetensors")
    with pytest.raises(ConfigError, match="num_images"):
        build_method("simclr", torch.nn.Flatten(), 12, args)


def test_pirl_loss_matches_its_formula() -> None:
    g = torch.Generator().manual_seed(1)
    f, j, m = (torch.randn(4, 5, generator=g) for _ in range(3))
    neg = torch.randn(7, 5, generator=g)

    def h(q, pos):  # -log softmax of the positive among positive and negatives, by hand
        q, pos, n = F.normalize(q, dim=1), F.normalize(pos, dim=1), F.normalize(neg, dim=1)
        total = 0.0
        for b in range(q.shape[0]):
            logits = [float(q[b] @ pos[b]) / 0.1] + [float(q[b] @ n[k]) / 0.1 for k in range(n.shape[0])]
            total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
        return total / q.shape[0]

    assert float(info_nce(f, m, neg, 0.1)) == pytest.approx(h(f, m), rel=1e-5)
    assert float(pirl_loss(f, j, m, neg, 0.1, lam=0.3)) == pytest.approx(0.3 * h(j, m) + 0.7 * h(f, m), rel=1e-5)


def test_kmeans_labels_are_nearest_centroids_and_no_cluster_is_empty() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(30, 2, generator=g) for c in centres])
    cent, labels, _ = kmeans(x, 3, 10, torch.Generator().manual_seed(1))
    for i in range(len(x)):  # every point's label is its nearest centroid, by a plain loop
        d = [sum((float(x[i, k]) - float(cent[c, k])) ** 2 for k in range(2)) for c in range(3)]
        assert int(labels[i]) == d.index(min(d))
    assert sorted(torch.bincount(labels).tolist()) == [30, 30, 30]  # the three blobs


def test_empty_cluster_fix_splits_a_donor() -> None:
    x = torch.tensor([[0.0], [0.1], [1.0], [1.1]])
    centroids = torch.tensor([[0.55], [100.0]])  # cluster 1 gets no point
    labels = torch.zeros(4, dtype=torch.long)
    new, fixed = fix_empty(x, centroids, labels, torch.Generator().manual_seed(0), noise=0.01)
    assert fixed == 1 and set(labels.tolist()) == {0, 1}
    a, b = float(new[0, 0]), float(new[1, 0])
    assert (a + b) / 2 == pytest.approx(0.55, abs=1e-6) and 0 < abs(a - b) < 0.1  # the donor +- a small shift
    for i in range(4):  # the donor's points went to the nearer of the two
        assert int(labels[i]) == int((x[i] - new).abs().squeeze(1).argmin())


def test_balance_weights_and_pseudo_label_loss() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    w = balance_weights(labels, 3)
    assert w.tolist() == pytest.approx([4 / (3 * 3), 4 / 3, 0.0])
    logits = torch.randn(4, 3)
    ce = [float(-F.log_softmax(logits[i], 0)[labels[i]]) for i in range(4)]
    expected = sum(ce[i] * float(w[labels[i]]) for i in range(4)) / sum(float(w[labels[i]]) for i in range(4))
    assert float(pseudo_label_loss(logits, labels, w)) == pytest.approx(expected, rel=1e-5)
    only = float(-F.log_softmax(logits[1], 0)[2])  # row 1 labelled 2, the others unlabelled (-1)
    assert float(pseudo_label_loss(logits, torch.tensor([-1, 2, -1, -1]))) == pytest.approx(only, rel=1e-5)


def test_balanced_argmax_respects_capacity_and_keeps_the_best() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
    assert balanced_argmax(scores, 2).tolist() == [0, 0, 1, 1]  # row 2 is column 0's third best: it moves
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(103, 7, generator=g)
    labels = balanced_argmax(scores, 15)
    assert torch.bincount(labels, minlength=7).max() <= 15
    assert labels.tolist() == plain_balanced_argmax(scores.tolist(), 15)


def plain_balanced_argmax(scores: list[list[float]], capacity: int) -> list[int]:
    """The same rounds by loops: every unplaced row asks for its best column still open to it; a column keeps
    its best askers up to its free places and closes to the rest (and to all once full)."""
    n, k = len(scores), len(scores[0])
    labels, free = [-1] * n, [capacity] * k
    closed = [set() for _ in range(n)]  # columns each row may no longer ask
    while -1 in labels:
        asks: dict[int, list[int]] = {}
        for i in (i for i in range(n) if labels[i] < 0):
            best = max((j for j in range(k) if j not in closed[i] and free[j] > 0), key=lambda j: scores[i][j])
            asks.setdefault(best, []).append(i)
        for j, rows in asks.items():
            rows.sort(key=lambda i: -scores[i][j])
            for i in rows[:free[j]]:
                labels[i] = j
            for i in rows[free[j]:]:
                closed[i].add(j)
            free[j] -= len(rows[:free[j]])
    return labels


def plain_sinkhorn(logits: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    """SeLA's Sinkhorn-Knopp on P^lam with rows summing to 1/N and columns to 1/K, in float64, by loops."""
    n, k = logits.shape
    p = torch.softmax(logits.double(), dim=1) ** lam
    q = [[float(p[i, j]) for j in range(k)] for i in range(n)]
    for _ in range(iterations):
        for j in range(k):
            col = sum(q[i][j] for i in range(n))
            for i in range(n):
                q[i][j] /= col * k
        for i in range(n):
            row = sum(q[i])
            q[i] = [v / (row * n) for v in q[i]]
    return torch.tensor(q)


def test_sela_labels_are_equal_sized_and_follow_a_plain_sinkhorn() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=g) * 3
    labels = sela_assign(logits, lam=5.0, iterations=50)
    assert torch.bincount(labels, minlength=4).tolist() == [10, 10, 10, 10]
    q = plain_sinkhorn(logits, 5.0, 50)
    assert q.sum(0).tolist() == pytest.approx([0.25] * 4, rel=1e-3)
    agree = (q.argmax(1) == labels).float().mean()
    assert agree >= 0.9  # the equal-size rounding moves only the points on a border
    free = [int(q[i].argmax()) for i in range(40)]
    assert all(labels[i] == free[i] for i in range(40) if q[i].max() > 0.9 * q[i].sum())


def test_data_pass_rows_follow_image_order(image_folder: Path) -> None:
    from pretrain.data.images import scan_images
    from pretrain.ground.preprocess import Preprocessing
    from pretrain.train.datapass import DataPass

    images = scan_images(image_folder)
    pre = Preprocessing.for_size(16)
    out, ok = DataPass(images, pre, torch.device("cpu"), workers=0, batch_size=5, progress=False)(
        lambda x: x.mean(dim=(2, 3)))
    assert ok.all() and out.shape == (len(images), 3)
    from pretrain.data.images import load_rgb
    for i in (0, len(images) // 2, len(images) - 1):
        torch.testing.assert_close(out[i], pre(load_rgb(images.paths[i])).mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)


def test_views_carry_the_decoded_images_index(image_folder: Path) -> None:
    from pretrain.data.datasets import ViewsDataset
    from pretrain.data.images import scan_images
    from pretrain.views.recipes import build_transform

    images = scan_images(image_folder)
    sample, _, _ = ViewsDataset(images, build_transform("simclr", 16, {"views": 1}), indices=True)[(3, 0)]
    assert int(sample["index"]) == 3 and len(sample["views"]) == 1


def test_jigsaw_cells_are_the_shuffled_view() -> None:
    from pretrain.views.ops import Jigsaw, patches_of

    torch.manual_seed(0)
    view = torch.arange(3 * 12 * 12, dtype=torch.float32).reshape(3, 12, 12)
    out = Jigsaw(grid=3, keep=1.0)(view)  # keep 1: cells are only shuffled
    cells, original = patches_of(out.unsqueeze(0), 3), patches_of(view.unsqueeze(0), 3)
    assert out.shape == view.shape
    matched = sorted(int(torch.nonzero((original == c).all(dim=(1, 2, 3)))[0]) for c in cells)
    assert matched == list(range(9))


def test_cpc_loss_matches_explicit_loops() -> None:
    torch.manual_seed(0)
    b, g, d = 2, 3, 4
    z = torch.randn(b, g, g, d, dtype=torch.float64)
    preds = [torch.randn(b, g - k, g, d, dtype=torch.float64) for k in (1, 2)]
    per_k = []
    for k, pred in enumerate(preds, start=1):
        terms = []
        for i in range(b):
            for r in range(g - k):
                for c in range(g):
                    scores = [float(pred[i, r, c] @ z[j, rr, cc])
                              for j in range(b) for rr in range(g) for cc in range(g)]
                    positive = float(pred[i, r, c] @ z[i, r + k, c])
                    terms.append(-positive + math.log(sum(math.exp(s) for s in scores)))
        per_k.append(sum(terms) / len(terms))
    assert float(cpc_loss(z, preds)) == pytest.approx(sum(per_k) / 2, rel=1e-5)
    # cosine / temperature: the same as dot products of unit vectors scaled by 1 / t
    unit = [F.normalize(p, dim=-1) / 0.5 for p in preds]
    assert float(cpc_loss(z, preds, temperature=0.5)) == pytest.approx(float(cpc_loss(F.normalize(z, dim=-1), unit)),
                                                                       rel=1e-6)


def test_patch_grid_tiles_half_overlapping_patches_row_by_row() -> None:
    from torchvision.transforms.v2 import functional as TF

    from pretrain.views.ops import PatchGrid, patches_of
    from pretrain.views.recipes import build_transform

    view = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(3, 16, 16)
    out = PatchGrid(grid=3, keep=1.0)(view)  # stride 4, patches of 8, no re-crop
    assert out.shape == (3, 24, 24)
    patches = patches_of(out.unsqueeze(0), 3)
    for r in range(3):
        for c in range(3):
            torch.testing.assert_close(patches[r * 3 + c], view[:, 4 * r:4 * r + 8, 4 * c:4 * c + 8])
    views = build_transform("patchgrid", 32)(Image.new("RGB", (40, 40), (120, 30, 200)))
    assert len(views) == 1 and views[0].shape == (3, 48, 48)  # 3 x 3 patches of 16 px from a 32 px crop
    upsampled = PatchGrid(grid=2, keep=1.0, patch_size=12)(view[:, :15, :15])  # stride 5, patches of 10 -> 12 px
    assert upsampled.shape == (3, 24, 24)
    for r in range(2):
        for c in range(2):
            want = TF.resize(view[:, 5 * r:5 * r + 10, 5 * c:5 * c + 10], [12, 12], antialias=True)
            torch.testing.assert_close(patches_of(upsampled.unsqueeze(0), 2)[r * 2 + c], want)
    views = build_transform("patchgrid", 32, {"grid": 2, "patch_size": 32})(Image.new("RGB", (40, 40), (1, 2, 3)))
    assert views[0].shape == (3, 64, 64)


def test_patch_grid_draws_each_patch_colour_on_its_own_when_asked() -> None:
    from pretrain.views.ops import PatchGrid, patches_of
    from pretrain.views.recipes import build_transform

    view = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(3, 16, 16)
    calls = []

    def colour(patch: torch.Tensor) -> torch.Tensor:
        calls.append(patch.shape)
        return patch + 1000.0 * len(calls)

    patches = patches_of(PatchGrid(grid=3, keep=1.0, colour=colour)(view).unsqueeze(0), 3)
    assert calls == [(3, 8, 8)] * 9  # once per patch, on the patch
    for k in range(9):
        r, c = divmod(k, 3)
        torch.testing.assert_close(patches[k], view[:, 4 * r:4 * r + 8, 4 * c:4 * c + 8] + 1000.0 * (k + 1))
    flat = Image.new("RGB", (40, 40), (120, 90, 60))
    args = {"grid": 2, "patch_size": 32, "jitter_p": 1.0, "gray_p": 0.0, "blur_p": 0.0}
    torch.manual_seed(0)
    shared = patches_of(build_transform("patchgrid", 32, args)(flat)[0].unsqueeze(0), 2).mean((1, 2, 3))
    own = patches_of(build_transform("patchgrid", 32, {**args, "patch_colour": True})(flat)[0].unsqueeze(0),
                     2).mean((1, 2, 3))
    torch.testing.assert_close(shared, shared[:1].expand(4), atol=1e-5, rtol=0)  # one colour for the crop
    assert (own.max() - own.min()) > 0.05  # a colour per patch
