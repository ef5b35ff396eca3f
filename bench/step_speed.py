"""Compute-only speed of one SSL training step (forward, backward, optimizer) on pre-made tensors.

    python bench/step_speed.py --methods simclr --image-size 32 --layouts channels-last contiguous
    python bench/step_speed.py --methods simclr moco byol simsiam swav barlowtwins vicreg vicregl dino drlim simclr2

Each method gets the views its default transform makes (2 views; 2 global + 6 local crops for
multi-crop; crop boxes for VICRegL) as random tensors. Variants (methods x sizes x layouts) run
alternately (A B A B ...) so machine noise hits them alike; prints the median seconds per step and
images/s (one image = all its views) of each, with the ratio to the first variant.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.methods import build_method, method_class, method_hparams
from pretrain.train.optim import build_optimizer, scaled_lr
from pretrain.views.recipes import build_transform


def default_views(method: str, size: int, batch: int, fmt: torch.memory_format):
    """Random views shaped like the method's default transform output, and the per-view extras."""
    sample = build_transform(method_class(method).default_views, size)(Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)))
    views, extras = (sample["views"], sample) if isinstance(sample, dict) else (sample, {})
    views = [torch.randn(batch, *v.shape).contiguous(memory_format=fmt) for v in views]
    return views, {k: extras[k].expand(batch, *extras[k].shape).clone() for k in extras if k != "views"}


def make_step(method: str, backbone: str, size: int, batch: int, channels_last: bool):
    torch.manual_seed(0)
    net, dim = build_backbone(resolve_spec(backbone, None, size), size)
    model = build_method(method, net, dim, method_hparams(method))
    spec = method_class(method).recipe("default")
    opt = build_optimizer(model, spec.optimizer, scaled_lr(spec.lr, batch), spec.weight_decay, 0.9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    views, extras = default_views(method, size, batch, fmt)
    needed = {k: extras[k] for k in model.needs}

    def step() -> float:
        start = time.perf_counter()
        loss, _ = model(views, **needed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(0, 100)
        return time.perf_counter() - start

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["simclr"], help="registered methods to compare")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, nargs="+", default=[32])
    p.add_argument("--layouts", nargs="+", choices=("channels-last", "contiguous"), default=["channels-last"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per variant (after one warm-up step)")
    args = p.parse_args()

    variants = {f"{m} {size}px {layout}": make_step(m, args.backbone, size, args.batch_size, layout == "channels-last")
                for m in args.methods for size in args.image_size for layout in args.layouts}
    for step in variants.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            times[name].append(step())
    first = statistics.median(next(iter(times.values())))
    print(f"{args.backbone} batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.rounds}:")
    print("| variant | s/step | images/s | time vs first |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {args.batch_size / median:.1f} | {median / first:.2f}x |")


if __name__ == "__main__":
    main()
