"""SimCLRv2's semi-supervised table in miniature: pretrain simclr2, then, with 1% and 10% of the labels, the
supervised baseline, the linear probe, fine-tuning from the backbone and from the first head layer, and
distillation into a student of the same size and a smaller one.

    python bench/simclr2_table.py --train /tmp/cifar/train --test /tmp/cifar/test --out runs/simclr2-table

Every stage is an `sslforge` command run in this process (`pretrain.cli.main`), printed before it runs; every
accuracy is the one that command prints (top-1/top-5 on all of --test). Each row's result is saved as JSON in
OUT/results/ and skipped when the script runs again; an interrupted training resumes from its checkpoint. At
the end OUT/table.md holds the table, the settings and every command. The labelled images of a fraction are the
same for every row (class-balanced, seeded: pretrain/finetune/labels.py), and the 1% lie inside the 10%.

Rows (columns: the label fractions):
  supervised      `sslforge finetune --from-scratch`: the same backbone and recipe from random weights
  linear          `sslforge eval linear --label-fraction F` on the frozen simclr2 embedding (backbone + head layer 1)
  ft-backbone     `sslforge finetune --from-head-layer 0`: the simclr2 backbone alone + a new classifier
  ft-head1        `sslforge finetune --from-head-layer 1`: backbone + first head layer (SimCLRv2's choice)
  distill-same    `sslforge distill --teacher ft-head1` into a fresh ResNet-18, on all --train images, no labels
  distill-small   the same into a smaller student (--small-student, default timm's resnet10t: 4.9 M parameters
                  against ResNet-18's 11.2 M)

Smoke run (seconds of CPU per stage): --pretrain-epochs 1 --pretrain-images 256 --finetune-epochs 1,1
--distill-epochs 1 --distill-images 256 --test-images 200 --batch-size 32 --label-seeds 0.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import sys
import time
from pathlib import Path

ROWS = {
    "supervised": "supervised from scratch (ResNet-18, same recipe)",
    "linear": "linear probe on the frozen simclr2 embedding",
    "ft-backbone": "fine-tuned simclr2, from the backbone",
    "ft-head1": "fine-tuned simclr2, from the first head layer",
    "distill-same": "distilled student, ResNet-18 (teacher: the row above)",
    "distill-small": "distilled student, smaller ({small})",
}
RESULT = re.compile(r"top-1 ([0-9.]+)\s+top-5 ([0-9.]+)")


class Stage:
    """Runs `sslforge` commands in this process, echoing their output, and keeps every command for the table."""

    def __init__(self, log: list[str]):
        self.log = log

    def __call__(self, argv: list[str]) -> str:
        from pretrain.cli import main

        command = "sslforge " + shlex.join(argv)
        print(f"\n$ {command}", flush=True)
        self.log.append(command)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(_Tee(buffer, sys.stdout)):
            code = main(argv)
        if code:
            raise SystemExit(f"the command above failed with exit status {code}")
        return buffer.getvalue()


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def accuracy(printed: str) -> tuple[float, float]:
    found = RESULT.findall(printed)
    if not found:
        raise SystemExit("no 'top-1 ... top-5 ...' line in the command's output")
    return float(found[-1][0]), float(found[-1][1])


def resumable(out: Path) -> list[str]:
    """`--resume` for a run folder a killed run left with a checkpoint and no model dir yet."""
    return ["--resume"] if (out / "checkpoint.pt").is_file() and not (out / "model.json").is_file() else []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="labelled training images, e.g. /tmp/cifar/train (50,000)")
    p.add_argument("--test", required=True, help="labelled test images, e.g. /tmp/cifar/test (10,000)")
    p.add_argument("--out", default="runs/simclr2-table", help="folder for every run, results/ and table.md")
    p.add_argument("--fractions", default="0.01,0.1", help="label fractions, the table's columns")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128, help="pretraining and distillation batch")
    p.add_argument("--pretrain-epochs", type=int, default=8,
                   help="simclr2 epochs over --pretrain-images (default 8: 3,120 steps of the 50,000 CIFAR-10 images, "
                        "16 min on 2 CPU cores, kNN top-1 0.50 against 0.36 at random init)")
    p.add_argument("--pretrain-images", type=int, default=None, help="a fixed random subset (default: all)")
    p.add_argument("--finetune-epochs", default="60,12",
                   help="fine-tuning epochs per fraction, for the supervised and fine-tuned rows alike")
    p.add_argument("--finetune-batch-size", type=int, default=None,
                   help="fine-tuning batch (default: sslforge finetune's, 64 or the labelled images when fewer)")
    p.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="the fine-tuned rows' --backbone-lr-scale (default: sslforge finetune's)")
    p.add_argument("--probe-epochs", type=int, default=100, help="linear-probe epochs (on cached features)")
    p.add_argument("--distill-epochs", type=int, default=1, help="distillation epochs over --distill-images")
    p.add_argument("--distill-images", type=int, default=20000,
                   help="unlabelled --train images to distill on, a fixed random subset (0 = all)")
    p.add_argument("--small-student", default="resnet10t", help="the smaller student's backbone")
    p.add_argument("--test-images", type=int, default=None,
                   help="score on a fixed subset of --test (symbolic links in OUT/test; default: all of it)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-seeds", default=None,
                   help="seeds for the supervised, linear and fine-tuned rows, e.g. 0,1,2: each seed picks its own "
                        "labelled images, initial classifier and augmentation, and each cell is the mean +- standard "
                        "deviation over them (default: --seed and the next two); the distilled rows learn from "
                        "--seed's teacher")
    args = p.parse_args(argv)
    args.label_seeds = ([int(x) for x in args.label_seeds.split(",")] if args.label_seeds
                        else [args.seed, args.seed + 1, args.seed + 2])
    if args.seed not in args.label_seeds:
        p.error(f"--label-seeds must include --seed ({args.seed}): the distilled rows' teacher is trained with it")
    return args


def scored_test_folder(args: argparse.Namespace, out: Path) -> str:
    """--test, or a fixed random subset of it linked into OUT/test (smoke runs)."""
    if args.test_images is None:
        return args.test
    from pretrain.data.images import scan_images

    images = scan_images(args.test).random_subset(args.test_images, args.seed)
    root = out / f"test-{args.test_images}"
    for path in images.paths:
        link = root / path.relative_to(images.root)
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return str(root)


class Pipeline:
    """The stages of the table; each row is computed once (OUT/results/ROW-FRACTION.json) and read back after."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.results = self.out / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.test = scored_test_folder(args, self.out)
        self.commands: list[str] = []
        self.run = Stage(self.commands)
        self.common = ["--workers", str(args.workers), "--device", args.device, "--seed", str(args.seed)]
        self.size = ["--image-size", str(args.image_size), "--no-small-stem"]  # ResNet-18's standard stem at 32 px
        self.ssl = self.out / "simclr2"
        self.check_settings()

    def check_settings(self) -> None:
        """OUT/settings.json records what the rows were computed with; another setting in the same --out is refused
        (the table would mix them). Only --workers and --device may change."""
        mine = {k: v for k, v in vars(self.args).items() if k not in ("workers", "device")}
        path = self.out / "settings.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = sorted(k for k in mine.keys() | saved.keys() if mine.get(k) != saved.get(k))
            if changed:
                k = changed[0]
                raise SystemExit(f"{self.out} holds rows computed with --{k.replace('_', '-')} {saved.get(k)} (now "
                                 f"{mine.get(k)}): use another --out, or the same settings to continue")
        else:
            path.write_text(json.dumps(mine, indent=2) + "\n")

    def row(self, name: str, fraction: float | None, produce, seed: int | None = None) -> dict:
        path = self.results / (f"{self.tag(name, fraction, seed)}.json" if fraction is not None else f"{name}.json")
        if path.is_file():
            saved = json.loads(path.read_text())
            print(f"\n[{path.name}] done earlier: top-1 {saved.get('top1', saved.get('knn_top1'))}")
            self.commands.extend(saved["commands"])
            return saved
        start, first = time.perf_counter(), len(self.commands)
        result = {"row": name, "fraction": fraction, **produce()}
        result.update(minutes=round((time.perf_counter() - start) / 60, 2), commands=self.commands[first:])
        path.write_text(json.dumps(result, indent=2) + "\n")
        return result

    def evaluate(self, argv: list[str]) -> dict:
        top1, top5 = accuracy(self.run([*argv, "--quiet", "--workers", str(self.args.workers), "--device",
                                        self.args.device]))
        return {"top1": top1, "top5": top5}

    def pretrain(self) -> dict:
        a = self.args
        self.run(["pretrain", *resumable(self.ssl), "--method", "simclr2", "--data", a.train, "--backbone",
                  "resnet18", *self.size, "--epochs", str(a.pretrain_epochs), "--batch-size", str(a.batch_size),
                  *(["--max-images", str(a.pretrain_images)] if a.pretrain_images else []),
                  "--checkpoint-every-steps", "100", "--out", str(self.ssl), "--quiet", *self.common])
        knn = self.evaluate(["eval", "knn", "--model", str(self.ssl), "--train", a.train, "--test", self.test])
        training = json.loads((self.ssl / "model.json").read_text())["training"]
        return {"knn_top1": knn["top1"], "knn_top5": knn["top5"],
                "random_init_knn_top1": random_init_knn(a, self.ssl, self.test), "steps": training["steps"],
                "train_minutes": round(training["wall_time_s"] / 60, 2)}

    def labels(self, fraction: float, seed: int) -> list[str]:
        return ["--train", self.args.train, "--test", self.test, "--label-fraction", f"{fraction:g}", "--seed",
                str(seed)]

    def tag(self, name: str, fraction: float, seed: int | None = None) -> str:
        """ROW-FRACTION for --seed (the names of a single-seed table), ROW-FRACTION-seedS for the other seeds."""
        return f"{name}-{fraction:g}" + ("" if seed in (None, self.args.seed) else f"-seed{seed}")

    def folder(self, name: str, fraction: float, seed: int | None = None) -> Path:
        return self.out / self.tag(name, fraction, seed)

    def finetune(self, name: str, fraction: float, seed: int, epochs: int, *start: str) -> dict:
        out = self.folder(name, fraction, seed)
        printed = self.run(["finetune", *resumable(out), *start, *self.labels(fraction, seed), "--epochs", str(epochs),
                            *(["--batch-size", str(self.args.finetune_batch_size)] if self.args.finetune_batch_size
                              else []),
                            *(["--backbone-lr-scale", f"{self.args.backbone_lr_scale:g}"]
                              if self.args.backbone_lr_scale is not None and "--from-scratch" not in start else []),
                            "--out", str(out), "--quiet", "--workers", str(self.args.workers), "--device",
                            self.args.device])
        top1, top5 = accuracy(printed)
        return {"top1": top1, "top5": top5, "model_dir": str(out)}

    def linear(self, fraction: float, seed: int) -> dict:
        return self.evaluate(["eval", "linear", "--model", str(self.ssl), *self.labels(fraction, seed), "--epochs",
                              str(self.args.probe_epochs), "--no-save"])

    def distill(self, name: str, fraction: float, backbone: str) -> dict:
        a, student = self.args, self.folder(name, fraction)
        self.run(["distill", *resumable(student), "--teacher", str(self.folder("ft-head1", fraction)), "--data",
                  a.train, "--backbone", backbone, *self.size, "--epochs", str(a.distill_epochs), "--batch-size",
                  str(a.batch_size), *(["--max-images", str(a.distill_images)] if a.distill_images else []),
                  "--transform-arg", "jitter_p=0", "--transform-arg", "gray_p=0", "--transform-arg", "min_scale=0.5",
                  "--checkpoint-every-steps", "100", "--out", str(student), "--quiet", *self.common])
        return {**self.evaluate(["eval", "head", "--model", str(student), "--test", self.test]),
                "model_dir": str(student)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    epochs = dict(zip(fractions, (int(e) for e in args.finetune_epochs.split(","))))
    if len(epochs) != len(fractions):
        raise SystemExit("--finetune-epochs needs one value per fraction")
    p = Pipeline(args)
    pre = p.row("pretrain", None, p.pretrain)
    table: dict[tuple[str, float], list[dict]] = {}
    for f in fractions:
        labelled = {  # one run per label seed
            "supervised": lambda f, s: p.finetune("supervised", f, s, epochs[f], "--from-scratch", "--backbone",
                                                  "resnet18", *p.size),
            "linear": lambda f, s: p.linear(f, s),
            "ft-backbone": lambda f, s: p.finetune("ft-backbone", f, s, epochs[f], "--model", str(p.ssl),
                                                   "--from-head-layer", "0"),
            "ft-head1": lambda f, s: p.finetune("ft-head1", f, s, epochs[f], "--model", str(p.ssl),
                                                "--from-head-layer", "1"),
        }
        for name, produce in labelled.items():
            table[name, f] = [p.row(name, f, lambda f=f, s=s, go=produce: go(f, s), s) for s in args.label_seeds]
        table["distill-same", f] = [p.row("distill-same", f, lambda f=f: p.distill("distill-same", f, "resnet18"))]
        table["distill-small", f] = [p.row("distill-small", f,
                                           lambda f=f: p.distill("distill-small", f, args.small_student))]
    text = render(args, pre, table, fractions, epochs, p.commands, p.test)
    (p.out / "table.md").write_text(text)
    print("\n" + text)


def random_init_knn(args: argparse.Namespace, ssl: Path, test: str) -> float:
    """kNN top-1 of the same network at random initialisation (seed 0): the floor a method must beat."""
    import torch

    from pretrain.data.images import scan_images
    from pretrain.ground.modeldir import load_model_dir
    from pretrain.train.evaluate import class_count, extract_features, knn_evaluate

    model = load_model_dir(ssl)
    torch.manual_seed(0)
    network = model.random_backbone()
    train, queries = scan_images(args.train), scan_images(test)
    kwargs = dict(workers=args.workers, progress=False)
    bank = extract_features(network, train, model.preprocessing, **kwargs)
    return knn_evaluate(bank, extract_features(network, queries, model.preprocessing, **kwargs),
                        class_count(train, queries))["top1"]


def cell(runs: list[dict]) -> str:
    """One run: top-1 / top-5; several: top-1 mean +- sample standard deviation / top-5 mean."""
    top1, top5 = [r["top1"] for r in runs], [r["top5"] for r in runs]
    if len(runs) == 1:
        return f"{top1[0]:.4f} / {top5[0]:.4f}"
    mean = sum(top1) / len(top1)
    sd = (sum((x - mean) ** 2 for x in top1) / (len(top1) - 1)) ** 0.5
    return f"{mean:.4f} +- {sd:.4f} / {sum(top5) / len(top5):.4f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render(args, pre: dict, table: dict, fractions: list[float], epochs: dict, commands: list[str],
           test: str) -> str:
    head = " | ".join(f"{f:.0%} labels" for f in fractions)
    seeds = len(args.label_seeds)
    what = "top-1 / top-5" if seeds == 1 else f"top-1 mean +- sd over {seeds} label seeds / top-5 mean"
    lines = [f"| method ({Path(test).name}, {what}) | {head} |", "|---|" + "---|" * len(fractions)]
    for name, title in ROWS.items():
        cells = [cell(table[name, f]) for f in fractions]
        lines.append(f"| {title.format(small=args.small_student)} | " + " | ".join(cells) + " |")
    minutes = sum(r["minutes"] for runs in table.values() for r in runs) + pre["minutes"]
    tuning = ", ".join(f"{plural(epochs[f], 'epoch')} at {f:.0%}" for f in fractions)
    settings = " ".join([
        f"simclr2 pretraining: ResNet-18 (standard stem) at {args.image_size} px,",
        f"{plural(args.pretrain_epochs, 'epoch')} of {args.pretrain_images or 'all'} --train images,",
        f"batch {args.batch_size}: {pre['steps']} steps in",
        f"{pre['train_minutes']} min; kNN top-1 {pre['knn_top1']:.4f} against {pre['random_init_knn_top1']:.4f} at",
        f"random init. Fine-tuning: {tuning}, batch {args.finetune_batch_size or 'up to 64'}; linear probe",
        f"{plural(args.probe_epochs, 'epoch')}; distillation {plural(args.distill_epochs, 'epoch')} of",
        f"{args.distill_images or 'all'} unlabelled --train images. Wall time of everything: {minutes:.0f} min."])
    return "\n".join(["## SimCLRv2 in miniature", "", settings, "", *lines, "", "Commands, in order:", "",
                      "```bash", *commands, "```", ""])


if __name__ == "__main__":
    main()
