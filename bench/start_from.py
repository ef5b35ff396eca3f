"""Starting from what exists, three studies on CIFAR-10 at 32 px, one command each (docs/pretrained.md):

    python bench/start_from.py continued --cifar /tmp/cifar10    # simclr on part A, then 10 min more on part B
    python bench/start_from.py distill --cifar /tmp/cifar10      # a teacher into resnet10t vs simclr from scratch
    python bench/start_from.py mae --cifar /tmp/cifar10          # MAE ViT-tiny (patch 4) vs random init, a curve

--cifar holds train/<class>/ and test/<class>/ (`tar -xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10`).

Every run trains for a wall-clock budget: a 12-step timing (its first 3 steps untimed) sizes its epochs (the
schedule then runs to its end, as
a user sizes --epochs), every --curve-every minutes the clock stops for a kNN on --curve-test test images, and at
the end each backbone is scored by the weighted kNN (k=200, T=0.1; the bank: --bank-images training images, the
same for every model of a study) on the whole test set, with its own model dir's preprocessing. `mae` also trains a
linear probe. Results go to OUT/<study>.json (default bench/results/start-from/), model dirs to --runs; a study's
runs that finished are reused when the command is run again.

- continued: a ResNet-18 trained by simclr for --start-minutes on part A (half the training images), then
  --minutes more on part B (the other half) with --init, against --minutes on part B from random init, against
  the start model itself.
- distill: a teacher (--teacher MODEL_DIR, else the continued study's start model, else one trained here for
  --start-minutes) distilled into --student for --minutes (distill_features, cosine), against the same student
  trained --minutes by simclr from scratch; the student's kNN as a fraction of the teacher's. Then a ViT
  teacher's patch tokens (--vit-teacher MODEL_DIR, else the mae study's model, else one trained here) into the
  same student.
- mae: MAE on a ViT-tiny with 4 px patches for --mae-minutes, its kNN curve, against the same ViT at random init.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import runinfo  # noqa: E402

SIZE = 32
CALIBRATION_STEPS = 12
WARM_UP_STEPS = 3  # the first steps (compilation, allocator and loader start-up) are not timed
VIT_TINY = {"backbone": "vit_tiny_patch16_224", "backbone_args": {"img_size": SIZE, "patch_size": 4}}


class _Stop(Exception):
    pass


class Scorer:
    """kNN (and a linear probe) of a backbone: a fixed bank of training images, the test images or a subset."""

    def __init__(self, args):
        from pretrain.data.images import scan_images
        from pretrain.train.evaluate import class_count

        self.args = args
        self.bank = scan_images(Path(args.cifar) / "train").random_subset(args.bank_images, 0)
        self.test = scan_images(Path(args.cifar) / "test")
        self.curve_test = self.test.random_subset(args.curve_test, 0)
        self.classes = class_count(self.bank, self.test)

    def features(self, backbone, preprocessing, images):
        from pretrain.train.evaluate import extract_features

        return extract_features(backbone, images, preprocessing, workers=self.args.workers, device=self.args.device,
                                progress=False)

    def knn(self, backbone, preprocessing, full: bool = True, linear: bool = False) -> dict:
        from pretrain.train.evaluate import knn_evaluate, linear_probe

        bank = self.features(backbone, preprocessing, self.bank)
        test = self.features(backbone, preprocessing, self.test if full else self.curve_test)
        out = {"knn_top1": knn_evaluate(bank, test, self.classes, 200, 0.1)["top1"]}
        if linear:
            out["linear_top1"] = linear_probe(bank, test, self.classes, epochs=self.args.probe_epochs,
                                              progress=False).metrics["top1"]
        return out

    def model_dir(self, path: Path, linear: bool = False) -> dict:
        from pretrain.ground.modeldir import load_model_dir

        model = load_model_dir(path)
        return self.knn(model.load_backbone(self.args.device), model.preprocessing, linear=linear)

    def random_init(self, path: Path, linear: bool = False) -> dict:
        from pretrain.ground.modeldir import load_model_dir

        model = load_model_dir(path)
        torch.manual_seed(0)
        return self.knn(model.random_backbone().to(self.args.device), model.preprocessing, linear=linear)


def split_parts(train: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two disjoint halves of the training images, as class folders of symbolic links (each class split in two)."""
    from pretrain.data.images import scan_images

    images = scan_images(train)
    parts = out / "part-a", out / "part-b"
    if all((p / ".complete").is_file() for p in parts):
        return parts
    rng = random.Random(seed)
    for c, name in enumerate(images.classes):
        paths = [p for p, label in zip(images.paths, images.labels) if label == c]
        rng.shuffle(paths)
        for part, half in zip(parts, (paths[:len(paths) // 2], paths[len(paths) // 2:])):
            (part / name).mkdir(parents=True, exist_ok=True)
            for path in half:
                link = part / name / path.name
                if not link.exists():
                    link.symlink_to(path.resolve())
    for part in parts:
        (part / ".complete").write_text("")
    return parts


def timed_run(args, scorer: Scorer, out: Path, minutes: float, **settings) -> dict:
    """Train `settings` (PretrainConfig fields) for about `minutes` of wall clock into the model dir `out`, with
    a kNN curve; a finished run in `out` is scored again instead."""
    from pretrain.data.images import scan_images
    from pretrain.train.config import PretrainConfig
    from pretrain.train.trainer import Trainer

    record = out / "start-from-run.json"
    if record.is_file() and (out / "model.json").is_file():
        return json.loads(record.read_text())
    # compile is the same for the timing and the run (auto would decide differently for the 12 steps than for
    # the run they size, and the run would then miss its budget), and the same for every run of a study
    base = dict(image_size=SIZE, batch_size=args.batch, workers=args.workers, device=args.device, seed=args.seed,
                checkpoint_every=1000, compile=args.compile)

    def config(path: Path, epochs: int, max_images: int | None = None) -> PretrainConfig:
        return PretrainConfig.from_dict({**base, **settings, "out": str(path), "epochs": epochs,
                                         "max_images": max_images})

    ticks: list[float] = []

    def tick(step: int) -> None:
        ticks.append(time.perf_counter())
        if step == CALIBRATION_STEPS:
            raise _Stop

    calibration = out.parent / f".{out.name}-calibration"
    shutil.rmtree(calibration, ignore_errors=True)
    with contextlib.suppress(_Stop):
        Trainer(config(calibration, 1000, args.batch * (CALIBRATION_STEPS + 1)), progress=False, on_step=tick).fit()
    shutil.rmtree(calibration, ignore_errors=True)
    seconds_per_step = (ticks[-1] - ticks[WARM_UP_STEPS - 1]) / max(1, len(ticks) - WARM_UP_STEPS)
    steps_per_epoch = max(1, len(scan_images(settings["data"])) // args.batch)
    epochs = max(1, round(minutes * 60 / seconds_per_step / steps_per_epoch))
    curve, clock = [], {"start": time.perf_counter(), "paused": 0.0, "next": args.curve_every * 60}

    def on_step(step: int) -> None:
        t = time.perf_counter() - clock["start"] - clock["paused"]
        if args.curve_every and t >= clock["next"]:
            began = time.perf_counter()
            curve.append({"minutes": round(t / 60, 3), "step": step,
                          **scorer.knn(trainer.model.backbone, trainer.preprocessing, full=False)})
            clock["paused"] += time.perf_counter() - began
            clock["next"] += args.curve_every * 60

    resume = (out / "checkpoint.pt").is_file()  # an interrupted run continues (its curve starts again)
    trainer = Trainer(config(out, epochs), resume=resume, progress=not args.quiet, on_step=on_step)
    trainer.fit()
    result = {"model_dir": str(out), "epochs": epochs, "steps": trainer.total_steps,
              "train_minutes": round((time.perf_counter() - clock["start"] - clock["paused"]) / 60, 3),
              "settings": {k: v for k, v in trainer.cfg.to_dict().items()
                           if k in ("method", "backbone", "backbone_args", "init", "optimizer", "lr", "weight_decay",
                                    "transform_args", "method_args", "batch_size", "data")},
              "curve": curve, **scorer.model_dir(out, linear=settings["method"] == "mae")}
    record.write_text(json.dumps(result, indent=2))
    return result


def write_result(args, study: str, result: dict, header: dict) -> Path:
    """OUT/<study>.json: `header` (runinfo's commit, machine and starting load average), the command, the study's
    settings and its result, with the closing load average."""
    path = Path(args.out) / f"{study}.json"
    keep = ("cifar", "minutes", "start_minutes", "mae_minutes", "batch", "bank_images", "curve_test", "curve_every",
            "seed", "backbone", "student", "device")
    runinfo.write_result({"study": study, "command": " ".join(sys.argv), **header,
                          "settings": {k: getattr(args, k) for k in keep}, **result}, path)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path


def start_model(args, scorer: Scorer) -> dict:
    part_a, _ = split_parts(Path(args.cifar) / "train", Path(args.runs))
    return timed_run(args, scorer, Path(args.runs) / "start-simclr", args.start_minutes, method="simclr",
                     data=str(part_a), backbone=args.backbone)


def continued(args, scorer: Scorer) -> dict:
    _, part_b = split_parts(Path(args.cifar) / "train", Path(args.runs))
    start = start_model(args, scorer)
    runs = Path(args.runs)
    cont = timed_run(args, scorer, runs / "continued-simclr", args.minutes, method="simclr", data=str(part_b),
                     init=start["model_dir"], backbone=args.backbone)
    scratch = timed_run(args, scorer, runs / "scratch-simclr", args.minutes, method="simclr", data=str(part_b),
                        backbone=args.backbone)
    return {"start": start, "continued": cont, "from_random_init": scratch,
            "continued_minus_start": cont["knn_top1"] - start["knn_top1"],
            "continued_minus_scratch": cont["knn_top1"] - scratch["knn_top1"]}


def vit_teacher(args, scorer: Scorer) -> dict:
    return timed_run(args, scorer, Path(args.runs) / "mae-vit-tiny", args.mae_minutes, method="mae",
                     data=str(Path(args.cifar) / "train"), **vit_settings(args))


def vit_settings(args) -> dict:
    return {"backbone": args.vit, "backbone_args": dict(VIT_TINY["backbone_args"], **args.vit_args)}


def distill(args, scorer: Scorer) -> dict:
    runs, train = Path(args.runs), str(Path(args.cifar) / "train")
    if args.teacher:
        teacher = {"model_dir": args.teacher, **scorer.model_dir(Path(args.teacher))}
    else:
        teacher = start_model(args, scorer)
    student = dict(backbone=args.student, data=train)
    distilled = timed_run(args, scorer, runs / "student-distill", args.minutes, method="distill_features",
                          method_args={"teacher": teacher["model_dir"]}, **student)
    scratch = timed_run(args, scorer, runs / "student-simclr", args.minutes, method="simclr", **student)
    if args.vit_teacher:
        vit = {"model_dir": args.vit_teacher, **scorer.model_dir(Path(args.vit_teacher))}
    else:
        vit = vit_teacher(args, scorer)
    from_vit = timed_run(args, scorer, runs / "student-distill-vit", args.minutes, method="distill_features",
                         method_args={"teacher": vit["model_dir"]}, **student)
    return {"teacher": teacher, "distilled": distilled, "simclr_from_scratch": scratch,
            "fraction_of_teacher": distilled["knn_top1"] / teacher["knn_top1"],
            "vit_teacher": vit, "distilled_from_vit": from_vit,
            "fraction_of_vit_teacher": from_vit["knn_top1"] / vit["knn_top1"]}


def mae(args, scorer: Scorer) -> dict:
    trained = vit_teacher(args, scorer)
    floor = scorer.random_init(Path(trained["model_dir"]), linear=True)
    return {"mae": trained, "random_init": floor,
            "knn_gain": trained["knn_top1"] - floor["knn_top1"],
            "linear_gain": trained["linear_top1"] - floor["linear_top1"]}


STUDIES = {"continued": continued, "distill": distill, "mae": mae}


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--cifar", required=True, help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "start-from"), help="where OUT/<study>.json goes")
    p.add_argument("--runs", default="runs/start-from", help="model dirs of the runs (reused when finished)")
    p.add_argument("--minutes", type=float, default=10.0, help="budget of the continued, scratch and student runs")
    p.add_argument("--start-minutes", type=float, default=30.0, help="budget of the start model / teacher")
    p.add_argument("--mae-minutes", type=float, default=30.0, help="budget of the MAE ViT")
    p.add_argument("--backbone", default="resnet18", help="the start model's and teacher's backbone")
    p.add_argument("--student", default="resnet10t", help="the student of the distill study")
    p.add_argument("--vit", default=VIT_TINY["backbone"], help="the ViT of the mae study")
    p.add_argument("--vit-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="more backbone arguments of the ViT (img_size=32 and patch_size=4 are set)")
    p.add_argument("--teacher", help="distill: a model dir to use as the CNN teacher instead of training one")
    p.add_argument("--vit-teacher", help="distill: a ViT model dir to use as the second teacher")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--bank-images", type=int, default=10000, help="training images of the kNN bank")
    p.add_argument("--curve-test", type=int, default=2000, help="test images of each curve point")
    p.add_argument("--curve-every", type=float, default=2.0, help="minutes between curve points (0: none)")
    p.add_argument("--probe-epochs", type=int, default=100, help="epochs of the mae study's linear probe")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", choices=("true", "false"), default="false",
                   help="torch.compile for every run of the study and its timing alike (default: false)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.vit_args = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.vit_arg)}
    for part in ("train", "test"):
        if not (Path(args.cifar) / part).is_dir():
            p.error(f"--cifar {args.cifar} has no {part}/ folder")
    began, header = time.perf_counter(), runinfo.header({})
    del header["settings"]
    result = STUDIES[args.study](args, Scorer(args))
    result["wall_minutes"] = round((time.perf_counter() - began) / 60, 2)
    write_result(args, args.study, result, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
