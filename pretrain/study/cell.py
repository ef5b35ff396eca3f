"""One benchmark cell, in its own process: `python -m pretrain.study.cell CELL_DIR [--quiet]`.

Reads CELL_DIR/cell.json (written by `run_grid`), trains the run (or resumes it from its checkpoint,
or skips training when the model dir is complete), evaluates it and writes CELL_DIR/result.json
atomically. A cell that cannot run by its settings (a method that needs per-view boxes with a
pipeline that has none) or whose loss diverges is finished too, with that status: running it again
would give the same answer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pretrain.ground.atomic import write_json
from pretrain.ground.cliargs import add_quiet
from pretrain.ground.errors import ConfigError
from pretrain.study.report import RESULT_FILE
from pretrain.train.config import PretrainConfig


def run_cell(folder: Path, progress: bool = True) -> dict:
    from pretrain.train.trainer import Trainer, TrainingDiverged

    spec = json.loads((folder / "cell.json").read_text())
    cfg = PretrainConfig.from_dict({**spec["pretrain"], "out": str(folder)}, source=str(folder / "cell.json"))
    base = {"dataset": spec["dataset"]["name"], "method": spec["method"], "transform": spec["transform"],
            "model_dir": str(folder)}
    if not (folder / "model.json").is_file():
        try:
            Trainer(cfg, resume=(folder / "checkpoint.pt").is_file(), progress=progress).fit()
        except ConfigError as e:
            return {**base, "status": "not run", "reason": str(e)}
        except TrainingDiverged as e:
            return {**base, "status": "diverged", "reason": str(e).split(";")[0]}
    return {**base, "status": "ok", "reason": "", **evaluate_cell(folder, cfg, spec, progress)}


def evaluate_cell(folder: Path, cfg: PretrainConfig, spec: dict, progress: bool) -> dict:
    """kNN and linear probe on frozen features of the trained images (the kNN bank / probe training set) and
    the test folder, and fine-tuning on the train folder's labels when asked; plus the training record of
    model.json (time, throughput, peak memory)."""
    from pretrain.data.images import scan_images
    from pretrain.ground.device import select_device
    from pretrain.ground.modeldir import load_model_dir
    from pretrain.train.evaluate import cached_features, class_count, knn_evaluate, linear_probe

    t0 = time.perf_counter()
    model = load_model_dir(folder)
    train_images = scan_images(cfg.data).random_subset(cfg.max_images, cfg.seed)  # the images it trained on
    test_images = scan_images(spec["dataset"]["test"])
    num_classes = class_count(train_images, test_images)
    kwargs = dict(batch_size=256, workers=cfg.workers, device=select_device(cfg.device), progress=progress)
    train = cached_features(model, train_images, desc="train features", **kwargs)
    test = cached_features(model, test_images, desc="test features", **kwargs)
    out: dict = {"linear_top1": None, "linear_top5": None, "knn_top1": None, "knn_top5": None,
                 "finetune_top1": None, "finetune_top5": None}
    if "knn" in spec["eval"]:
        knn = knn_evaluate(train, test, num_classes, **spec["knn"])
        out.update(knn_top1=knn["top1"], knn_top5=knn["top5"])
    if "linear" in spec["eval"]:
        p = spec["linear"]
        probe = linear_probe(train, test, num_classes, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                             weight_decay=p["weight_decay"], optimizer=p["optimizer"], seed=cfg.seed,
                             progress=progress)
        out.update(linear_top1=probe.metrics["top1"], linear_top5=probe.metrics["top5"])
        model.save_head(probe.head, train_images.classes, {**probe.metrics, **p, "train": str(cfg.data),
                                                           "test": spec["dataset"]["test"]})
    if "finetune" in spec["eval"]:
        out.update(finetune_cell(folder, cfg, spec, progress))
    t = model.info["training"]
    on_gpu = t.get("peak_gpu_memory_mb") is not None
    return {**out, "pretrain_min": t["wall_time_s"] / 60, "images_per_s": t["images_per_s"],
            "peak_memory_mb": t["peak_gpu_memory_mb"] if on_gpu else t["peak_rss_mb"],
            "memory_kind": "gpu" if on_gpu else "rss", "device": t["device"], "steps": t["steps"],
            "train_images": len(train.labels), "test_images": len(test.labels), "last_loss": t["last_loss"],
            "eval_min": (time.perf_counter() - t0) / 60}


def finetune_cell(folder: Path, cfg: PretrainConfig, spec: dict, progress: bool) -> dict:
    """`sslforge eval finetune` of the cell's model dir into CELL/finetune (resumed if it was cut)."""
    from pretrain.finetune.run import finetune_once
    from pretrain.ground.modeldir import load_model_dir
    from pretrain.train.config import FinetuneConfig

    ft = FinetuneConfig.from_dict({**spec["finetune"], "model": str(folder), "train": cfg.data,
                                   "test": spec["dataset"]["test"], "out": str(folder / "finetune"),
                                   "seed": cfg.seed, "workers": cfg.workers, "device": cfg.device},
                                  source=f"{folder / 'cell.json'}: finetune")
    metrics = load_model_dir(finetune_once(ft, progress=progress)).info["head"]["metrics"]
    return {"finetune_top1": metrics["top1"], "finetune_top5": metrics["top5"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell_dir", help="the cell's folder, holding cell.json")
    add_quiet(parser)
    args = parser.parse_args(argv)
    folder = Path(args.cell_dir)
    write_json(folder / RESULT_FILE, run_cell(folder, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
