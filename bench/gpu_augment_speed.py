"""images/s of a pipeline's views made on the CPU per image (the default) against --gpu-augment's
batched views, here on the CPU device (decode included, one image = all its views).

    python bench/gpu_augment_speed.py --sizes 32 224 --pipelines simclr multicrop

Five ways, run alternately (A B C D E A B C D E ...) so machine noise hits them alike; median of the rounds:
  cpu              the CPU pipeline in this process (decode + views per image)
  cpu 2 workers    the CPU pipeline in 2 DataLoader workers (the training loader)
  device           --gpu-augment in this process: decode + uint8 square per image, then the batch's views
  device 2 workers --gpu-augment: 2 workers decode to uint8 squares, this process makes the batch's views
  loader only      --gpu-augment's loader side alone: decode + uint8 square per image, in this process
                   (what workers must sustain when the views are made on a GPU)
Source images as in bench/transform_speed.py (32 px sample JPEGs; 256 px JPEGs for 224 px views).
One torch thread in this process, as in a loader worker.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transform_speed import rate_loader, rate_single, source_folder

from pretrain.data.datasets import EpochSampler, ViewsDataset
from pretrain.data.images import load_rgb, scan_images
from pretrain.views.gpu import build_device_views, step_generator
from pretrain.views.recipes import build_transform

CPU = torch.device("cpu")


def rate_device(views, paths: list[Path], batch_size: int) -> float:
    """images/s of decode + uint8 square in this process, then batched views."""
    start = time.perf_counter()
    for step, first in enumerate(range(0, len(paths), batch_size)):
        batch = torch.stack([views.load(load_rgb(p)) for p in paths[first:first + batch_size]])
        views(batch, step_generator(0, 0, step, CPU))
    return len(paths) / (time.perf_counter() - start)


def rate_device_loader(views, loader: DataLoader, batches: int) -> float:
    """images/s with workers decoding and this process making the views (after the first batch)."""
    it = iter(loader)
    next(it)
    start, images = time.perf_counter(), 0
    for step in range(batches):
        batch = next(it)[0]
        views(batch, step_generator(0, 0, step, CPU))
        images += len(batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--pipelines", nargs="+", default=["simclr", "multicrop"])
    p.add_argument("--images", type=int, default=256, help="images per in-process round at 32 px (/4 at 224)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=4, help="timed batches per round with workers (/2 at 224)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            big = size > 64
            n = args.images // 4 if big else args.images
            batches = max(2, args.batches // 2) if big else args.batches
            folder = source_folder(size, max(n, args.batch_size * (batches + 2)), Path(tmp))
            images = scan_images(folder, warn=False)
            paths = images.paths[:n]
            for name in args.pipelines:
                cpu, device = build_transform(name, size), build_device_views(name, size)

                cpu_loader, device_loader = (
                    DataLoader(ViewsDataset(images, t), batch_size=args.batch_size, num_workers=2,
                               sampler=EpochSampler(len(images), args.batch_size, 0), prefetch_factor=2)
                    for t in (cpu, device.load))  # workers stop with each round: none run in the others
                runs = {"cpu": partial(rate_single, cpu, paths),
                        "cpu 2 workers": partial(rate_loader, cpu_loader, batches),
                        "device": partial(rate_device, device, paths, args.batch_size),
                        "device 2 workers": partial(rate_device_loader, device, device_loader, batches),
                        "loader only": partial(rate_single, device.load, paths)}
                rates: dict[str, list[float]] = {k: [] for k in runs}
                for _ in range(args.rounds):
                    for k, run in runs.items():
                        rates[k].append(run())
                ref = statistics.median(rates["cpu"])
                print(f"\n{name}, {size} px ({len(cpu)} views, --gpu-augment load size {device.load.size}):")
                print("| way | images/s | vs cpu |")
                print("|---|---|---|")
                for k, values in rates.items():
                    median = statistics.median(values)
                    print(f"| {k} | {median:.0f} | {median / ref:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
