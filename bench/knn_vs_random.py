"""Does a method learn on a CPU budget? kNN top-1 of a pretrained ResNet-18 vs the same network at random init.

    tar -xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10
    python bench/knn_vs_random.py --cifar /tmp/cifar10 --method simclr --train-images 5000 --epochs 1 \
        --out runs/bench-simclr

Pretrains with the library's defaults unless options say otherwise, then evaluates the weighted kNN
(k=200, T=0.1) with the pretraining images as the bank, on a fixed random subset of the test images
and on all of them. Prints a Markdown table for docs/benchmarks/learning.md and writes result.json to the run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pretrain.data.images import scan_images
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.config import PretrainConfig
from pretrain.train.evaluate import Features, cached_features, class_count, extract_features, knn_evaluate
from pretrain.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, required=True, help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--train-images", type=int, default=5000, help="pretraining images (and kNN bank)")
    p.add_argument("--test-subset", type=int, default=1000, help="size of the smaller test subset")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--method", default="simclr", help="any registered method (`sslforge methods`)")
    p.add_argument("--skip-random", action="store_true",
                   help="do not evaluate the random-init baseline (it depends only on the images and the seed)")
    p.add_argument("--out", default="runs/bench-simclr")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra PretrainConfig fields as YAML values, e.g. lr=0.6 optimizer=sgd")
    args = p.parse_args()

    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = PretrainConfig(method=args.method, data=str(args.cifar / "train"), out=args.out, backbone=args.backbone,
                         image_size=32, epochs=args.epochs, batch_size=args.batch_size, workers=args.workers,
                         max_images=args.train_images, **extra)
    start = time.perf_counter()
    trainer = Trainer(cfg, resume=(Path(args.out) / "checkpoint.pt").exists())
    trainer.fit()
    train_s = time.perf_counter() - start

    model = load_model_dir(args.out)
    bank_images = trainer.images
    test_all = scan_images(args.cifar / "test")
    num_classes = class_count(bank_images, test_all)
    torch.manual_seed(0)
    random_backbone = model.random_backbone()
    rows = {}
    embedders = {args.method: lambda imgs: cached_features(model, imgs, workers=args.workers)}
    if not args.skip_random:
        embedders["random init"] = lambda imgs: extract_features(random_backbone, imgs, model.preprocessing,
                                                                 workers=args.workers)
    for name, embed in embedders.items():
        bank, test = embed(bank_images), embed(test_all)
        subset = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))[: args.test_subset]
        rows[name] = {
            f"top1@{args.test_subset}": knn_evaluate(bank, Features(test.features[subset], test.labels[subset]),
                                                     num_classes)["top1"],
            f"top1@{len(test.labels)}": knn_evaluate(bank, test, num_classes)["top1"],
        }
    result = {"config": trainer.cfg.to_dict(), "pretrain_wall_s": round(train_s, 1),
              "training": model.info["training"], "knn": rows}
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))
    cols = list(next(iter(rows.values())))
    print(f"\n| backbone | {' | '.join('kNN ' + c for c in cols)} |\n|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | {' | '.join(f'{r[c]:.3f}' for c in cols)} |")
    print(f"\npretraining: {model.info['training']['steps']} steps, {train_s / 60:.1f} min wall "
          f"({model.info['training']['images_per_s']} images/s), peak RSS {model.info['training']['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
