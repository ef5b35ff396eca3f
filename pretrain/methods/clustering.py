"""Clustering a whole dataset's features for the pseudo-label methods: k-means with DeepCluster's fixes, and
SeLA's equal-size self-labelling. Pure functions of tensors (and a generator), checked against plain loops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pca_whiten(x: torch.Tensor, dim: int, eps: float = 1e-5) -> torch.Tensor:
    """DeepCluster's preprocessing: centre, project on the top `dim` principal directions, whiten, L2-normalise."""
    x = x.float() - x.float().mean(dim=0)
    dim = min(dim, x.shape[1], x.shape[0])
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    y = x @ v[:dim].T / (s[:dim] / (x.shape[0] - 1) ** 0.5 + eps)
    return F.normalize(y, dim=1)


def fix_empty(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
              noise: float = 1e-4) -> tuple[torch.Tensor, int]:
    """DeepCluster's empty-cluster fix (Caron et al. 2018, sec. 3.3): each empty cluster takes the centroid of a
    non-empty one (drawn with probability proportional to its size) plus a small perturbation, and the two
    share that cluster's points by nearest centroid. Returns the new centroids and how many were empty."""
    k = centroids.shape[0]
    centroids = centroids.clone()
    fixed = 0
    for empty in range(k):
        counts = torch.bincount(labels, minlength=k)
        if counts[empty]:
            continue
        donor = int(torch.multinomial(counts.float(), 1, generator=generator))
        shift = noise * torch.randn(centroids.shape[1], generator=generator)
        centroids[empty], centroids[donor] = centroids[donor] + shift, centroids[donor] - shift
        members = (labels == donor).nonzero().squeeze(1)
        pair = torch.stack([centroids[donor], centroids[empty]])
        nearer = torch.cdist(x[members], pair).argmin(dim=1)
        labels[members[nearer == 1]] = empty
        fixed += 1
    return centroids, fixed


def kmeans(x: torch.Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd's k-means on the rows of `x` from k distinct random rows: (centroids, labels, empty clusters fixed).
    After every assignment, empty clusters are fixed as DeepCluster does (`fix_empty`), so none is left."""
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means: k must be between 1 and the {x.shape[0]} points (got {k})")
    generator = generator or torch.Generator().manual_seed(0)
    x = x.float()
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    fixed = 0
    for _ in range(iterations):
        labels = torch.cdist(x, centroids).argmin(dim=1)
        centroids, n = fix_empty(x, centroids, labels, generator)
        fixed += n
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    labels = torch.cdist(x, centroids).argmin(dim=1)
    centroids, n = fix_empty(x, centroids, labels, generator)
    return centroids, labels, fixed + n


def balance_weights(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster loss weights inversely proportional to cluster size, mean 1 over the points: DeepCluster's
    sampling uniform over the clusters, as weights (so the sampler, shared by every method, is left alone)."""
    counts = torch.bincount(labels, minlength=k).float()
    weights = torch.where(counts > 0, labels.numel() / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights


def sela_assign(logits: torch.Tensor, lam: float = 25.0, iterations: int = 100) -> torch.Tensor:
    """SeLA's self-labelling (Asano et al. 2020): the N x K assignment Q maximising <Q, log softmax(logits)> +
    entropy / lam with every cluster holding N / K points, by Sinkhorn-Knopp on P^lam; then each point takes
    the cluster of its largest Q under the equal-size constraint (`balanced_argmax`). Returns labels (N,)."""
    n, k = logits.shape
    log_q = lam * F.log_softmax(logits.float(), dim=1)
    log_q = log_q - log_q.max()
    for _ in range(iterations):  # in log space: rows sum to 1/N, columns to 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - torch.log(torch.tensor(float(k)))
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - torch.log(torch.tensor(float(n)))
    return balanced_argmax(log_q, -(-n // k))


def balanced_argmax(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """Each row's highest-scoring column, no column taking more than `capacity` rows: over-full columns keep
    their best rows and the others move on to their next best column, until every row is placed."""
    n, k = scores.shape
    if capacity * k < n:
        raise ValueError(f"{k} columns of capacity {capacity} cannot hold {n} rows")
    scores = scores.clone().float()
    labels = torch.full((n,), -1, dtype=torch.long)
    free = torch.full((k,), capacity, dtype=torch.long)
    while (labels < 0).any():
        todo = (labels < 0).nonzero().squeeze(1)
        best = scores[todo].argmax(dim=1)
        for c in best.unique().tolist():
            rows = todo[best == c]
            take = rows[scores[rows, c].argsort(descending=True)[:int(free[c])]]
            labels[take] = c
            free[c] -= len(take)
            if free[c] == 0:
                scores[:, c] = float("-inf")
            scores[rows[~torch.isin(rows, take)], c] = float("-inf")
    return labels
