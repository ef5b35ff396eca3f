"""The benchmark's results: results.csv (one row per cell, every field) and results.md (the seed's tables).

results.md holds one section per dataset and one table per accuracy (linear top-1, linear top-5,
kNN top-1, and fine-tuned top-1 when the grid fine-tunes): rows are methods, columns are pipelines, a cell
reads "acc (min / memory)" like the seed's "0.705 (123.8Min/11.1Go)", with the best cell of each row in
bold. `parse_markdown` reads the tables back (the tests check they agree with the CSV).
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Protocol

from pretrain.ground.atomic import write_text

RESULT_FILE = "result.json"  # what a finished cell leaves in its folder (pretrain/study/cell.py writes it)


class Grid(Protocol):
    """What the tables read of a grid (pretrain.study.grid.Grid, which imports this module)."""

    out: Any
    backbone: str
    epochs: int
    method_epochs: dict
    batch_size: int
    image_size: int | None
    pretrain: dict
    methods: list
    transforms: list
    eval: tuple
    datasets: list

    def cells(self) -> list: ...

FIELDS = ["dataset", "method", "transform", "status", "linear_top1", "linear_top5", "knn_top1", "knn_top5",
          "finetune_top1", "finetune_top5", "pretrain_min", "images_per_s", "peak_memory_mb", "memory_kind", "device",
          "steps", "train_images", "test_images", "last_loss", "eval_min", "model_dir", "reason"]
NUMERIC = {"linear_top1", "linear_top5", "knn_top1", "knn_top5", "finetune_top1", "finetune_top5", "pretrain_min",
           "images_per_s", "peak_memory_mb", "steps", "train_images", "test_images", "last_loss", "eval_min"}
TABLES = {"linear_top1": "linear probe, top-1", "linear_top5": "linear probe, top-5", "knn_top1": "kNN, top-1",
          "finetune_top1": "fine-tuned, top-1"}
CELL = re.compile(r"^(\*\*)?(?P<acc>[0-9.]+) \((?P<min>[0-9.]+) min / (?P<mem>[0-9.]+) (?P<unit>GB|MB)"
                  r" (?P<kind>gpu|rss)\)(\*\*)?$")


def collect(grid: Grid) -> list[dict]:
    """The result.json of every finished cell, in grid order (its model dir: where the cell is now)."""
    rows = []
    for cell in grid.cells():
        path = cell.out / RESULT_FILE
        if path.is_file():
            rows.append({**{k: json.loads(path.read_text()).get(k) for k in FIELDS}, "model_dir": str(cell.out)})
    return rows


def write_results(grid: Grid) -> list[dict]:
    rows = collect(grid)
    out = Path(grid.out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.md", render_markdown(rows, grid))
    return rows


def read_results(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (float(v) if k in NUMERIC and v != "" else (None if v == "" else v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def format_cell(row: dict, metric: str) -> str:
    mem = row["peak_memory_mb"]
    memory = f"{mem / 1024:.2f} GB" if mem >= 1024 else f"{mem:.0f} MB"
    return f"{row[metric]:.3f} ({row['pretrain_min']:.2f} min / {memory} {row['memory_kind']})"


def render_markdown(rows: list[dict], grid: Grid) -> str:
    others = ", ".join(f"{m} {e}" for m, e in grid.method_epochs.items())
    epochs = f"{grid.epochs} ({others})" if others else f"{grid.epochs}"
    lines = ["# Benchmark results", "",
             f"Backbone {grid.backbone}, epochs {epochs}, batch {grid.batch_size}, image size "
             f"{grid.image_size or 'auto'}; extra pretraining options: {grid.pretrain or 'none'}. A cell is "
             "\"accuracy (pretraining minutes / peak memory)\": peak GPU memory allocated (gpu) or the training "
             "process's peak RSS (rss). Best of each row in bold; n/a: not run (reasons below).", ""]
    methods = [m.label for m in grid.methods]
    transforms = [t.label for t in grid.transforms]
    metrics = [m for m in TABLES if m.split("_")[0] in grid.eval]
    for d in grid.datasets:
        mine = {(r["method"], r["transform"]): r for r in rows if r["dataset"] == d.name}
        lines += [f"## {d.name}", "", f"Train {d.train}, test {d.test}.", ""]
        for metric in metrics:
            lines += [f"### {TABLES[metric]}", "", "| method | " + " | ".join(transforms) + " |",
                      "|---|" + "---|" * len(transforms)]
            for m in methods:
                ok = {t: mine[(m, t)] for t in transforms if (m, t) in mine and mine[(m, t)]["status"] == "ok"}
                best = max((r[metric] for r in ok.values()), default=None)
                cells = []
                for t in transforms:
                    if t not in ok:
                        cells.append("n/a" if (m, t) in mine else "")
                        continue
                    text = format_cell(ok[t], metric)
                    cells.append(f"**{text}**" if ok[t][metric] == best else text)
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
        not_run = [r for r in mine.values() if r["status"] != "ok"]
        if not_run:
            lines += ["Not run:", ""] + [f"- {r['method']} x {r['transform']}: {r['status']}: {r['reason']}"
                                         for r in not_run] + [""]
    return "\n".join(lines)


def parse_markdown(text: str) -> list[dict]:
    """Read results.md's tables back: one dict per filled cell (dataset, metric, method, transform, accuracy,
    pretrain_min, peak_memory_mb, memory_kind, best)."""
    out: list[dict] = []
    dataset = metric = None
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            dataset = line[3:].strip()
        elif line.startswith("### "):
            metric = next(k for k, v in TABLES.items() if v == line[4:].strip())
        elif line.startswith("| method |"):
            header = [c.strip() for c in line.strip("|").split("|")][1:]
        elif line.startswith("| ") and not line.startswith("|---"):
            method, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
            for transform, cell in zip(header, cells):
                match = CELL.match(cell)
                if not match:
                    continue
                mem = float(match["mem"]) * (1024 if match["unit"] == "GB" else 1)
                out.append({"dataset": dataset, "metric": metric, "method": method, "transform": transform,
                            "accuracy": float(match["acc"]), "pretrain_min": float(match["min"]),
                            "peak_memory_mb": mem, "memory_kind": match["kind"], "best": cell.startswith("**")})
    return out
