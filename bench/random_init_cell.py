"""The reference row of a benchmark grid: a cell's network at random initialisation, same evaluations.

    python bench/random_init_cell.py runs/bench-cifar10/cifar10-1k/simclr__baseline

Reads the cell's cell.json (data, test folder, kNN and linear-probe settings) and model.json (architecture),
builds the same backbone with fresh random weights (seeded) and prints its kNN and linear-probe accuracy on
the same images, so a grid's numbers can be read against "no pretraining at all".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pretrain.data.images import scan_images
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.evaluate import class_count, extract_features, knn_evaluate, linear_probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cell", type=Path, help="a finished cell of `sslforge benchmark` (its model dir)")
    args = p.parse_args()
    spec = json.loads((args.cell / "cell.json").read_text())
    cfg = spec["pretrain"]
    model = load_model_dir(args.cell)
    torch.manual_seed(cfg["seed"])
    backbone = model.random_backbone()
    train_images = scan_images(cfg["data"]).random_subset(cfg["max_images"], cfg["seed"])
    test_images = scan_images(spec["dataset"]["test"])
    classes = class_count(train_images, test_images)
    kwargs = dict(workers=cfg["workers"], progress=False)
    train = extract_features(backbone, train_images, model.preprocessing, **kwargs)
    test = extract_features(backbone, test_images, model.preprocessing, **kwargs)
    knn = knn_evaluate(train, test, classes, **spec["knn"])
    lin = spec["linear"]
    probe = linear_probe(train, test, classes, epochs=lin["epochs"], batch_size=lin["batch_size"], lr=lin["lr"],
                         weight_decay=lin["weight_decay"], optimizer=lin["optimizer"], seed=cfg["seed"],
                         progress=False)
    print(f"| random init ({model.spec.name}) | linear top-1 {probe.metrics['top1']:.3f} | linear top-5 "
          f"{probe.metrics['top5']:.3f} | kNN top-1 {knn['top1']:.3f} | kNN top-5 {knn['top5']:.3f} |")


if __name__ == "__main__":
    main()
