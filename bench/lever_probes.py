"""The single-lever probes behind docs/benchmarks/training-speed.md, "the levers": one process, one figure.

    python bench/lever_probes.py step --method vicreg --mode trainer      # sslforge's whole Trainer step
    python bench/lever_probes.py step --method vicreg --mode loader       # its loader + model step, no Trainer
    python bench/lever_probes.py step --method vicreg --mode compute [--compile]   # the model step alone
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 python bench/lever_probes.py step --mode compute
    python bench/lever_probes.py profile --method vicreg                  # cProfile of 7 Trainer steps
    python bench/lever_probes.py hue [--keep-heap]                         # a 224 px hue shift, fresh process
    python bench/lever_probes.py views --data /tmp/cifar256/train          # 224 px ViewsDataset items + profile
    python bench/lever_probes.py seed                                      # per-sample seeding, two ways

Settings as bench/pretrain_speed.py (ResNet-18, CIFAR stem at 32 px, batch 128, 2 workers, 2 threads,
lightly's head sizes); glibc and torch environment variables in front of a command try allocator
settings without code changes. Run alone on a quiet machine, and compare runs of one sitting only.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_speed import SSLFORGE_HEADS, sslforge_full, sslforge_parts, time_compute, time_loader_steps  # noqa: E402

SAMPLE = Path.home() / ".cache/sslforge/cifar10-sample-v1/train"


def per_call_ms(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def step(args) -> None:
    """images/s of one of three scopes of sslforge's step, and the process's peak RSS."""
    spec = argparse.Namespace(method=args.method, data=args.data, image_size=32, batch_size=128, workers=2,
                              steps=args.steps, warmup=2, toolkit="sslforge+compile" if args.compile else "sslforge")
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "trainer":
            speed = sslforge_full(spec, Path(tmp) / "run")
        else:
            loader, run_step = sslforge_parts(spec, Path(tmp) / "run")
            speed = (time_loader_steps(loader, run_step, spec) if args.mode == "loader"
                     else time_compute(run_step, next(iter(loader)), spec))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = f"{args.method} {args.mode}{' --compile' if args.compile else ''}"
    print(f"{label}: {speed:.1f} images/s, peak RSS {rss:.0f} MB")


def profile(args) -> None:
    """Where the Trainer's time goes: cProfile of one warm-up step and `--steps` timed steps."""
    spec = argparse.Namespace(method=args.method, data=args.data, image_size=32, batch_size=128, workers=2,
                              steps=args.steps, warmup=1, toolkit="sslforge")
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        profiler.enable()
        speed = sslforge_full(spec, Path(tmp) / "run")
        profiler.disable()
    print(f"{speed:.1f} images/s")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(8)
    stats.sort_stats("cumtime").print_stats("optim", 3)  # the optimizer steps, all of them


def hue(args) -> None:
    """One 224 px hue shift per call, in this fresh process, with or without the loader workers' heap setting."""
    from pretrain.data.heap import keep_heap
    from pretrain.views.ops import shift_hue

    torch.set_num_threads(1)  # as in a loader worker
    if args.keep_heap:
        keep_heap()
    view = torch.rand(3, 224, 224)
    ms = per_call_ms(lambda: shift_hue(view, 0.1), 200)
    print(f"hue shift, 224 px{' (keep_heap)' if args.keep_heap else ''}: {ms:.3f} ms")


def views(args) -> None:
    """ms per training sample (decode + 2 views) and per collated batch at 224 px, in one process with the
    workers' heap setting, then torch's profile of the operators of 128 samples."""
    from torch.profiler import profile as torch_profile
    from torch.utils.data import default_collate

    from pretrain.data.datasets import ViewsDataset
    from pretrain.data.heap import keep_heap
    from pretrain.data.images import scan_images
    from pretrain.views.recipes import build_transform

    torch.set_num_threads(1)  # as in a loader worker
    keep_heap()
    dataset = ViewsDataset(scan_images(args.data), build_transform(args.transform, 224))
    for i in range(10):
        dataset[(i, i)]
    start = time.perf_counter()
    samples = [dataset[(i, i)] for i in range(128)]
    item_ms = (time.perf_counter() - start) / 128 * 1e3
    start = time.perf_counter()
    default_collate(samples)
    print(f"{args.transform} 224 px: {item_ms:.2f} ms per sample, collate {(time.perf_counter() - start) * 1e3:.0f} ms "
          f"per batch of 128")
    with torch_profile() as prof:
        for i in range(128):
            dataset[(i, i)]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def seed(args) -> None:
    """The per-sample seeding cost: torch.manual_seed (every device) against the CPU generator alone."""
    everywhere = per_call_ms(lambda: torch.manual_seed(1), 1000)
    cpu_only = per_call_ms(lambda: torch.default_generator.manual_seed(1), 1000)
    print(f"torch.manual_seed {everywhere * 1e3:.1f} us, torch.default_generator.manual_seed {cpu_only * 1e3:.1f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="probe", required=True)
    s = sub.add_parser("step", help="images/s of the Trainer step, the loader + model step, or the model step alone")
    s.add_argument("--mode", choices=("trainer", "loader", "compute"), default="compute")
    s.add_argument("--compile", action="store_true", help="sslforge's --compile (its compile is in the warm-up)")
    r = sub.add_parser("profile", help="cProfile of the Trainer's steps")
    for q in (s, r):
        q.add_argument("--method", choices=list(SSLFORGE_HEADS), default="vicreg")
        q.add_argument("--data", default=str(SAMPLE), help="training folder (default: the bundled sample)")
        q.add_argument("--steps", type=int, default=4 if q is s else 7, help="timed steps")
    h = sub.add_parser("hue", help="a 224 px hue shift in a fresh process")
    h.add_argument("--keep-heap", action="store_true", help="apply the loader workers' glibc heap setting first")
    v = sub.add_parser("views", help="224 px training samples: ms per sample and per collate, operator profile")
    v.add_argument("--data", required=True, help="folder of images of at least 224 px")
    v.add_argument("--transform", default="simclr", help="view pipeline")
    sub.add_parser("seed", help="per-sample seeding cost")
    args = p.parse_args()
    torch.set_num_threads(2)
    {"step": step, "profile": profile, "hue": hue, "views": views, "seed": seed}[args.probe](args)


if __name__ == "__main__":
    main()
