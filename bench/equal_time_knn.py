"""Learning per unit of time: two contenders train one method for the same wall-clock budget, side by side,
and the same kNN scores both backbones along the way and at the end.

    python bench/equal_time_knn.py --method byol --data ~/.cache/sslforge/cifar10-sample-v1/train \
        --test /tmp/cifar/test --minutes 10 --out runs/equal-time/byol
    python bench/equal_time_knn.py --method byol ... --contenders 'sslforge' 'sslforge;lr=0.001'   # a sweep pair

A contender is `lightly` (lightly 1.6.0's own documented recipe for the method: bench/lightly_recipes.py says
which file each comes from), `sslforge` (its default recipe), or `sslforge;KEY=VALUE;...` with pretraining
options as in config.yaml (`sslforge;optimizer=sgd;lr=0.3;method_args={temperature: 0.5}`).

Fairness: both contenders train at the same time, on CPU each pinned to its own core with one torch thread and
one loader worker, so whatever else the machine does slows both alike. Each trains until its budget is spent,
with its learning-rate schedule sized to the budget from a 10-step timing before the clock starts (a user
sizes `--epochs` the same way). Every `--curve-every` minutes of training the clock stops and the backbone is
scored by the kNN (k=200, T=0.1, the training images as the bank) on a fixed random `--curve-test` of the test
images; at the end on all of them. Both use ResNet-18 with the standard stem at 32 px (the CIFAR stem costs 16x
more per image), batch 128 unless `--batch` says otherwise. A randomly initialised ResNet-18 is the floor. Results
go to OUT/<contender>.json (a rerun skips a contender whose result is there with the same settings, so a long
series resumes), the table to stdout and OUT/results.md, the learning curves to OUT/curves.png.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_BATCH = 128
SIZE = 32
CALIBRATION_STEPS = 10


class _OutOfTime(Exception):
    """Raised from a step callback when the budget is spent."""


class Scorer:
    """The kNN evaluation both contenders get: images decoded once with sslforge's inference preprocessing."""

    def __init__(self, args):
        from pretrain.data.datasets import EvalDataset
        from pretrain.data.images import scan_images
        from pretrain.evaluate import class_count
        from pretrain.preprocess import Preprocessing

        train, test = scan_images(args.data), scan_images(args.test)
        self.classes = class_count(train, test)
        pre = Preprocessing.for_size(SIZE)
        self.device = torch.device(args.device)

        def decode(images):
            items = [EvalDataset(images, pre)[i] for i in range(len(images))]
            return torch.stack([x for x, _, _ in items]), torch.tensor([int(y) for _, y, _ in items])

        self.bank, self.test = decode(train), decode(test)
        # the curve's test images: a fixed random subset (the folders are sorted by class)
        pick = torch.randperm(len(self.test[1]), generator=torch.Generator().manual_seed(0))[:args.curve_test]
        self.curve = self.test[0][pick], self.test[1][pick]

    def _embed(self, backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            out = [backbone(b.to(self.device).contiguous(memory_format=torch.channels_last)).float().cpu()
                   for b in x.split(256)]
        backbone.train(was_training)
        return torch.cat(out)

    def score(self, backbone: torch.nn.Module, full: bool = True) -> dict:
        from pretrain.evaluate import Features, knn_evaluate

        x, y = self.test if full else self.curve
        bank = Features(self._embed(backbone, self.bank[0]), self.bank[1])
        return knn_evaluate(bank, Features(self._embed(backbone, x), y), self.classes, k=200, temperature=0.1)


class Clock:
    """Training time with the evaluations left out, and the learning curve taken at every mark."""

    def __init__(self, budget_s: float, every_s: float, scorer: Scorer):
        self.budget_s, self.every_s, self.scorer = budget_s, every_s, scorer
        self.start, self.paused, self.next_mark, self.curve = time.perf_counter(), 0.0, every_s, []

    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def tick(self, steps: int, backbone: torch.nn.Module) -> None:
        t = self.train_s()
        if t >= self.next_mark and t < self.budget_s:
            began = time.perf_counter()
            self.curve.append({"minutes": t / 60, "steps": steps, **self.scorer.score(backbone, full=False)})
            self.paused += time.perf_counter() - began
            self.next_mark += self.every_s
        if self.train_s() >= self.budget_s:
            raise _OutOfTime


def parse_contender(spec: str) -> tuple[str, dict]:
    import yaml

    toolkit, *pairs = spec.split(";")
    if toolkit not in ("sslforge", "lightly") or (pairs and toolkit == "lightly"):
        raise SystemExit(f"a contender is lightly, sslforge or 'sslforge;KEY=VALUE;...' (got {spec!r})")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"contender {spec!r}: {pair!r} is not KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return toolkit, overrides


def sslforge_run(args, overrides: dict, scorer: Scorer) -> dict:
    from pretrain.config import PretrainConfig
    from pretrain.data.images import scan_images
    from pretrain.trainer import Trainer

    def config(out: str, epochs: int, max_images: int | None = None) -> PretrainConfig:
        base = dict(method=args.method, data=args.data, out=out, backbone="resnet18", small_stem=False,
                    image_size=SIZE, epochs=epochs, batch_size=args.batch, workers=1, device=args.device,
                    max_images=max_images, seed=args.seed)
        return PretrainConfig.from_dict({**base, **overrides})

    runs = tempfile.mkdtemp(prefix="equal-time-knn-")
    try:
        ticks: list[float] = []

        def tick(step: int) -> None:
            ticks.append(time.perf_counter())
            if step == CALIBRATION_STEPS:
                raise _OutOfTime

        calibration = Trainer(config(f"{runs}/calibration", 100, args.batch * (CALIBRATION_STEPS + 1)),
                              progress=False, on_step=tick)
        with contextlib.suppress(_OutOfTime):
            calibration.fit()
        seconds_per_step = (ticks[-1] - ticks[1]) / (len(ticks) - 2)
        steps_per_epoch = len(scan_images(args.data)) // args.batch  # full batches only
        epochs = max(1, round(args.minutes * 60 / seconds_per_step / steps_per_epoch))
        del calibration

        done = {"steps": 0}

        def on_step(step: int) -> None:
            done["steps"] = step
            clock.tick(step, trainer.model.backbone)

        trainer = Trainer(config(f"{runs}/run", epochs), progress=False, on_step=on_step)
        clock = Clock(args.minutes * 60, args.curve_every * 60, scorer)
        with contextlib.suppress(_OutOfTime):
            trainer.fit()
        train_s = clock.train_s()
        recipe = trainer.cfg
        return {"steps": done["steps"], "log": _log_summary(Path(runs) / "run" / "metrics.csv"),
                "scheduled_steps": epochs * trainer.steps_per_epoch, "train_s": train_s,
                "images_per_s": done["steps"] * args.batch / train_s, "curve": clock.curve,
                "recipe": {k: recipe.to_dict()[k] for k in ("optimizer", "lr", "weight_decay", "transform",
                                                            "transform_args", "method_args")},
                **scorer.score(trainer.model.backbone)}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def _log_summary(path: Path, every: int = 20) -> list[dict]:
    """Every `every`-th row of a run's metrics.csv: step, loss and the collapse monitor's emb_std."""
    import csv

    if not path.is_file():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{"step": int(r["step"]), "loss": float(r["loss"]), "emb_std": float(r["emb_std"])}
            for r in rows[::every]]


def lightly_run(args, scorer: Scorer) -> dict:
    import lightly_recipes

    def parts(total_steps: int):
        return lightly_recipes.build(args.method, SIZE, args.data, args.batch, workers=1, total_steps=total_steps,
                                     seed=args.seed, device=args.device)

    calibration = parts(10**6)
    ticks = []
    for i, batch in enumerate(calibration.loader):
        calibration.step(_to(batch, args.device), i)
        ticks.append(time.perf_counter())
        if i == CALIBRATION_STEPS:
            break
    seconds_per_step = (ticks[-1] - ticks[1]) / (len(ticks) - 2)
    total = max(1, round(args.minutes * 60 / seconds_per_step))
    del calibration
    backbone, loader, step, *_ = parts(total)
    clock, steps = Clock(args.minutes * 60, args.curve_every * 60, scorer), 0
    with contextlib.suppress(_OutOfTime):
        while True:
            for batch in loader:
                step(_to(batch, args.device), steps)
                steps += 1
                clock.tick(steps, backbone)
    train_s = clock.train_s()
    return {"steps": steps, "scheduled_steps": total, "train_s": train_s,
            "images_per_s": steps * args.batch / train_s,
            "curve": clock.curve, "recipe": "lightly_recipes.py", **scorer.score(backbone)}


def _to(batch, device: str):
    if device == "cpu":
        return batch
    views = [v.to(device, non_blocking=True) for v in batch[0]]
    return [views, *batch[1:]]


def random_init(args, scorer: Scorer) -> dict:
    from pretrain.backbones import build_backbone, resolve_spec

    torch.manual_seed(args.seed)
    backbone, _ = build_backbone(resolve_spec("resnet18", False, SIZE, {}), SIZE)
    backbone = backbone.to(args.device).to(memory_format=torch.channels_last)
    return {**scorer.score(backbone), "curve_top1": scorer.score(backbone, full=False)["top1"]}


def child(args) -> None:
    if args.device == "cpu":
        os.sched_setaffinity(0, {args.core})  # the loader worker, forked later, inherits the core
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    scorer = Scorer(args)
    toolkit, overrides = parse_contender(args.child)
    if toolkit == "lightly":
        result = lightly_run(args, scorer)
    else:
        result = sslforge_run(args, overrides, scorer)
    print(json.dumps(result))


def slug(spec: str) -> str:
    """The contender's file name: readable, short, and its own (a hash of the whole spec, as specs that differ
    only past the cut or in punctuation would otherwise share a file and overwrite each other's results)."""
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', spec).strip('_')[:100]}-{digest}"


def settings(args) -> dict:
    return {k: getattr(args, k) for k in ("method", "data", "test", "minutes", "seed", "curve_every", "curve_test",
                                          "device", "batch")}


def plot(rows: list[dict], floor: float, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:  # a long contender spec wraps in the legend below the plot instead of running off the figure
        points = [(0.0, floor)] + [(c["minutes"], c["top1"]) for c in r["curve"]]
        label = textwrap.fill(f"{r['contender']} (all test images at the end: {r['top1']:.3f})", 90)
        ax.plot(*zip(*points), marker="o", label=label)
    ax.axhline(floor, color="grey", linestyle="--", label=f"random init ({floor:.3f})")
    ax.set_xlabel("training wall clock (minutes, evaluations excluded)")
    ax.set_ylabel(f"kNN top-1 ({args.curve_test} of the test images)")
    ax.set_title(f"{args.method}: ResNet-18, {SIZE} px, batch {args.batch}, one core each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr", help="SSL method both contenders train (default: simclr)")
    p.add_argument("--data", required=True, help="labelled training images (class sub-folders); also the kNN bank")
    p.add_argument("--test", required=True, help="labelled test images for the kNN evaluation")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each contender, wall clock "
                                                               "(default: 10)")
    p.add_argument("--contenders", nargs=2, default=["sslforge", "lightly"], metavar="SPEC",
                   help="the two contenders: lightly, sslforge or 'sslforge;KEY=VALUE;...' (default: sslforge lightly)")
    p.add_argument("--curve-every", type=float, default=2.0, help="minutes of training between learning-curve "
                                                                  "points (default: 2)")
    p.add_argument("--curve-test", type=int, default=2000, help="test images (a fixed random subset) scored "
                                                                "at each curve point (default: 2000; the final score "
                                                                "uses all)")
    p.add_argument("--device", default="cpu", help="cpu (one core per contender) or cuda (both share the GPU)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="batch size of both contenders (default: "
                                                                   f"{DEFAULT_BATCH}; the recipes are for 64-512); "
                                                                   "each toolkit scales its lr with it")
    p.add_argument("--seed", type=int, default=0, help="random seed of both contenders (default: 0)")
    p.add_argument("--out", required=True, help="folder for the per-contender results, results.md and curves.png")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    for spec in args.contenders:
        parse_contender(spec)
    if args.contenders[0] == args.contenders[1]:
        p.error("--contenders: the two specs are the same; give two different ones")
    if args.batch < 2:
        p.error(f"--batch must be at least 2 (batch norm needs two images; got {args.batch})")
    from pretrain.data.images import DataError, scan_images
    try:
        images = len(scan_images(args.data, warn=False))
    except DataError as e:
        p.error(f"--data: {e}")
    if args.batch > images:
        p.error(f"--batch {args.batch} is larger than the {images} images of --data: no full batch to train on")
    if args.device == "cpu" and len(os.sched_getaffinity(0)) < 2:
        p.error("needs 2 CPU cores: one per contender")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))[:2]
    common = [sys.executable, __file__, "--method", args.method, "--data", args.data, "--test", args.test,
              "--minutes", str(args.minutes), "--seed", str(args.seed), "--batch", str(args.batch),
              "--curve-every", str(args.curve_every),
              "--curve-test", str(args.curve_test), "--device", args.device, "--out", args.out]
    pending = {}
    for spec, core in zip(args.contenders, cores):
        path = out / f"{slug(spec)}.json"
        done = json.loads(path.read_text()) if path.is_file() else {}
        if done.get("settings") == settings(args) and done.get("contender") == spec:
            continue
        pending[spec] = subprocess.Popen(common + ["--child", spec, "--core", str(core)], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
    for spec, proc in pending.items():
        stdout, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"{spec} failed:\n{err[-3000:]}")
        result = {"contender": spec, "settings": settings(args), **json.loads(stdout.strip().splitlines()[-1])}
        tmp = out / f".{slug(spec)}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out / f"{slug(spec)}.json")
    rows = [json.loads((out / f"{slug(s)}.json").read_text()) for s in args.contenders]
    floor_path = out / "random-init.json"
    if floor_path.is_file() and json.loads(floor_path.read_text()).get("settings") == settings(args):
        floor = json.loads(floor_path.read_text())
    else:
        torch.set_num_threads(len(cores))
        floor = {"settings": settings(args), **random_init(args, Scorer(args))}
        floor_path.write_text(json.dumps(floor, indent=1))
    report(rows, floor, args, out)


def report(rows: list[dict], floor: dict, args, out: Path) -> None:
    import lightly

    from pretrain import __version__

    lines = [f"sslforge {__version__} vs lightly {lightly.__version__}, torch {torch.__version__}; {args.method}, "
             f"ResNet-18 (standard stem), {SIZE} px, batch {args.batch}, {args.minutes:g} min each "
             f"({'one core each' if args.device == 'cpu' else args.device}); kNN k=200 T=0.1 on {args.test}, "
             f"bank {args.data}", "",
             "| contender | steps | images/s | kNN top-1 | kNN top-5 | curve (minutes: top-1 on a fixed "
             f"{args.curve_test} test images) |", "|---|---|---|---|---|---|"]
    for r in rows:
        curve = ", ".join(f"{c['minutes']:.1f}: {c['top1']:.3f}" for c in r["curve"])
        lines.append(f"| {r['contender']} | {r['steps']} | {r['images_per_s']:.1f} | {r['top1']:.4f} | "
                     f"{r['top5']:.4f} | {curve} |")
    lines.append(f"| random init | | | {floor['top1']:.4f} | {floor['top5']:.4f} | |")
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    plot(rows, floor["curve_top1"], args, out / "curves.png")


if __name__ == "__main__":
    main()
