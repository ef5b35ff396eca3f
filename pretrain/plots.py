"""PNG plots of training logs (matplotlib, no display needed)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.atomic import write_with  # noqa: E402

NOT_PLOTTED = {"step", "epoch", "elapsed_s"}


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(csv_path: str | Path, png_path: str | Path) -> None:
    """One panel per logged quantity (loss, loss terms, lr, images/s) against the epoch; raw and smoothed."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = sorted((k for k in rows[0] if k not in NOT_PLOTTED), key=lambda k: k != "loss")  # loss on top
    epochs = [float(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    window = max(1, len(rows) // 50)
    for ax, key in zip(axes[:, 0], keys):
        logged = [(e, float(r[key])) for e, r in zip(epochs, rows) if r[key] != ""]  # some are logged every N steps
        x, values = [e for e, _ in logged], [v for _, v in logged]
        ax.plot(x, values, color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(x, _smooth(values, max(1, window * len(values) // len(rows))), color="tab:blue", linewidth=1.5)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    write_with(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
