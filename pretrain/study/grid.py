"""`sslforge benchmark`: a grid of methods x augmentation pipelines x datasets, the study of the seed.

Every cell is an ordinary pretraining run (its own model dir under OUT/DATASET/CELL) followed by the
evaluations (kNN and linear probe on frozen features; optionally fine-tuning, `eval: [..., finetune]`, whose run
goes to OUT/DATASET/CELL/finetune). A cell runs in its own process, so its peak
memory (CUDA `max_memory_allocated`, or the peak RSS on CPU, from model.json) is its own, and several
GPUs can each take one cell at a time. A cell is finished once its `result.json` exists; running the
same grid again skips finished cells, evaluates trained ones and resumes the interrupted one from its
checkpoint. After each cell, OUT/results.csv and OUT/results.md are rewritten atomically.

Grid file (YAML; command-line options override it):

    methods: [simclr, byol, "vicregl:alpha=0.75"]   # NAME or NAME:KEY=VALUE[:KEY=VALUE]
    transforms: [baseline, simclr, "dcl:k=2"]
    datasets: [{name: cifar10, train: data/train, test: data/test}]
    backbone: resnet18
    epochs: 1
    method_epochs: {byol: 2}                          # a slow starter's longer budget (by name or label)
    batch_size: 64
    image_size: 32
    eval: [linear, knn]                               # and finetune, to fine-tune every cell too
    out: bench/cifar
    pretrain: {max_images: 2000, small_stem: false}    # any other `sslforge pretrain` option
    linear: {epochs: 100, lr: 0.1}                    # options of `sslforge eval linear`
    knn: {k: 200, temperature: 0.1}
    finetune: {label_fraction: 0.1, epochs: 30}       # options of `sslforge eval finetune`
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pretrain.ground.atomic import write_json
from pretrain.ground.errors import ConfigError
from pretrain.study.report import RESULT_FILE, read_results, write_results
from pretrain.train.config import PretrainConfig, load_yaml

EVALS = ("linear", "knn", "finetune")
DEFAULT_EVALS = ("linear", "knn")  # fine-tuning trains again: asked for by name
FINETUNE_DEFAULTS = {"label_fraction": 0.1, "epochs": 30}  # SimCLRv2's 10% schedule; any FinetuneConfig field
# FinetuneConfig fields the cell sets itself (the model is the cell's, the data the dataset's).
FINETUNE_OWNED = {"model", "from_scratch", "train", "test", "out", "backbone", "backbone_args", "small_stem",
                  "image_size", "seed", "workers", "device"}
LINEAR_DEFAULTS = {"epochs": 100, "lr": 0.1, "weight_decay": 0.0, "optimizer": "sgd", "batch_size": 256}
KNN_DEFAULTS = {"k": 200, "temperature": 0.1}
CELL_FILE = "cell.json"
# PretrainConfig fields the grid sets itself; `pretrain:` may not override them.
GRID_OWNED = {"method", "method_args", "transform", "transform_args", "data", "out", "backbone", "epochs",
              "batch_size", "image_size", "seed"}


@dataclass(frozen=True)
class Variant:
    """A method or a pipeline with options: `vicregl:alpha=0.75` -> ("vicregl", {"alpha": 0.75})."""

    name: str
    args: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.args.items())])

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in self.label.replace(":", "_"))

    @classmethod
    def parse(cls, item: Any, what: str) -> "Variant":
        if isinstance(item, dict):  # YAML form {name: vicregl, args: {alpha: 0.75}}
            unknown = set(item) - {"name", "args"}
            if "name" not in item or unknown or not isinstance(item.get("args", {}), dict):
                raise ConfigError(f"{what} entry {item!r} must be NAME, NAME:KEY=VALUE or {{name: NAME, args: {{}}}}")
            return cls(str(item["name"]), dict(item.get("args") or {}))
        name, *pairs = str(item).strip().split(":")
        args: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{what} {item!r}: options are written NAME:KEY=VALUE[:KEY=VALUE] (got {pair!r})")
            args[key.strip().replace("-", "_")] = yaml.safe_load(raw)
        if not name:
            raise ConfigError(f"{what} {item!r} has no name")
        return cls(name, args)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    train: str
    test: str


@dataclass
class Grid:
    methods: list[Variant]
    transforms: list[Variant]
    datasets: list[DatasetSpec]
    out: str
    backbone: str = "resnet18"
    epochs: int = 1
    method_epochs: dict = field(default_factory=dict)  # method name or label -> its epochs instead of `epochs`
    batch_size: int = 64
    image_size: int | None = None
    seed: int = 0
    eval: list[str] = field(default_factory=lambda: list(DEFAULT_EVALS))
    pretrain: dict = field(default_factory=dict)
    linear: dict = field(default_factory=dict)
    knn: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "grid") -> "Grid":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items() if v is not None}
        for key in values:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(f"{source}: unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        for key in ("methods", "transforms", "datasets", "out"):
            if not values.get(key):
                raise ConfigError(f"{source}: '{key}' is missing (give --{key.rstrip('s')}s or a grid file with it)"
                                  if key != "out" else f"{source}: 'out' is missing: give --out DIR")
        values["methods"] = [Variant.parse(m, "method") for m in _as_list(values["methods"])]
        values["transforms"] = [Variant.parse(t, "transform") for t in _as_list(values["transforms"])]
        values["datasets"] = [_dataset(d, source) for d in _as_list(values["datasets"])]
        values["eval"] = _as_list(values.get("eval", list(DEFAULT_EVALS)))
        grid = cls(**values)
        grid.validate(source)
        return grid

    def validate(self, source: str) -> None:
        from pretrain.methods import method_hparams
        from pretrain.views.recipes import TRANSFORMS

        for m in self.methods:
            method_hparams(m.name, m.args)
        known = {m.name for m in self.methods} | {m.label for m in self.methods}
        for key, epochs in self.method_epochs.items():
            if key not in known:
                raise ConfigError(f"{source}: method_epochs: {key!r} is not one of the grid's methods "
                                  f"({', '.join(m.label for m in self.methods)})")
            if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
                raise ConfigError(f"{source}: method_epochs: {key}: epochs must be a whole number >= 1 "
                                  f"(got {epochs!r})")
        for t in self.transforms:
            if t.name not in TRANSFORMS:
                raise ConfigError(f"{source}: transform must be one of {', '.join(TRANSFORMS)} (got {t.name!r})")
        bad = [e for e in self.eval if e not in EVALS]
        if bad:
            raise ConfigError(f"{source}: eval must be a list of {', '.join(EVALS)} (got {bad[0]!r})")
        owned = sorted(GRID_OWNED & set(self.pretrain))
        if owned:
            raise ConfigError(f"{source}: pretrain: {owned[0]} is set by the grid itself; use its own key")
        for name, given, defaults in (("linear", self.linear, LINEAR_DEFAULTS), ("knn", self.knn, KNN_DEFAULTS)):
            unknown = sorted(set(given) - set(defaults))
            if unknown:
                raise ConfigError(f"{source}: {name}: unknown option {unknown[0]!r}; options: {', '.join(defaults)}")
        from pretrain.train.config import FinetuneConfig

        tunable = sorted({f.name for f in FinetuneConfig.fields()} - FINETUNE_OWNED)
        unknown = sorted(set(self.finetune) - set(tunable))
        if unknown:
            raise ConfigError(f"{source}: finetune: unknown option {unknown[0]!r}; options: {', '.join(tunable)}")
        FinetuneConfig.from_dict(self.finetune_settings, source=f"{source}: finetune")
        for d in self.datasets:
            for folder in (d.train, d.test):
                if not Path(folder).is_dir():
                    raise ConfigError(f"{source}: dataset {d.name}: folder {folder} does not exist")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: dataset names must differ (got {', '.join(names)})")
        for labels, what in (([m.label for m in self.methods], "methods"), ([t.label for t in self.transforms],
                                                                            "transforms")):
            if len(set(labels)) != len(labels):
                raise ConfigError(f"{source}: {what} are listed twice ({', '.join(labels)})")
        self.cells()[0].pretrain_config(self)  # checks the `pretrain:` options once, before any work

    def epochs_of(self, method: Variant) -> int:
        """The method's budget: its `method_epochs` entry (by label, then by name), else the grid's `epochs`."""
        return self.method_epochs.get(method.label, self.method_epochs.get(method.name, self.epochs))

    def cells(self) -> list["Cell"]:
        return [Cell(d, m, t, Path(self.out) / d.name / f"{m.slug}__{t.slug}")
                for d in self.datasets for m in self.methods for t in self.transforms]

    @property
    def eval_settings(self) -> dict:
        settings = {"eval": list(self.eval), "linear": {**LINEAR_DEFAULTS, **self.linear},
                    "knn": {**KNN_DEFAULTS, **self.knn}}
        if "finetune" in self.eval:  # only then: grids run before fine-tuning existed keep their cell.json
            settings["finetune"] = self.finetune_settings
        return settings

    @property
    def finetune_settings(self) -> dict:
        defaults = dict(FINETUNE_DEFAULTS)
        if "labels_per_class" in self.finetune:  # a number per class instead of the default fraction
            defaults.pop("label_fraction")
        return {**defaults, **self.finetune}


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        return [v for v in value.split(",") if v.strip()]
    return list(value)


def _dataset(item: Any, source: str) -> DatasetSpec:
    if not isinstance(item, dict) or not {"train", "test"} <= set(item) or set(item) - {"name", "train", "test"}:
        raise ConfigError(f"{source}: a dataset is {{name: NAME, train: DIR, test: DIR}} (got {item!r})")
    return DatasetSpec(str(item.get("name") or dataset_name(item["train"])), str(item["train"]), str(item["test"]))


def dataset_name(train: str) -> str:
    """A readable name for a dataset given by its train folder: data/cifar10/train -> cifar10."""
    path = Path(train).resolve()
    return path.parent.name if path.name in ("train", "training") else path.name


def load_grid_file(path: str | os.PathLike) -> dict[str, Any]:
    return load_yaml(path)


@dataclass(frozen=True)
class Cell:
    dataset: DatasetSpec
    method: Variant
    transform: Variant
    out: Path

    @property
    def name(self) -> str:
        return f"{self.method.label} x {self.transform.label} on {self.dataset.name}"

    def pretrain_config(self, grid: Grid) -> PretrainConfig:
        values = {**grid.pretrain, "method": self.method.name, "method_args": dict(self.method.args),
                  "transform": self.transform.name, "transform_args": dict(self.transform.args),
                  "data": self.dataset.train, "out": str(self.out), "backbone": grid.backbone,
                  "epochs": grid.epochs_of(self.method), "batch_size": grid.batch_size, "image_size": grid.image_size,
                  "seed": grid.seed}
        return PretrainConfig.from_dict(values, source=f"grid cell {self.name}")

    def spec(self, grid: Grid) -> dict:
        """Everything that defines the cell's numbers: saved as cell.json, compared on a re-run."""
        return {"dataset": dataclasses.asdict(self.dataset), "method": self.method.label,
                "transform": self.transform.label, "pretrain": self.pretrain_config(grid).to_dict(),
                **grid.eval_settings}

    def state(self) -> str:
        if (self.out / RESULT_FILE).is_file():
            return "done"
        if (self.out / "model.json").is_file():
            return "trained"
        if (self.out / "checkpoint.pt").is_file():
            return "partial"
        return "new"


def prepare_cell(cell: Cell, grid: Grid) -> None:
    """Write cell.json, or check that an earlier run of this cell used the same settings. Where the cell lives is
    not a setting: a cell folder moved or copied into another grid's folder is taken as it is (its record follows)."""
    spec = json.loads(json.dumps(cell.spec(grid)))
    path = cell.out / CELL_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old == spec:
            return
        moved = {**old, "pretrain": {**old.get("pretrain", {}), "out": spec["pretrain"]["out"]}}
        if moved != spec:
            key = next((k for k in spec if moved.get(k) != spec[k]), "settings")
            raise ConfigError(f"{path}: this cell was run with other {key} settings; use another --out, or delete "
                              f"{cell.out} to run it again")
    write_json(path, spec)


def gpu_slots(device: str) -> list[str | None]:
    """One slot per visible CUDA device when the grid may use CUDA and there are several, else one slot."""
    if device not in ("auto", "cuda"):
        return [None]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)] if count > 1 else [None]


@dataclass
class GridRun:
    """The outcome of one `run_grid` call: what happened to each cell."""

    ran: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


def run_grid(grid: Grid, *, progress: bool = True, log=print) -> GridRun:
    """Run every unfinished cell (one process each; one per GPU when several are visible), rewriting the
    results after each; then draw the plots. Failed cells are reported and retried on the next run."""
    out = Path(grid.out)
    cells = grid.cells()
    for cell in cells:
        prepare_cell(cell, grid)
    result = GridRun(skipped=[c for c in cells if c.state() == "done"])
    todo = [c for c in cells if c.state() != "done"]
    slots = gpu_slots(grid.pretrain.get("device", "auto"))
    log(f"benchmark: {len(cells)} cells, {len(result.skipped)} finished, {len(todo)} to run"
        + (f" on {len(slots)} GPUs" if slots[0] is not None else "") + f"; results in {out}")
    running: dict[str | None, tuple[Cell, subprocess.Popen, float, bool]] = {}  # cell, process, start, fresh
    done = 0
    per_epoch: list[float] = []  # seconds per epoch of the cells this run trained from scratch
    while todo or running:
        for slot in slots:
            if slot not in running and todo:
                cell = todo.pop(0)
                state = cell.state()
                log(f"[{done + len(running) + 1}/{len(cells) - len(result.skipped)}] {cell.name} "
                    f"({state}) -> {cell.out}")
                running[slot] = (cell, _start_cell(cell, slot, quiet=not progress or len(slots) > 1),
                                 time.perf_counter(), state == "new")
        for slot, (cell, proc, t0, fresh) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            done += 1
            if proc.returncode == 0 and cell.state() == "done":
                result.ran.append(cell)
                log(f"    {cell.name}: {_summary(cell)} ({(time.perf_counter() - t0) / 60:.1f} min)")
                if fresh:
                    per_epoch.append((time.perf_counter() - t0) / grid.epochs_of(cell.method))
            else:
                reason = f"exit status {proc.returncode}"
                result.failed.append((cell, reason))
                log(f"    {cell.name}: FAILED ({reason}); it will be retried when the grid runs again")
            write_results(grid)
            left = len(todo) + len(running)
            if left:
                now = time.perf_counter()
                eta = grid_eta(per_epoch, [grid.epochs_of(c.method) for c in todo],
                               [(grid.epochs_of(c.method), now - t) for c, _, t, _ in running.values()], len(slots))
                log(f"    {left} cells left" + (f", about {eta / 60:.0f} min" if eta is not None else ""))
        if running:
            time.sleep(0.2)
    write_results(grid)
    _plot(grid)
    return result


def grid_eta(per_epoch: list[float], waiting: list[int], running: list[tuple[int, float]],
             slots: int) -> float | None:
    """Seconds until the grid ends: the mean seconds per epoch of the cells trained from scratch so far, times
    the epochs of the waiting cells, plus what the running cells (epochs, seconds run) still need, over the
    slots; None until a cell has been trained from scratch (a resumed cell's time says little)."""
    if not per_epoch:
        return None
    rate = sum(per_epoch) / len(per_epoch)
    work = rate * sum(waiting) + sum(max(rate * epochs - ran, 0.0) for epochs, ran in running)
    return work / slots


def _start_cell(cell: Cell, slot: str | None, quiet: bool) -> subprocess.Popen:
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    command = [sys.executable, "-m", "pretrain.study.cell", str(cell.out)] + (["--quiet"] if quiet else [])
    return subprocess.Popen(command, env=env)


def _summary(cell: Cell) -> str:
    r = json.loads((cell.out / RESULT_FILE).read_text())
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    parts = [f"{k} {r[k]:.3f}" for k in ("linear_top1", "linear_top5", "knn_top1", "finetune_top1")
             if r.get(k) is not None]
    return ", ".join(parts + [f"{r['pretrain_min']:.2f} min", f"{r['peak_memory_mb']:.0f} MB {r['memory_kind']}"])


def _plot(grid: Grid) -> None:
    from pretrain.study.plots import plot_accuracy_vs_time, plot_loss_curves, plot_term_curves

    rows = read_results(Path(grid.out) / "results.csv")
    for d in grid.datasets:
        mine = [r for r in rows if r["dataset"] == d.name and r["status"] == "ok"]
        runs = [(r["method"], r["transform"], Path(r["model_dir"]) / "metrics.csv") for r in mine]
        folder = Path(grid.out) / "plots"
        plot_loss_curves(runs, folder / f"loss-{d.name}.png", title=f"pretraining loss on {d.name}")
        plot_term_curves(runs, folder / f"terms-{d.name}.png", title=f"VICReg terms on {d.name}")
        plot_accuracy_vs_time(mine, folder / f"accuracy-vs-time-{d.name}.png", title=f"{d.name}")
