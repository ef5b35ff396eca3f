"""sslforge against lightly, side by side: training step, data pipeline and model step alone.

    python bench/pretrain_speed.py --data DIR/train                       # 32 px, batch 128, 2 workers
    python bench/pretrain_speed.py --data DIR/train --modes data --image-size 224
    python bench/pretrain_speed.py --data DIR/train --methods simclr --rounds 5

Needs lightly (`pip install -c constraints.txt -e '.[bench]'`); it is a benchmark dependency only.
Each measurement runs in its own process with the same thread count, and the two toolkits run
alternately (sslforge first in odd rounds, lightly first in even ones) so machine noise hits both
alike. A 2-thread float32 matmul before and after gives the machine's peak; the compute mode
reports the step's achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode, forward + backward).

`--compile` adds a third contender, sslforge with `--compile` (torch.compile), in the same rotation.

Modes: `full` = DataLoader + augmentation + forward/backward + optimizer (sslforge's real Trainer,
lightly's documented training loop); `data` = the loader alone (decode + views + collate);
`compute` = the model step alone on one pre-made batch. One image = all of its views. The data mode
times warm-up + timed batches from a cold loader, so give it many (`--steps 30`).
Both sides use ResNet-18 (the CIFAR stem below 64 px) and each method's lightly example heads
(sslforge's are set to the same sizes) and each toolkit's own default views for the method.
Peak RSS is the main process's (loader workers are separate processes in both).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Projection sizes of lightly's examples, given to sslforge as method hyper-parameters.
SSLFORGE_HEADS = {
    "simclr": {"hidden_dim": 512, "out_dim": 128},
    "byol": {"proj_hidden_dim": 1024, "proj_dim": 256},
    "vicreg": {"proj_dim": 2048, "proj_layers": 2},
    "barlowtwins": {"proj_dim": 2048, "proj_layers": 3},
}


class _Done(Exception):
    """Raised from the Trainer's step callback once enough steps are timed."""


# -- sslforge side -------------------------------------------------------------------------------------
def sslforge_trainer(args, out: Path):
    from pretrain.train.config import PretrainConfig
    from pretrain.train.trainer import Trainer

    cfg = PretrainConfig(method=args.method, data=args.data, out=str(out), backbone="resnet18",
                         image_size=args.image_size, epochs=100, batch_size=args.batch_size,
                         max_images=args.batch_size * (args.warmup + args.steps + 1), workers=args.workers,
                         method_args=SSLFORGE_HEADS[args.method], device="cpu",
                         compile=args.toolkit == "sslforge+compile")
    return Trainer(cfg, progress=False)


def sslforge_full(args, out: Path) -> float:
    ticks: list[float] = []

    def on_step(step: int) -> None:
        ticks.append(time.perf_counter())
        if step == args.warmup + args.steps:
            raise _Done

    trainer = sslforge_trainer(args, out)
    trainer.on_step = on_step
    with contextlib.suppress(_Done):
        trainer.fit()
    return args.steps * args.batch_size / (ticks[-1] - ticks[args.warmup - 1])


def sslforge_parts(args, out: Path):
    """(loader, step function) built exactly as the Trainer builds them."""
    from pretrain.methods.base import Progress

    trainer = sslforge_trainer(args, out)
    trainer._build()
    model, opt = trainer.model.train(), trainer.optimizer
    model.progress = Progress(0, trainer.steps_per_epoch, 100)

    def step(batch) -> None:
        views, extras = trainer._to_device(batch[0], 0, 0)
        loss, _ = model(views, **extras)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(0, 100)

    return trainer.loader, step


# -- lightly side ----------------------------------------------------------------------------------------
def lightly_parts(args):
    """lightly's documented recipe for the method (bench/lightly_recipes.py); a ResNet-18, with the CIFAR stem
    below 64 px unless `args.cifar_stem` says otherwise. Returns (backbone, loader, step function of a batch)."""
    import lightly_recipes

    backbone, loader, step, *_ = lightly_recipes.build(
        args.method, args.image_size, args.data, args.batch_size, args.workers,
        cifar_stem=getattr(args, "cifar_stem", args.image_size < 64))
    return backbone, loader, lambda batch: step(batch, 0)


# -- timing ------------------------------------------------------------------------------------------------
def time_loader_steps(loader, consume, args) -> float:
    """images/s over `args.steps` batches after `args.warmup` batches, each passed to `consume`."""
    ticks = []
    for i, batch in enumerate(loader):
        consume(batch)
        ticks.append(time.perf_counter())
        if i + 1 == args.warmup + args.steps:
            break
    return args.steps * args.batch_size / (ticks[-1] - ticks[args.warmup - 1])


def time_cold_loader(loader, args) -> float:
    """images/s of `args.warmup + args.steps` batches from a cold start (worker start-up included): after a
    warm-up the loader's prefetch buffer, deeper in one toolkit than the other, would be timed too."""
    start, n = time.perf_counter(), args.warmup + args.steps
    for i, _ in enumerate(loader):
        if i + 1 == n:
            break
    return n * args.batch_size / (time.perf_counter() - start)


def time_compute(step, batch, args) -> float:
    for _ in range(args.warmup):
        step(batch)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def step_flops(step, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


def measure(args) -> dict:
    """One measurement in this process: images/s of (toolkit, mode, method), and its peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours = args.toolkit.startswith("sslforge")
        if ours and args.mode == "full":
            result["images_per_s"] = sslforge_full(args, Path(tmp) / "run")
        else:
            loader, step = sslforge_parts(args, Path(tmp) / "run") if ours else lightly_parts(args)[1:]
            if args.mode == "data":
                result["images_per_s"] = time_cold_loader(loader, args)
            elif args.mode == "full":
                result["images_per_s"] = time_loader_steps(loader, step, args)
            else:
                batch = next(iter(loader))
                result["images_per_s"] = time_compute(step, batch, args)
                if args.toolkit == "sslforge":  # the FLOPs are the same with --compile
                    result["gflop_per_image"] = step_flops(step, batch) / args.batch_size / 1e9
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def run_child(args, toolkit: str, mode: str, method: str) -> dict:
    cmd = [sys.executable, __file__, "--child", toolkit, mode, method, "--data", args.data,
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{toolkit} {mode} {method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training image folder (class sub-folders or flat)")
    p.add_argument("--methods", nargs="+", default=list(SSLFORGE_HEADS), choices=list(SSLFORGE_HEADS),
                   help="methods to compare")
    p.add_argument("--modes", nargs="+", default=["full", "compute", "data"], choices=("full", "compute", "data"),
                   help="what to time: the whole step, the model step alone, the data pipeline alone")
    p.add_argument("--image-size", type=int, default=32, help="view size in pixels")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    p.add_argument("--steps", type=int, default=5, help="timed steps (batches) per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--compile", action="store_true",
                   help="also time sslforge with --compile (torch.compile; its compile falls in the warm-up steps)")
    p.add_argument("--child", nargs=3, metavar=("TOOLKIT", "MODE", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup < 1 and (set(args.child[1:2]) if args.child else set(args.modes)) - {"data"}:
        p.error("--warmup must be at least 1 for the full and compute modes (the first step is never timed)")
    if args.child:
        args.toolkit, args.mode, args.method = args.child
        print(json.dumps(measure(args)))
        return

    import lightly

    from pretrain import __version__

    peak_before = matmul_gflops(args.threads)
    toolkits = ["sslforge", "lightly"] + (["sslforge+compile"] if args.compile else [])
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for r in range(args.rounds):
        for mode in args.modes:
            for method in args.methods:
                order = toolkits if r % 2 == 0 else toolkits[::-1]
                for toolkit in order:
                    res = run_child(args, toolkit, mode, method)
                    runs.setdefault((mode, method, toolkit), []).append(res)
                    print(f"round {r + 1} {mode:7s} {method:11s} {toolkit:16s} {res['images_per_s']:8.1f} images/s",
                          file=sys.stderr, flush=True)
    peak_after = matmul_gflops(args.threads)

    def med(mode: str, method: str, toolkit: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(mode, method, toolkit)])

    print(f"sslforge {__version__} vs lightly {lightly.__version__}, torch {torch.__version__}; ResNet-18, "
          f"{args.image_size} px, batch {args.batch_size}, {args.workers} workers, {args.threads} threads; "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"matmul peak ({args.threads} threads, fp32): {peak_before:.0f} GFLOP/s before, {peak_after:.0f} after\n")
    ours = [t for t in toolkits if t != "lightly"]
    print("| mode | method | " + " | ".join(f"{t} images/s" for t in toolkits) + " | "
          + " | ".join(f"{t} / lightly" for t in ours) + " | " + " | ".join(f"{t} peak RSS MB" for t in toolkits)
          + " | sslforge GFLOP/s |")
    print("|---" * (2 + 2 * len(toolkits) + len(ours) + 1) + "|")
    for mode in args.modes:
        for method in args.methods:
            speed = {t: med(mode, method, t, "images_per_s") for t in toolkits}
            gflops = f"{speed['sslforge'] * med(mode, method, 'sslforge', 'gflop_per_image'):.0f}" \
                if mode == "compute" else ""
            cells = [f"{speed[t]:.1f}" for t in toolkits] + [f"{speed[t] / speed['lightly']:.2f}x" for t in ours]
            cells += [f"{med(mode, method, t, 'peak_rss_mb'):.0f}" for t in toolkits]
            print(f"| {mode} | {method} | " + " | ".join(cells) + f" | {gflops} |")

if __name__ == "__main__":
    main()
