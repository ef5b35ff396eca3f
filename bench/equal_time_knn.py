"""Learning per unit of time: sslforge and lightly train SimCLR for the same wall-clock budget, then
both backbones get the same kNN evaluation.

    python bench/equal_time_knn.py --data ~/.cache/sslforge/cifar10-sample-v1/train \
        --test /tmp/cifar10/test --minutes 10

The two toolkits train at the same time, each pinned to its own CPU core with one torch thread and one
loader worker, so whatever else the machine does slows both alike. Each trains until its budget is
spent: lightly with its documented CIFAR-10 loop (its SimCLR views, head, NT-Xent loss and SGD at a
constant lr of 0.06), sslforge with its defaults (LARS, warm-up + cosine), whose schedule is sized to the
budget from a short timing of its own steps before the clock starts (a user sizes `--epochs` the same
way). Both use ResNet-18 with the standard stem at 32 px (the CIFAR stem costs 16x more per image, too
much for a budget of minutes on one core) and batch 128. Afterwards each backbone embeds the training
and test images with sslforge's inference preprocessing, and the same weighted kNN (k=200, T=0.1)
scores them; a randomly initialised ResNet-18 is the floor.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_speed import lightly_parts  # noqa: E402  (bench scripts share their lightly recipe)

BATCH = 128
SIZE = 32


class _OutOfTime(Exception):
    """Raised from sslforge's step callback when the budget is spent."""


def knn_of(backbone: torch.nn.Module, args) -> dict:
    """sslforge's kNN evaluation of any backbone that maps images to (N, D) features."""
    from pretrain.data import scan_images
    from pretrain.evaluate import class_count, extract_features, knn_evaluate
    from pretrain.preprocess import Preprocessing

    train, test = scan_images(args.data), scan_images(args.test)
    pre = Preprocessing.for_size(SIZE)
    kwargs = dict(workers=1, device="cpu", progress=False)
    bank = extract_features(backbone, train, pre, **kwargs)
    queries = extract_features(backbone, test, pre, **kwargs)
    return knn_evaluate(bank, queries, class_count(train, test), k=200, temperature=0.1)


def sslforge_run(args, budget_s: float) -> dict:
    from pretrain.config import PretrainConfig
    from pretrain.data import scan_images
    from pretrain.trainer import Trainer

    def config(out: str, epochs: int, max_images: int | None = None) -> PretrainConfig:
        return PretrainConfig(method="simclr", data=args.data, out=out, backbone="resnet18", small_stem=False,
                              image_size=SIZE, epochs=epochs, batch_size=BATCH, workers=1, device="cpu",
                              max_images=max_images, seed=args.seed)

    # Size the schedule: time 8 steps (after 2 warm-up steps) and fit the epochs into the budget.
    ticks: list[float] = []

    def tick(step: int) -> None:
        ticks.append(time.perf_counter())
        if step == 10:
            raise _OutOfTime

    runs = tempfile.mkdtemp(prefix="equal-time-knn-")
    calibration = Trainer(config(f"{runs}/calibration", 100, BATCH * 11), progress=False, on_step=tick)
    with contextlib.suppress(_OutOfTime):
        calibration.fit()
    images_per_s = 8 * BATCH / (ticks[-1] - ticks[1])
    num_images = len(scan_images(args.data))
    epochs = max(1, int(budget_s * images_per_s / num_images))

    start = time.perf_counter()
    done = {"steps": 0}

    def stop_when_spent(step: int) -> None:
        done["steps"] = step
        if time.perf_counter() - start > budget_s:
            raise _OutOfTime

    trainer = Trainer(config(f"{runs}/run", epochs), progress=False, on_step=stop_when_spent)
    with contextlib.suppress(_OutOfTime):
        trainer.fit()
    seconds = time.perf_counter() - start
    shutil.rmtree(runs)
    return {"toolkit": "sslforge", "scheduled_epochs": epochs, "steps": done["steps"],
            "epochs": done["steps"] / trainer.steps_per_epoch, "train_s": seconds,
            "images_per_s": done["steps"] * BATCH / seconds, **knn_of(trainer.model.backbone, args)}


def lightly_run(args, budget_s: float) -> dict:
    spec = argparse.Namespace(method="simclr", image_size=SIZE, data=args.data, batch_size=BATCH, workers=1,
                              cifar_stem=False)
    backbone, loader, step = lightly_parts(spec)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s:
        for batch in loader:
            step(batch)
            steps += 1
            if time.perf_counter() - start > budget_s:
                break
    seconds = time.perf_counter() - start
    return {"toolkit": "lightly", "steps": steps, "epochs": steps / len(loader), "train_s": seconds,
            "images_per_s": steps * BATCH / seconds, **knn_of(backbone, args)}


def random_init(args) -> dict:
    from pretrain.backbones import build_backbone, resolve_spec

    torch.manual_seed(args.seed)
    backbone, _ = build_backbone(resolve_spec("resnet18", False, SIZE, {}), SIZE)
    return {"toolkit": "random init", **knn_of(backbone, args)}


def child(args) -> None:
    os.sched_setaffinity(0, {args.core})  # the loader worker, forked later, inherits the core
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    run = {"sslforge": sslforge_run, "lightly": lightly_run}[args.child]
    print(json.dumps(run(args, args.minutes * 60)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled training images (class sub-folders)")
    p.add_argument("--test", required=True, help="labelled test images for the kNN evaluation")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each toolkit, wall clock")
    p.add_argument("--seed", type=int, default=0, help="random seed of both toolkits")
    p.add_argument("--child", choices=("sslforge", "lightly"), help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if len(os.sched_getaffinity(0)) < 2:
        p.error("needs 2 CPU cores: one per toolkit")
    cores = sorted(os.sched_getaffinity(0))[:2]
    common = [sys.executable, __file__, "--data", args.data, "--test", args.test, "--minutes", str(args.minutes),
              "--seed", str(args.seed)]
    procs = {name: subprocess.Popen(common + ["--child", name, "--core", str(core)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, core in zip(("sslforge", "lightly"), cores)}
    rows = []
    for name, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"{name} failed:\n{err[-3000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    rows.append(random_init(args))

    import lightly

    from pretrain import __version__

    print(f"sslforge {__version__} vs lightly {lightly.__version__}, torch {torch.__version__}; SimCLR, ResNet-18 "
          f"(standard stem), {SIZE} px, batch {BATCH}, {args.minutes:g} min each on its own core; "
          f"kNN k=200 T=0.1 on {args.test}\n")
    print("| toolkit | epochs | steps | images/s | kNN top-1 | kNN top-5 |\n|---|---|---|---|---|---|")
    for r in rows:
        trained = "steps" in r
        print(f"| {r['toolkit']} | {r['epochs']:.1f} | {r['steps']} | {r['images_per_s']:.1f} | " if trained
              else f"| {r['toolkit']} | | | | ", end="")
        print(f"{r['top1']:.4f} | {r['top5']:.4f} |")


if __name__ == "__main__":
    main()
