"""Throughput of the view pipelines alone (images/s, one image = all its views), decode included.

    python bench/transform_speed.py --sizes 32 224 --workers 0 2
    python bench/transform_speed.py --ops      # sslforge's hue shift and blur against torchvision's

Source images: the bundled CIFAR-10 sample's JPEGs (32 px) for 32 px views; the same images
upscaled to 256 px and saved as JPEG (quality 90) for 224 px views. For each size and worker count,
every pipeline plus `before` (the PIL-based SimCLR views sslforge used until this change) and
`decode` (decoding only, no views) runs
alternately (A B C ... A B C ...) so machine noise hits them alike; the median images/s of the
rounds is printed with its ratio to `before`. With workers, images go through the training
DataLoader (ViewsDataset, default collate) in batches of --batch-size.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from pretrain.data.datasets import EpochSampler, ViewsDataset
from pretrain.data.images import load_rgb, sample_dir, scan_images
from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD
from pretrain.views.ops import MultiView, gaussian_blur, shift_hue
from pretrain.views.recipes import TRANSFORMS, build_transform


def before_simclr(size: int) -> MultiView:
    """The SimCLR views before this change: torchvision v2 on PIL images, tensor conversion at the end."""
    small = size <= 64
    s = 0.5 if small else 1.0

    def view() -> v2.Compose:
        ops = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(0.5),
               v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8), v2.RandomGrayscale(0.2)]
        if not small:
            ops.append(v2.RandomApply([v2.GaussianBlur(size // 10 // 2 * 2 + 1, sigma=(0.1, 2.0))], p=0.5))
        return v2.Compose(ops + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                 v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    return MultiView([view(), view()])


def source_folder(size: int, count: int, tmp: Path) -> Path:
    """The sample's train images (32 px), or `count` of them upscaled to 256 px JPEGs for large views."""
    train = sample_dir() / "train"
    if size <= 64:
        return train
    out = tmp / "up256" / "all"
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(scan_images(train, warn=False).paths[:count]):
        load_rgb(path).resize((256, 256), Image.Resampling.BICUBIC).save(out / f"{i:05d}.jpg", quality=90)
    return out.parent


def rate_single(transform, paths: list[Path]) -> float:
    """images/s of decode + pipeline in this process."""
    start = time.perf_counter()
    for i, path in enumerate(paths):
        torch.manual_seed(i)
        transform(load_rgb(path))
    return len(paths) / (time.perf_counter() - start)


def rate_loader(loader: DataLoader, batches: int) -> float:
    """images/s through a DataLoader with workers (after its first batch: workers are started)."""
    it = iter(loader)
    next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(it)[1])
    return images / (time.perf_counter() - start)


def op_speed(sizes: list[int], rounds: int) -> None:
    """Milliseconds per call of the two colour operations sslforge reimplements, against torchvision's."""
    from torchvision.transforms.v2 import functional as F

    print("| operation | size | torchvision ms | sslforge ms | speed-up |")
    print("|---|---|---|---|---|")
    for size in sizes:
        view = torch.rand(3, size, size)
        k = max(3, int(0.1 * size) // 2 * 2 + 1)
        pairs = {"hue shift": (partial(F.adjust_hue, view, 0.1), partial(shift_hue, view, 0.1)),
                 f"blur k={k}": (partial(F.gaussian_blur, view, [k, k], [1.0, 1.0]),
                                 partial(gaussian_blur, view, k, 1.0))}
        for name, fns in pairs.items():
            times: list[list[float]] = [[], []]
            for _ in range(rounds):
                for i, fn in enumerate(fns):
                    start = time.perf_counter()
                    for _ in range(20):
                        fn()
                    times[i].append((time.perf_counter() - start) / 20 * 1e3)
            a, b = (statistics.median(t) for t in times)
            print(f"| {name} | {size} | {a:.3f} | {b:.3f} | {a / b:.1f}x |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0 = in this process, no DataLoader")
    p.add_argument("--images", type=int, default=300, help="images per round in this process (32 px; /8 at 224)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=6, help="timed batches per round with workers (32 px; /4 at 224)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pipelines", nargs="+", default=["before", "decode", *TRANSFORMS])
    p.add_argument("--ops", action="store_true", help="time the hue shift and blur against torchvision's instead")
    args = p.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; the training step keeps the other threads
    if args.ops:
        op_speed(args.sizes, max(args.rounds, 5))
        return

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            big = size > 64
            n = args.images // 8 if big else args.images
            folder = source_folder(size, max(n, args.batch_size * (args.batches + 2)), Path(tmp))
            images = scan_images(folder, warn=False)
            for workers in args.workers:
                special = {"before": before_simclr, "decode": lambda _: MultiView([])}
                pipelines = {name: special[name](size) if name in special else build_transform(name, size)
                             for name in args.pipelines}
                if workers == 0:
                    paths = images.paths[:n]
                    runs = {name: (lambda t=t, p=paths: rate_single(t, p)) for name, t in pipelines.items()}
                else:
                    batches = max(2, args.batches // 4) if big else args.batches
                    loaders = {name: DataLoader(ViewsDataset(images, t), batch_size=args.batch_size,
                                                sampler=EpochSampler(len(images), args.batch_size, 0),
                                                num_workers=workers, persistent_workers=True, prefetch_factor=2)
                               for name, t in pipelines.items()}
                    runs = {name: (lambda dl=dl, b=batches: rate_loader(dl, b)) for name, dl in loaders.items()}
                rates: dict[str, list[float]] = {name: [] for name in runs}
                for _ in range(args.rounds):
                    for name, run in runs.items():
                        rates[name].append(run())
                ref = statistics.median(rates["before"]) if "before" in rates else None
                print(f"\n{size} px, {'in-process' if workers == 0 else f'{workers} loader workers'}:")
                print("| pipeline | views | images/s | vs before |")
                print("|---|---|---|---|")
                for name, values in rates.items():
                    median = statistics.median(values)
                    views = len(pipelines[name])
                    ratio = f"{median / ref:.2f}x" if ref else "-"
                    print(f"| {name} | {views} | {median:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
