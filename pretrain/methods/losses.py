"""Self-supervised losses as small, pure modules: no model code, each checked against a plain reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.distributed import all_reduce


class NTXentLoss(nn.Module):
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

    For 2N embeddings of N images (two views each), the positive of each embedding is the other
    view of its image and the 2N-2 embeddings of other images are its negatives:
    l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), with s the cosine similarity,
    averaged over all 2N anchors. Symmetric in the two views. `negatives` (M, D), e.g. memory-bank entries
    (pretrain/methods/memorybank.py: BankNegatives), join every anchor's denominator as M more terms.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (got {temperature})")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / self.temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        if negatives is not None:
            logits = torch.cat([logits, z @ F.normalize(negatives.float(), dim=1).T / self.temperature], dim=1)
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, targets)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (Chen & He 2021)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), target z without gradient (Grill et al. 2020)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation C of the batch-normalised embeddings of
    the two views should be the identity: sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2."""

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5):
        super().__init__()
        self.lambd, self.eps = lambd, eps

    def _standardize(self, z: torch.Tensor) -> torch.Tensor:  # BatchNorm1d(affine=False) in training mode
        z = z.float()
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + self.eps)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self._standardize(z1).T @ self._standardize(z2) / z1.shape[0]
        return (torch.diagonal(c) - 1).pow(2).sum() + self.lambd * _off_diagonal(c).pow(2).sum()


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022): lambda * invariance + mu * variance + nu * covariance.

    invariance: MSE between the two embeddings; variance: mean over dimensions of relu(gamma - std),
    std = sqrt(var + eps), averaged over both views; covariance: sum of squared off-diagonal entries
    of each view's covariance matrix, divided by the dimension. `terms` returns the three unweighted.
    """

    def __init__(self, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0, gamma: float = 1.0,
                 eps: float = 1e-4):
        super().__init__()
        self.lambda_, self.mu, self.nu, self.gamma, self.eps = lambda_, mu, nu, gamma, eps

    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        variance = covariance = 0.0
        for z in (z1, z2):
            z = z - z.mean(0)
            std = torch.sqrt(z.var(0) + self.eps)
            variance = variance + F.relu(self.gamma - std).mean() / 2
            cov = z.T @ z / (z.shape[0] - 1)
            covariance = covariance + _off_diagonal(cov).pow(2).sum() / z.shape[1]
        return invariance, variance, covariance

    def weighted(self, invariance: torch.Tensor, variance: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
        return self.lambda_ * invariance + self.mu * variance + self.nu * covariance

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.weighted(*self.terms(z1, z2))


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020): each query's positive is its key; the queue holds the negatives.

    logits = [q.k, q.queue^T] / t over L2-normalised vectors, cross-entropy with the positive at index 0.
    The key and queue get no gradient (they come from the momentum encoder).
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.detach().float(), dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ F.normalize(queue.detach().float(), dim=1).T
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def pirl_loss(image: torch.Tensor, jigsaw: torch.Tensor, memory: torch.Tensor, negatives: torch.Tensor,
              temperature: float, lam: float = 0.5) -> torch.Tensor:
    """PIRL's objective (Misra & van der Maaten 2020, eq. 5), with the softmax form of its NCE:
    lam * h(g(jigsaw), m) + (1 - lam) * h(f(image), m), where h is `info_nce` of the query against its
    memory-bank entry m as the positive and the sampled bank entries as negatives."""
    return lam * info_nce(jigsaw, memory, negatives, temperature) + \
        (1 - lam) * info_nce(image, memory, negatives, temperature)


def cpc_loss(targets: torch.Tensor, predictions: list[torch.Tensor], temperature: float = 0.0) -> torch.Tensor:
    """CPC's InfoNCE (van den Oord et al. 2018, eq. 4) over a grid of patch codes.

    targets: (B, G, G, D) the patches' codes z; predictions[k - 1]: (B, G - k, G, D), the context at row i
    predicting the code at row i + k (same column). Each prediction is scored by dot product against every
    code of the batch (all positions of all images); the true patch is the positive. Mean over the predictions
    of each k, then over k. `temperature` > 0 scores by cosine / temperature instead (SimCLR's form).
    """
    b, g, _, d = targets.shape
    candidates = targets.reshape(-1, d).float()
    if temperature > 0:
        candidates = F.normalize(candidates, dim=1) / temperature
        predictions = [F.normalize(p.float(), dim=-1) for p in predictions]
    ids = torch.arange(b * g * g, device=targets.device).reshape(b, g, g)
    losses = []
    for k, pred in enumerate(predictions, start=1):
        logits = pred.reshape(-1, d).float() @ candidates.T
        losses.append(F.cross_entropy(logits, ids[:, k:, :].reshape(-1)))
    return torch.stack(losses).mean()


def pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """DeepCluster's and SeLA's objective: cross-entropy with pseudo-labels (label -1: no label, no loss),
    optionally weighted per class and normalised by the weights of the labelled rows."""
    keep = labels >= 0
    if not keep.any():
        return logits.sum() * 0.0
    logits, labels = logits[keep].float(), labels[keep]
    if class_weights is None:
        return F.cross_entropy(logits, labels)
    w = class_weights.float()[labels]
    return (F.cross_entropy(logits, labels, reduction="none") * w).sum() / w.sum().clamp(min=1e-12)


def nnclr_loss(neighbours: torch.Tensor, predictions: torch.Tensor, temperature: float) -> torch.Tensor:
    """NNCLR's contrastive term (Dwibedi et al. 2021, eq. 3): the support-set neighbour NN(z_i) of view one is
    the anchor, the prediction p_i of view two its positive, the other images' predictions its negatives:
    -log exp(nn_i . p_i / t) / sum_k exp(nn_i . p_k / t) over L2-normalised vectors, averaged over i.
    The neighbours come from the queue and get no gradient."""
    a = F.normalize(neighbours.detach().float(), dim=1)
    b = F.normalize(predictions.float(), dim=1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def drlim_loss(z1: torch.Tensor, z2: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """DrLIM's contrastive loss (Hadsell, Chopra & LeCun 2006) on L2-normalised embeddings of two views.

    Similar pairs (the two views of an image) are pulled together by d^2 / 2; dissimilar pairs (views of
    different images in the batch) are pushed apart until their distance reaches `margin`, by
    max(0, margin - d)^2 / 2. Each of the two parts is averaged over its own pairs, so the N^2 - N
    negatives do not drown the N positives.
    """
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    d = torch.cdist(a, b)
    same = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    pull = d[same].pow(2).mean() / 2
    push = F.relu(margin - d[~same]).pow(2).mean() / 2
    return pull + push


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp (Caron et al. 2020): soft codes for B samples over K prototypes.

    Q = exp(scores / epsilon), then alternately scaled so that every prototype receives an equal share
    of the batch (columns sum to B/K) and every sample's code is a distribution (rows sum to 1).
    Under torchrun the batch is the global one: column sums and B are all-reduced over the processes.
    """
    scores = scores.float()
    q = torch.exp((scores - all_reduce(scores.max(), "max")) / epsilon)  # shift: the scalings absorb it
    k = q.shape[1]
    b = all_reduce(torch.tensor(q.shape[0], dtype=q.dtype, device=q.device))
    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=0, keepdim=True)) * k  # each prototype: total mass 1/K
        q /= q.sum(dim=1, keepdim=True) * b  # each sample: total mass 1/B
    return q * b


def cross_view_entropy(targets: list[torch.Tensor], log_probs: list[torch.Tensor]) -> torch.Tensor:
    """-sum p log q averaged over the batch and over every (target view i, predicting view v != i) pair.

    The multi-crop loss shape SwAV and DINO share: targets come from the global views (listed first),
    predictions from every view, and no view predicts its own target.
    """
    total, pairs = 0.0, 0
    for i, p in enumerate(targets):
        for v, log_q in enumerate(log_probs):
            if v != i:
                total = total - (p * log_q).sum(dim=1).mean()
                pairs += 1
    return total / pairs


def swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss: every view predicts the Sinkhorn code of every other global view from its prototype scores.

    `codes[i]` is the code of global view i; `scores[v]` the prototype scores of view v (globals first).
    """
    return cross_view_entropy(codes, [F.log_softmax(s.float() / temperature, dim=1) for s in scores])


class DINOLoss(nn.Module):
    """DINO (Caron et al. 2021): the student matches the centred, sharpened teacher on other crops.

    Teacher probabilities softmax((t - center) / teacher_temp) for the global crops; the student's
    log-softmax(s / student_temp) for every crop; cross-entropy over all (teacher crop, other student
    crop) pairs. The center is an EMA of the teacher's batch mean (a buffer, so it is checkpointed);
    centering with sharpening is what keeps the teacher from collapsing.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], teacher_temp: float) -> torch.Tensor:
        targets = [F.softmax((t.detach().float() - self.center) / teacher_temp, dim=1) for t in teacher]
        loss = cross_view_entropy(targets, [F.log_softmax(s.float() / self.student_temp, dim=1) for s in student])
        if self.training:
            self.update_center(torch.cat(teacher))
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * batch mean of the teacher outputs (of the global batch)."""
        count = all_reduce(torch.tensor(teacher.shape[0], dtype=torch.float32, device=teacher.device))
        mean = all_reduce(teacher.float().sum(dim=0, keepdim=True)) / count
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)


def _matched(za: torch.Tensor, zb: torch.Tensor, distance: torch.Tensor,
             k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every vector of a with its nearest vector of b (by `distance` [B, Na, Nb]); of those, the k pairs with the
    closest match (all when k is None), kept in the order of a's positions: ([B, k, D], [B, k, D])."""
    nearest, idx = distance.min(dim=2)  # [B, Na]: the closest b for every a
    k = nearest.shape[1] if k is None else min(k, nearest.shape[1])
    keep = nearest.topk(k, dim=1, largest=False).indices.sort(dim=1).values  # [B, k], in position order
    a = za.gather(1, keep[..., None].expand(-1, -1, za.shape[2]))
    b = zb.gather(1, idx.gather(1, keep)[..., None].expand(-1, -1, zb.shape[2]))
    return a, b


def vicreg_per_match(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, ...]:
    """VICRegL's local criterion terms for matched vectors x, y [B, k, D] (unweighted): invariance is the MSE
    over everything; variance and covariance are taken per match rank across the batch (the j-th match of
    every image forms one sample), averaged over ranks and over x and y."""
    x, y = x.float(), y.float()
    invariance = F.mse_loss(x, y)
    variance = covariance = 0.0
    for z in (x, y):
        z = z - z.mean(0)
        variance = variance + F.relu(1 - torch.sqrt(z.var(0) + eps)).mean() / 2
        zt = z.transpose(0, 1)  # [k, B, D]
        cov = zt.transpose(1, 2) @ zt / (z.shape[0] - 1)  # [k, D, D]
        off = cov.pow(2).sum(dim=(1, 2)) - torch.diagonal(cov, dim1=1, dim2=2).pow(2).sum(dim=1)
        covariance = covariance + (off / z.shape[2]).mean() / 2
    return invariance, variance, covariance


def vicregl_local_terms(za: torch.Tensor, zb: torch.Tensor, pos_a: torch.Tensor, pos_b: torch.Tensor,
                        matches: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """VICRegL's local terms (Bardes et al. 2022, the authors' main_vicregl.py) between the feature maps of two
    views of each image: `za` [B, Na, D], `zb` [B, Nb, D], `pos_*` [B, N, 2] their source locations.

    Two kinds of matches, each in both directions: by feature distance (every vector to its nearest), and by
    location (the `matches` = (a to b, b to a) closest pairs). Each term is the sum over the two kinds of the
    mean over the two directions.
    """
    za, zb = za.float(), zb.float()
    terms = [0.0, 0.0, 0.0]
    by_feature = torch.cdist(za.detach(), zb.detach())
    by_location = torch.cdist(pos_a.float(), pos_b.float())
    for distance, (k_ab, k_ba) in ((by_feature, (None, None)), (by_location, matches)):
        for x, y, d, k in ((za, zb, distance, k_ab), (zb, za, distance.transpose(1, 2), k_ba)):
            for i, t in enumerate(vicreg_per_match(*_matched(x, y, d, k))):
                terms[i] = terms[i] + t / 2
    return tuple(terms)


def vicregl_global_terms(embeddings: list[torch.Tensor], global_views: int = 2, eps: float = 1e-4
                         ) -> tuple[torch.Tensor, ...]:
    """VICRegL's global terms (the authors' main_vicregl.py): invariance averaged over the pairs (global view
    i, any other view j); variance and covariance (off-diagonal squares / D) averaged over every view."""
    invariance, pairs = 0.0, 0
    for i in range(global_views):
        for j in range(len(embeddings)):
            if j != i:
                invariance, pairs = invariance + F.mse_loss(embeddings[i].float(), embeddings[j].float()), pairs + 1
    variance = covariance = 0.0
    for z in embeddings:
        z = z.float() - z.float().mean(0)
        variance = variance + F.relu(1 - torch.sqrt(z.var(0) + eps)).mean()
        covariance = covariance + _off_diagonal(z.T @ z / (z.shape[0] - 1)).pow(2).sum() / z.shape[1]
    return invariance / pairs, variance / len(embeddings), covariance / len(embeddings)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLRv2's distillation (Chen et al. 2020b, eq. 2): -sum_y P_T(y|x; t) log P_S(y|x; t), batch mean."""
    targets = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return -(targets * F.log_softmax(student_logits.float() / temperature, dim=1)).sum(dim=1).mean()


FEATURE_LOSSES = ("cosine", "smooth_l1")


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine",
                              beta: float = 1.0) -> torch.Tensor:
    """A student's projected features [N, D] against a frozen teacher's [N, D], row by row: `cosine` is the mean of
    1 - cos(student_n, teacher_n) (the direction only); `smooth_l1` the mean over all N x D entries of the smooth-L1
    (Huber) loss with threshold `beta` on the teacher's features as they are (the scale too)."""
    s, t = student.float(), teacher.detach().float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(s, t, beta=beta)
    raise ValueError(f"loss must be one of {', '.join(FEATURE_LOSSES)} (got {kind!r})")


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
             eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction loss (He et al. 2022): the mean squared error per patch, averaged over the masked
    patches only. pred, target [B, L, P] (P = patch pixels x channels), mask [B, L] with 1 = masked. `norm_pix`:
    each target patch is first standardised by its own mean and variance (the paper's better variant)."""
    target = target.float()
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()
