"""Compute-only speed of one SSL training step (forward, backward, optimizer) on pre-made tensors.

    python bench/step_speed.py --method simclr --backbone resnet18 --image-size 32 --batch-size 64

Compares memory layouts (channels-last vs contiguous) and any --image-size values given, running the
variants alternately (A B A B ...) so machine noise hits them alike, and prints the median images/s
of each (one image = its two views), with the ratio to the first variant.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pretrain.backbones import build_backbone, resolve_spec
from pretrain.methods import build_method, method_hparams, method_spec
from pretrain.optim import build_optimizer


def make_step(method: str, backbone: str, size: int, batch: int, channels_last: bool):
    torch.manual_seed(0)
    net, dim = build_backbone(resolve_spec(backbone, None, size), size)
    model = build_method(method, net, dim, method_hparams(method))
    spec = method_spec(method)
    opt = build_optimizer(model, spec.optimizer, spec.lr, spec.weight_decay, 0.9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    views = [torch.randn(batch, 3, size, size).contiguous(memory_format=fmt) for _ in range(2)]

    def step() -> float:
        start = time.perf_counter()
        loss, _ = model(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch / (time.perf_counter() - start)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, nargs="+", default=[32])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per variant (after one warm-up step)")
    args = p.parse_args()

    variants = {f"{size}px {'channels-last' if cl else 'contiguous'}": make_step(args.method, args.backbone, size,
                                                                              args.batch_size, cl)
                for size in args.image_size for cl in (True, False)}
    for step in variants.values():
        step()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            rates[name].append(step())
    first = statistics.median(next(iter(rates.values())))
    print(f"{args.method} {args.backbone} batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds}:")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<28} {median:7.1f} images/s  ({median / first:.2f}x)")


if __name__ == "__main__":
    main()
