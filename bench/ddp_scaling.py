"""Images/s of `sslforge pretrain` in 1 process and in N processes (`--devices N`, torchrun, gloo on CPU).

Every process gets one thread (OMP_NUM_THREADS=1), so N processes use N cores; `--single-threads N`
gives the one process N threads instead (the same cores, without data parallelism). The two settings run
alternately, `--rounds` times each, on the same images and global batch; the figure is the median
images/s over the steps after `--skip` warm-up steps (metrics.csv's images_per_s is the global
batch over the step time of rank 0). Prints a markdown table and the ratio.

    .venv/bin/python bench/ddp_scaling.py --devices 2 --rounds 2
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(devices: int, threads: int, args: argparse.Namespace, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pretrain", "pretrain", "--devices", str(devices), "--method", args.method,
           "--backbone", args.backbone, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--max-images", str(args.batch_size * args.steps), "--epochs", "1", "--workers", "0", "--out", str(out),
           "--quiet", "--warmup-epochs", "0"]
    if args.data:
        cmd += ["--data", args.data]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    return statistics.median(float(r["images_per_s"]) for r in rows[args.skip:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2, help="processes of the parallel setting (default: 2)")
    p.add_argument("--single-threads", type=int, default=1, help="threads of the one process (default: 1)")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each setting (default: 2)")
    p.add_argument("--method", default="simclr", help="method (default: simclr)")
    p.add_argument("--backbone", default="resnet18", help="backbone (default: resnet18, small stem at 32 px)")
    p.add_argument("--image-size", type=int, default=32, help="image size (default: 32)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default: 64)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default: 8)")
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the median (default: 2)")
    p.add_argument("--data", help="image folder (default: the bundled CIFAR-10 sample)")
    args = p.parse_args()
    results: dict[int, list[float]] = {1: [], args.devices: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for devices in (1, args.devices):
                speed = run_once(devices, args.single_threads if devices == 1 else 1, args, Path(tmp) / "run")
                results[devices].append(speed)
                print(f"round {r + 1}: {devices} process(es): {speed:.1f} images/s", flush=True)
    one, many = statistics.median(results[1]), statistics.median(results[args.devices])
    print(f"\n| processes ({args.single_threads} thread(s) for 1 process, 1 each otherwise) "
          f"| images/s (median of {args.rounds} runs) | runs |")
    print("| --- | --- | --- |")
    for devices, speeds in results.items():
        print(f"| {devices} | {statistics.median(speeds):.1f} | {', '.join(f'{s:.1f}' for s in speeds)} |")
    print(f"\n{args.devices} processes / 1 process: {many / one:.2f}x")


if __name__ == "__main__":
    main()
