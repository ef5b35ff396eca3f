"""Evaluation on frozen features: weighted kNN and the linear probe; the accuracy of a model's classifier.

Protocols (documented so numbers are comparable):
- kNN: cosine similarity on L2-normalised features; the k nearest training images vote for their
  class with weight exp(similarity / T); k=200, T=0.1 by default (InstDisc, DINO, lightly).
- Linear probe: features are computed once (no augmentation) and standardised; a linear layer is
  trained on them with a cosine schedule; the standardisation is folded into the saved head, so the
  head applies to raw backbone features.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pretrain.data.datasets import EvalDataset
from pretrain.data.heap import keep_heap
from pretrain.data.images import DataError, ImageList
from pretrain.ground.atomic import write_with
from pretrain.ground.knn import knn_vote, topk_accuracy
from pretrain.ground.modeldir import ModelDir
from pretrain.ground.preprocess import Preprocessing


@dataclass
class Features:
    """Features of an ImageList (rows of images that failed to decode are dropped)."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64, -1 when unlabelled
    failed: int = 0


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@torch.no_grad()
def extract_features(backbone: nn.Module, images: ImageList, preprocessing: Preprocessing, *,
                     batch_size: int = 256, workers: int | None = None, device: str | torch.device = "cpu",
                     desc: str = "embedding", progress: bool = True) -> Features:
    """Run the backbone in eval mode over `images` with the inference preprocessing."""
    device = torch.device(device)
    dataset = EvalDataset(images, preprocessing)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator(),  # evaluation must not consume the training RNG
                        worker_init_fn=keep_heap)
    was_training = backbone.training
    backbone.eval()
    feats, labels, oks = [], [], []
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False)
    for x, y, ok in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().cpu())  # fp32 everywhere: an embedding must not depend on the device
        labels.append(y)
        oks.append(ok)
        bar.update(len(y))
    bar.close()
    backbone.train(was_training)
    ok = torch.cat(oks)
    failed = int((~ok).sum())
    if failed:
        first = images.paths[int((~ok).nonzero()[0])]
        warnings.warn(f"{images.root}: {failed} images failed to decode and were left out (first: {first})",
                      stacklevel=2)
    return Features(torch.cat(feats)[ok], torch.cat(labels)[ok], failed=failed)


def cached_features(model_dir: ModelDir, images: ImageList, **kwargs) -> Features:
    """`extract_features` for a model dir's backbone, cached in <model dir>/cache/ by fingerprint and file list.

    The key covers the weights' fingerprint, the preprocessing and every file's path, size and
    modification time, so a changed model or folder never reuses stale features.
    """
    h = hashlib.sha256(json.dumps([model_dir.fingerprint, model_dir.info["preprocessing"]]).encode())
    for p in images.paths:
        st = p.stat()
        h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())  # names need not be UTF-8
    cache = model_dir.path / "cache" / f"features-{h.hexdigest()[:20]}.pt"
    if cache.is_file():
        cached = read_cached_features(cache, len(images))
        if cached is not None:
            return cached
    device = kwargs.pop("device", "cpu")
    out = extract_features(model_dir.load_backbone(device), images, model_dir.preprocessing, device=device, **kwargs)
    write_with(cache, lambda tmp: torch.save({"features": out.features, "labels": out.labels,
                                              "failed": out.failed}, tmp))
    return out


def read_cached_features(cache: Path, count: int) -> Features | None:
    """A features cache file, loaded with weights_only (tensors and plain values, no code); None, after one warning
    line, when it is not one this code wrote for `count` images (it is then recomputed and overwritten)."""
    try:
        d = torch.load(cache, weights_only=True)
        feats, labels, failed = d["features"], d["labels"], int(d["failed"])
        ok = (isinstance(feats, torch.Tensor) and isinstance(labels, torch.Tensor) and feats.ndim == 2
              and feats.is_floating_point() and labels.ndim == 1 and len(feats) == len(labels) == count - failed
              and 0 <= failed <= count and not labels.is_floating_point())
    except Exception as e:  # noqa: BLE001 - an unpickling error of any kind: the file is not ours
        ok, reason = False, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
    else:
        reason = "not the features of these images"
    if not ok:
        warnings.warn(f"{cache}: not a readable features cache ({reason}); recomputing the features", stacklevel=3)
        return None
    return Features(feats, labels, failed)


@torch.no_grad()
def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor, *,
               num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Q, C) of a weighted kNN vote: sum over the k nearest of exp(cosine / T).

    The vote itself is `pretrain.ground.knn.knn_vote`, the one implementation for this evaluation and for
    `sslforge index classify`.
    """
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        q = F.normalize(query_feats[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        out.append(torch.from_numpy(knn_vote(sim.cpu().numpy(), train_labels[idx].cpu().numpy(), num_classes,
                                             temperature)))
    return torch.cat(out)


def knn_evaluate(train: Features, test: Features, num_classes: int, k: int = 200,
                 temperature: float = 0.1) -> dict[str, float]:
    """Top-1/top-5 accuracy of the weighted kNN classifier of `test` against the `train` bank."""
    scores = knn_scores(train.features, train.labels, test.features, num_classes=num_classes, k=k,
                        temperature=temperature)
    return topk_accuracy(scores.numpy(), test.labels.numpy())


@dataclass
class LinearProbeResult:
    head: nn.Linear  # applies to raw (unstandardised) backbone features
    metrics: dict[str, float]
    history: list[dict[str, float]]


def linear_probe(train: Features, test: Features, num_classes: int, *, epochs: int = 100, batch_size: int = 256,
                 lr: float = 0.1, weight_decay: float = 0.0, optimizer: str = "sgd", seed: int = 0,
                 progress: bool = True) -> LinearProbeResult:
    """Train a linear classifier on frozen (cached) features with a cosine schedule; report test top-1/top-5.

    `optimizer`: "sgd" (momentum 0.9, mini-batches), "adamw" (mini-batches) or "lbfgs" (full batch).
    """
    g = torch.Generator().manual_seed(seed)
    mean = train.features.mean(0)
    std = train.features.std(0).clamp_min(1e-6)
    x = (train.features - mean) / std
    y = train.labels
    layer = nn.Linear(x.shape[1], num_classes)
    torch.manual_seed(seed)
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.zeros_(layer.bias)
    history: list[dict[str, float]] = []
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(layer(x), y) + weight_decay * layer.weight.pow(2).sum() / 2
            loss.backward()
            return loss

        history.append({"epoch": epochs, "loss": float(opt.step(closure).detach())})
    else:
        if optimizer == "sgd":
            opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        elif optimizer == "adamw":
            opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be sgd, adamw or lbfgs (got {optimizer!r})")
        steps_per_epoch = math.ceil(len(y) / batch_size)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        for epoch in tqdm(range(epochs), desc="linear probe", unit="epoch", disable=not progress, leave=False):
            order = torch.randperm(len(y), generator=g)
            running = 0.0
            for start in range(0, len(y), batch_size):
                idx = order[start:start + batch_size]
                loss = F.cross_entropy(layer(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach()) * len(idx)
            history.append({"epoch": epoch + 1, "loss": running / len(y)})
    head = fold_standardization(layer, mean, std)
    with torch.no_grad():
        metrics = topk_accuracy(head(test.features).numpy(), test.labels.numpy())
    return LinearProbeResult(head, metrics, history)


def fold_standardization(layer: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """W((x - m) / s) + b  ==  (W / s) x + (b - W (m / s)): one Linear on raw features."""
    head = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        head.weight.copy_(layer.weight / std)
        head.bias.copy_(layer.bias - layer.weight @ (mean / std))
    return head.eval()


def classifier_accuracy(network: nn.Module, head: nn.Linear, images: ImageList, preprocessing: Preprocessing,
                        **kwargs) -> dict[str, float]:
    """Top-1/top-5 of `head` on `network`'s features of the labelled `images` (a fine-tuned, probed or distilled
    classifier), with the inference preprocessing; `kwargs` go to `extract_features`."""
    logits = extract_features(nn.Sequential(network, head), images, preprocessing, **kwargs)
    return {**topk_accuracy(logits.features.numpy(), logits.labels.numpy()), "images": len(logits.labels)}


def class_count(*lists: ImageList) -> int:
    classes = lists[0].classes
    if classes is None:
        raise DataError(f"{lists[0].root} has no class sub-folders: evaluation needs labelled images")
    for other in lists[1:]:
        if other.classes != classes:
            raise DataError(f"{other.root} and {lists[0].root} have different class folders "
                             f"({len(other.classes or [])} vs {len(classes)}): evaluate on matching splits")
    return len(classes)

