"""PNG plots of benchmark grids and embeddings (matplotlib, no display needed); a run's own loss plot is in
pretrain/train/runlog.py."""
from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.train.runlog import save_png, smooth  # noqa: E402


def _read_curve(csv_path: Path, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged quantity; empty when the run never logged it."""
    if not Path(csv_path).is_file():
        return [], []
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key) not in (None, "")]
    return [float(r["step"]) for r in rows], [float(r[key]) for r in rows]


def _smoothed(values: list[float]) -> list[float]:
    return smooth(values, max(1, len(values) // 20))


def plot_loss_curves(runs: list[tuple[str, str, Path]], png_path: str | Path, title: str = "") -> bool:
    """Benchmark loss curves: one panel per method (losses of different methods do not share a scale), one
    line per pipeline; smoothed. `runs` is (method, transform, metrics.csv). False when nothing was logged."""
    methods = list(dict.fromkeys(m for m, _, _ in runs))
    if not methods:
        return False
    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        for _, transform, path in (r for r in runs if r[0] == method):
            steps, loss = _read_curve(path, "loss")
            ax.plot(steps, _smoothed(loss), label=transform, linewidth=1.3)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, png_path)
    return True


VICREG_TERMS = ("invariance", "variance", "covariance")


def plot_term_curves(runs: list[tuple[str, str, Path]], png_path: str | Path, title: str = "") -> bool:
    """VICReg / VICRegL loss terms (invariance, variance, covariance), one panel each, one line per run that
    logged them; False (no file) when no run did."""
    curves = [(f"{m} x {t}", {k: _read_curve(p, k) for k in VICREG_TERMS}) for m, t, p in runs]
    curves = [(label, c) for label, c in curves if all(c[k][0] for k in VICREG_TERMS)]
    if not curves:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), squeeze=False)
    for ax, term in zip(axes[0], VICREG_TERMS):
        for label, c in curves:
            ax.plot(c[term][0], _smoothed(c[term][1]), label=label, linewidth=1.3)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, png_path)
    return True


def plot_accuracy_vs_time(rows: list[dict], png_path: str | Path, title: str = "") -> bool:
    """Accuracy (linear top-1, else kNN top-1) against pretraining minutes, one point per cell: colour = method,
    marker = pipeline."""
    metric = "linear_top1" if any(r.get("linear_top1") is not None for r in rows) else "knn_top1"
    rows = [r for r in rows if r.get(metric) is not None]
    if not rows:
        return False
    methods = list(dict.fromkeys(r["method"] for r in rows))
    transforms = list(dict.fromkeys(r["transform"] for r in rows))
    markers = "osD^v<>phX*"
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["pretrain_min"], r[metric], color=colours(methods.index(r["method"]) % 10),
                   marker=markers[transforms.index(r["transform"]) % len(markers)], s=45)
    for i, m in enumerate(methods):
        ax.scatter([], [], color=colours(i % 10), marker="o", label=m)
    for i, t in enumerate(transforms):
        ax.scatter([], [], color="grey", marker=markers[i % len(markers)], label=t)
    ax.set_xlabel("pretraining time (min)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    save_png(fig, png_path)
    return True


def plot_embedding_2d(points, labels, classes: list[str] | None, png_path: str | Path, title: str = "") -> None:
    """A 2-d projection of embeddings (t-SNE), one colour per class, with a legend."""
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10" if len(classes or []) <= 10 else "tab20")
    for c in sorted(set(int(v) for v in labels)):
        mask = labels == c
        name = classes[c] if classes and c >= 0 else ("unlabelled" if c < 0 else str(c))
        ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colours(c % colours.N), label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=10)  # a long folder path ran off the figure
    if len(set(int(v) for v in labels)) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    save_png(fig, png_path)
