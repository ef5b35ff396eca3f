"""The run's own log: per-step rows in metrics.csv and TensorBoard, online evaluation rows in eval.csv, and
the loss plot (plots/loss.png) drawn from metrics.csv when training ends.

Shared by the pretraining and fine-tuning trainers (pretrain/train/trainer.py, pretrain/finetune/run.py).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from pretrain.ground.atomic import write_with

NOT_PLOTTED = {"step", "epoch", "elapsed_s"}


class MetricsLog:
    """Per-step rows in metrics.csv (plottable) and TensorBoard; on resume, rows after the checkpoint go."""

    def __init__(self, folder: Path, resume_step: int):
        self.path = folder / "metrics.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            write_with(self.path, lambda tmp: _write_csv(tmp, self.fields, rows))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(folder / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row)
            _write_csv(self.path, self.fields, [])
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        for key, value in row.items():
            if key != "step":
                self.tb.add_scalar(f"train/{key}", value, int(row["step"]))

    def close(self) -> None:
        self.tb.close()


class PendingRows:
    """Rows of steps whose values (the loss, the collapse statistics) are still tensors on the device: `read()`
    turns every pending value into a float at once, one host sync for all the steps since the last read."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def read(self) -> list[dict[str, float]]:
        rows, self.rows = self.rows, []
        by_dtype: dict[torch.dtype, list[tuple[int, str, torch.Tensor]]] = {}
        for i, row in enumerate(rows):
            for k, v in row.items():
                if isinstance(v, torch.Tensor):
                    by_dtype.setdefault(v.dtype, []).append((i, k, v))
        for group in by_dtype.values():  # each value read exactly as float(tensor) would read it
            values = torch.stack([v.detach().reshape(()) for _, _, v in group]).tolist()
            for (i, k, _), value in zip(group, values):
                rows[i][k] = float(value)
        return rows


def _write_csv(path: Path, fields: list[str] | None, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields or [])
        writer.writeheader()
        writer.writerows(rows)


def append_eval_row(folder: Path, result: dict, log: MetricsLog, name: str) -> None:
    """One row of an online evaluation in eval.csv, and its top-1/top-5 in TensorBoard as eval/NAME_top1, ..."""
    path = folder / "eval.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, list(result))
        if new:
            writer.writeheader()
        writer.writerow(result)
    for k in ("top1", "top5"):
        log.tb.add_scalar(f"eval/{name}_{k}", result[k], result["step"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: list[float], window: int) -> list[float]:
    """Running mean over the last `window` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def save_png(fig, png_path: str | Path) -> None:
    """Write a matplotlib figure atomically as PNG and close it."""
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    write_with(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    _pyplot().close(fig)


def plot_metrics(csv_path: str | Path, png_path: str | Path) -> None:
    """One panel per logged quantity (loss, loss terms, lr, images/s) against the epoch; raw and smoothed."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = sorted((k for k in rows[0] if k not in NOT_PLOTTED), key=lambda k: k != "loss")  # loss on top
    epochs = [float(r["epoch"]) for r in rows]
    fig, axes = _pyplot().subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    window = max(1, len(rows) // 50)
    for ax, key in zip(axes[:, 0], keys):
        logged = [(e, float(r[key])) for e, r in zip(epochs, rows) if r[key] != ""]  # some are logged every N steps
        x, values = [e for e, _ in logged], [v for _, v in logged]
        ax.plot(x, values, color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(x, smooth(values, max(1, window * len(values) // len(rows))), color="tab:blue", linewidth=1.5)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    save_png(fig, png_path)
