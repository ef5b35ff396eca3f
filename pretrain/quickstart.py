"""`make run`: pretrain SimCLR on the bundled CIFAR-10 sample and show that it learned something.

The proof is the kNN accuracy of the trained backbone next to the same architecture with random
weights, both on the sample's 1,000 test images against its 5,000 training images.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch

from pretrain.data.images import sample_dir, scan_images
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.config import PretrainConfig
from pretrain.train.evaluate import cached_features, class_count, extract_features, knn_evaluate
from pretrain.train.trainer import Trainer


def quickstart(out: str = "runs/quickstart", epochs: int = 3, images: int = 2000, backbone: str = "resnet18",
               batch_size: int = 64, progress: bool = True) -> dict[str, dict[str, float]]:
    start = time.perf_counter()
    sample = sample_dir()
    train, test = scan_images(sample / "train"), scan_images(sample / "test")
    print(f"bundled CIFAR-10 sample: {sample} ({len(train)} train / {len(test)} test images, "
          f"{len(train.classes)} classes, 32 px)")

    run = Path(out)
    if (run / "model.json").exists():
        print(f"{run} is already trained: evaluating it again (delete it to retrain)")
    else:
        resume = (run / "checkpoint.pt").exists()
        print(("resuming" if resume else "pretraining") + f" SimCLR, {backbone} (small-image stem), "
              f"{epochs} epochs on {images} images, batch {batch_size} -> {run}")
        cfg = PretrainConfig(method="simclr", data=str(sample / "train"), out=out, backbone=backbone, image_size=32,
                             epochs=epochs, batch_size=batch_size, max_images=images)
        Trainer(cfg, resume=resume, progress=progress).fit()

    model = load_model_dir(run)
    num_classes = class_count(train, test)
    torch.manual_seed(0)
    random_backbone = model.random_backbone()
    results = {}
    for name, features in (
        ("trained", lambda imgs, desc: cached_features(model, imgs, desc=desc, progress=progress)),
        ("random init", lambda imgs, desc: extract_features(random_backbone, imgs, model.preprocessing, desc=desc,
                                                           progress=progress)),
    ):
        results[name] = knn_evaluate(features(train, f"{name}: bank"), features(test, f"{name}: test"), num_classes)

    print(f"\nkNN accuracy (k=200, T=0.1) on the {len(test)} sample test images, {len(train)} images as the bank:")
    print(f"  {'backbone':<12} {'top-1':>7} {'top-5':>7}")
    for name, r in results.items():
        print(f"  {name:<12} {r['top1']:>7.3f} {r['top5']:>7.3f}")
    # `make run` calls .venv/bin/sslforge without activating the environment: show the command that works.
    exe = "sslforge" if shutil.which("sslforge") else os.path.relpath(sys.argv[0])
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Model dir: {run.resolve()}")
    print("next:")
    print(f"  {exe} eval linear --model {run} --train {sample / 'train'} --test {sample / 'test'}")
    print(f"  {exe} pretrain --data YOUR_IMAGES --backbone resnet18 --epochs 100 --out runs/mine")
    print(f"  see {run / 'plots' / 'loss.png'}; `tensorboard --logdir {run / 'tb'}` for live curves")
    return results
