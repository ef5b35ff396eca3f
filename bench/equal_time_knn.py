"""Learning per unit of time: two contenders train one method for the same wall-clock budget, side by side,
and the same kNN scores both backbones along the way and at the end.

    python bench/cifar_val.py CIFAR10_JPG_TAR_GZ /tmp/cifar         # the validation split, once
    python bench/equal_time_knn.py --method byol --data ~/.cache/sslforge/cifar10-sample-v1/train \
        --val /tmp/cifar/val --test /tmp/cifar10/test --minutes 10 --seeds 0,1,2
    python bench/equal_time_knn.py --method byol ... --contenders 'sslforge' 'sslforge;lr=0.001'   # a sweep pair

A contender is `lightly` (lightly 1.6.0's own benchmark recipe for the method: bench/lightly_recipes.py says
which file and statement each setting comes from), `sslforge` (its default recipe), or `sslforge;KEY=VALUE;...`
with pretraining options as in config.yaml (`sslforge;optimizer=sgd;lr=0.3;method_args={temperature: 0.5}`).

Fairness: both contenders train at the same time, on CPU each pinned to its own core with one torch thread and
one loader worker, so whatever else the machine does slows both alike. Each trains until its budget is spent,
with its learning-rate schedule sized to the budget from a 10-step timing before the clock starts (a user
sizes `--epochs` the same way). Every `--curve-every` minutes of training the clock stops and the backbone is
scored by the kNN (k=200, T=0.1, the training images as the bank) on a fixed random `--curve-test` of the
`--eval` split's images; at the end on all of the validation and (when given) test images. Tune on `--eval val`
(the default); score the test set once per final recipe. Both use ResNet-18 with the standard stem at 32 px
(the CIFAR stem costs 16x more per image), batch 128 unless `--batch` says otherwise. A randomly initialised
ResNet-18 is the floor. Each contender's result per seed is one JSON file (bench/equal_time_results.py: the
recipe resolved in full, the code commit, steps, images/s, load average, the curve, the final kNN); a rerun
reuses a result only when its cache key (commit, recipe, settings, seed) is the same, else reruns it.
`python bench/equal_time_report.py` turns the files into docs/benchmarks/equal-time.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equal_time_results as store  # noqa: E402
from equal_time_clock import SIZE, Clock, OutOfTime, Scorer  # noqa: E402
from equal_time_results import slug  # noqa: E402,F401  (the contender file name; tests use it from here)

DEFAULT_BATCH = 128
CALIBRATION_STEPS = 10
PATHLIKE = ("out", "data", "knn_test", "resume", "init")  # where things are, not how they train


def parse_contender(spec: str) -> tuple[str, dict]:
    import yaml

    toolkit, *pairs = spec.split(";")
    if toolkit not in ("sslforge", "lightly") or (pairs and toolkit == "lightly"):
        raise SystemExit(f"a contender is lightly, sslforge or 'sslforge;KEY=VALUE;...' (got {spec!r})")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"contender {spec!r}: {pair!r} is not KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return toolkit, overrides


def sslforge_config(args, overrides: dict, out: str, epochs: int, seed: int, max_images: int | None = None):
    from pretrain.train.config import PretrainConfig

    base = dict(method=args.method, data=args.data, out=out, backbone="resnet18", small_stem=False, image_size=SIZE,
                epochs=epochs, batch_size=args.batch, workers=1, device=args.device, max_images=max_images, seed=seed)
    return PretrainConfig.from_dict({**base, **overrides})


def recipe(args, spec: str) -> dict:
    """The contender's recipe resolved in full, before it runs (part of its cache key): lightly's from
    bench/lightly_recipes.py; sslforge's config with every default filled (the epochs, and the warm-up that
    follows them, are sized from the timing, so they are left to the spec)."""
    toolkit, overrides = parse_contender(spec)
    if toolkit == "lightly":
        import lightly_recipes

        return lightly_recipes.resolve(args.method, SIZE, args.batch)
    from pretrain.data.images import scan_images
    from pretrain.train.runconfig import resolve_config

    cfg = resolve_config(sslforge_config(args, overrides, "unused", 1, 0), scan_images(args.data, warn=False))
    skip = set(PATHLIKE) | {"seed"} | ({"epochs", "warmup_epochs"} - set(overrides))
    return {k: v for k, v in cfg.to_dict().items() if k not in skip}


def sslforge_run(args, overrides: dict, scorer: Scorer) -> dict:
    from pretrain.data.images import scan_images
    from pretrain.train.trainer import Trainer

    batch = overrides.get("batch_size", args.batch)  # a spec may give sslforge its own batch
    runs = tempfile.mkdtemp(prefix="equal-time-knn-")
    try:
        ticks: list[float] = []

        def tick(step: int) -> None:
            ticks.append(time.perf_counter())
            if step == CALIBRATION_STEPS:
                raise OutOfTime

        calibration = Trainer(sslforge_config(args, overrides, f"{runs}/calibration", 100, args.seed,
                                              batch * (CALIBRATION_STEPS + 1)), progress=False, on_step=tick)
        with contextlib.suppress(OutOfTime):
            calibration.fit()
        seconds_per_step = (ticks[-1] - ticks[1]) / (len(ticks) - 2)
        steps_per_epoch = len(scan_images(args.data)) // batch  # full batches only
        epochs = max(1, round(args.minutes * 60 / seconds_per_step / steps_per_epoch))
        del calibration

        done = {"steps": 0}

        def on_step(step: int) -> None:
            done["steps"] = step
            clock.tick(step, trainer.model.backbone)

        trainer = Trainer(sslforge_config(args, overrides, f"{runs}/run", epochs, args.seed), progress=False,
                          on_step=on_step)
        clock = Clock(args.minutes * 60, args.curve_every * 60, scorer)
        with contextlib.suppress(OutOfTime):
            trainer.fit()
        return {**clock.summary(done["steps"], batch), "scheduled_steps": epochs * trainer.steps_per_epoch,
                "log": _log_summary(Path(runs) / "run" / "metrics.csv"),
                "recipe_run": {k: v for k, v in trainer.cfg.to_dict().items() if k not in PATHLIKE},
                "final": scorer.final(trainer.model.backbone)}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def _log_summary(path: Path, every: int = 20) -> list[dict]:
    """Every `every`-th row of a run's metrics.csv: step, loss and the collapse monitor's emb_std."""
    import csv

    if not path.is_file():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{"step": int(r["step"]), "loss": float(r["loss"]), "emb_std": float(r["emb_std"])}
            for r in rows[::every]]


def lightly_run(args, scorer: Scorer) -> dict:
    import lightly_recipes

    def parts(total_steps: int):
        return lightly_recipes.build(args.method, SIZE, args.data, args.batch, workers=1, total_steps=total_steps,
                                     seed=args.seed, device=args.device)

    calibration = parts(10**6)
    ticks = []
    for i, batch in enumerate(calibration.loader):
        calibration.step(_to(batch, args.device), i)
        ticks.append(time.perf_counter())
        if i == CALIBRATION_STEPS:
            break
    seconds_per_step = (ticks[-1] - ticks[1]) / (len(ticks) - 2)
    total = max(1, round(args.minutes * 60 / seconds_per_step))
    del calibration
    backbone, loader, step, *_ = parts(total)
    clock, steps = Clock(args.minutes * 60, args.curve_every * 60, scorer), 0
    with contextlib.suppress(OutOfTime):
        while True:
            for batch in loader:
                step(_to(batch, args.device), steps)
                steps += 1
                clock.tick(steps, backbone)
    return {**clock.summary(steps, args.batch), "scheduled_steps": total, "final": scorer.final(backbone)}


def _to(batch, device: str):
    if device == "cpu":
        return batch
    views = [v.to(device, non_blocking=True) for v in batch[0]]
    return [views, *batch[1:]]


def random_init(args, scorer: Scorer) -> dict:
    from pretrain.ground.backbones import build_backbone, resolve_spec

    torch.manual_seed(args.seed)
    backbone, _ = build_backbone(resolve_spec("resnet18", False, SIZE, {}), SIZE)
    backbone = backbone.to(args.device).to(memory_format=torch.channels_last)
    return {"final": scorer.final(backbone), "curve_top1": scorer.score(backbone)["top1"]}


def child(args) -> None:
    if args.device == "cpu":
        os.sched_setaffinity(0, {args.core})  # the loader worker, forked later, inherits the core
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    scorer = Scorer(args)
    if args.child == "random-init":
        result = random_init(args, scorer)
    else:
        toolkit, overrides = parse_contender(args.child)
        result = lightly_run(args, scorer) if toolkit == "lightly" else sslforge_run(args, overrides, scorer)
    print(json.dumps(result))


def settings(args) -> dict:
    return {k: getattr(args, k) for k in ("method", "data", "val", "test", "eval", "minutes", "curve_every",
                                          "curve_test", "device", "batch")}


def _launch(args, spec: str, seed: int, core: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--method", args.method, "--data", args.data, "--eval", args.eval,
           "--minutes", str(args.minutes), "--seed", str(seed), "--batch", str(args.batch),
           "--curve-every", str(args.curve_every), "--curve-test", str(args.curve_test), "--device", args.device,
           "--child", spec, "--core", str(core)]
    for split in ("val", "test"):
        if getattr(args, split):
            cmd += [f"--{split}", getattr(args, split)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_seed(args, seed: int, group: Path, commit: str, cores: list[int]) -> list[dict]:
    """Both contenders (and the floor) for one seed: each reused when fresh, else (re)run."""
    specs = {spec: recipe(args, spec) for spec in args.contenders}
    keys = {spec: store.cache_key(commit=commit, spec=spec, recipe=r, settings=settings(args), seed=seed)
            for spec, r in specs.items()}
    keys["random-init"] = store.cache_key(commit=commit, spec="random-init", settings=settings(args), seed=seed)
    paths = {spec: store.result_path(group, spec, seed) for spec in args.contenders}
    paths["random-init"] = store.floor_path(group, seed)
    pending = [s for s in paths if store.fresh(paths[s], keys[s]) is None]
    for batch in ([s for s in pending if s != "random-init"], [s for s in pending if s == "random-init"]):
        procs = {spec: _launch(args, spec, seed, core) for spec, core in zip(batch, cores)}
        for spec, proc in procs.items():
            stdout, err = proc.communicate()
            if proc.returncode:
                sys.exit(f"{spec} (seed {seed}) failed:\n{err[-3000:]}")
            result = json.loads(stdout.strip().splitlines()[-1])
            store.write(paths[spec], {"contender": spec, "method": args.method, "seed": seed, "key": keys[spec],
                                      "commit": commit, "settings": settings(args), "recipe": specs.get(spec),
                                      **result})
    return [json.loads(paths[s].read_text()) for s in paths]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr", help="SSL method both contenders train (default: simclr)")
    p.add_argument("--data", required=True, help="labelled training images (class sub-folders); also the kNN bank")
    p.add_argument("--val", help="labelled validation images (bench/cifar_val.py writes CIFAR-10's): every recipe "
                                 "choice is made on these")
    p.add_argument("--test", help="labelled test images, scored at the end when given (once per final recipe)")
    p.add_argument("--eval", choices=("val", "test"), default="val", help="the split the learning curve scores "
                                                                          "(default: val)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each contender, wall clock "
                                                               "(default: 10)")
    p.add_argument("--contenders", nargs=2, default=["sslforge", "lightly"], metavar="SPEC",
                   help="the two contenders: lightly, sslforge or 'sslforge;KEY=VALUE;...' (default: sslforge lightly)")
    p.add_argument("--curve-every", type=float, default=2.0, help="minutes of training between learning-curve "
                                                                  "points (default: 2)")
    p.add_argument("--curve-test", type=int, default=2000, help="images of the --eval split (a fixed random subset) "
                                                                "scored at each curve point (default: 2000; the final "
                                                                "scores use all)")
    p.add_argument("--device", default="cpu", help="cpu (one core per contender) or cuda (both share the GPU)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="batch size of both contenders (default: "
                                                                   f"{DEFAULT_BATCH}; the recipes are for 64-512); "
                                                                   "each toolkit scales its lr with it")
    p.add_argument("--seeds", default="0", help="comma-separated random seeds, each a run of both contenders "
                                                "(default: 0; the published table uses 0,1,2)")
    p.add_argument("--out", default=str(store.RESULTS), help="root of the result files (default: "
                                                              "bench/results/equal-time)")
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # one child's seed
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    for spec in args.contenders:
        parse_contender(spec)
    if args.contenders[0] == args.contenders[1]:
        p.error("--contenders: the two specs are the same; give two different ones")
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",")})
    except ValueError:
        p.error(f"--seeds: comma-separated integers, e.g. 0,1,2 (got {args.seeds!r})")
    if args.seed is not None:
        p.error("--seed is now --seeds (comma-separated: --seeds 0,1,2)")
    if not getattr(args, args.eval):
        p.error(f"--eval {args.eval} needs --{args.eval}, a folder of labelled images (bench/cifar_val.py writes "
                "CIFAR-10's validation split); to score the test set along the curve instead, add --eval test")
    if args.batch < 2:
        p.error(f"--batch must be at least 2 (batch norm needs two images; got {args.batch})")
    from pretrain.data.images import DataError, scan_images
    for option in ("data", "val", "test"):
        if getattr(args, option) is None:
            continue
        try:
            images = len(scan_images(getattr(args, option), warn=False))
        except DataError as e:
            p.error(f"--{option}: {e}")
        if option == "data" and args.batch > images:
            p.error(f"--batch {args.batch} is larger than the {images} images of --data: no full batch to train on")
    from pretrain.ground.errors import ConfigError
    for spec in args.contenders:  # a recipe that cannot be built says so before anything trains
        try:
            recipe(args, spec)
        except (ConfigError, ValueError) as e:
            p.error(f"--contenders {spec!r}: {e}")
    if args.device == "cpu" and len(os.sched_getaffinity(0)) < 2:
        p.error("needs 2 CPU cores: one per contender")
    group = store.group_dir(args.out, args.method, args.minutes, args.batch)
    commit, cores = store.code_commit(), sorted(os.sched_getaffinity(0))[:2]
    for seed in seeds:
        rows = run_seed(args, seed, group, commit, cores)
        report(rows, args, seed, group)


def report(rows: list[dict], args, seed: int, group: Path) -> None:
    """This seed's table to stdout and its learning curves to GROUP/curves-sSEED.png."""
    floor = next(r for r in rows if r["contender"] == "random-init")
    splits = list(floor["final"])
    print(f"{args.method}, seed {seed}, {args.minutes:g} min, batch {args.batch} ({group}); curve on {args.eval}")
    print("| contender | steps | images/s | load | " + " | ".join(f"kNN top-1 {s}" for s in splits) + " |")
    for r in rows:
        steps = f"{r['steps']} | {r['images_per_s']:.1f} | {r['load_average']['mean']:.1f}" if "steps" in r \
            else " | | "
        print(f"| {r['contender']} | {steps} | " + " | ".join(f"{r['final'][s]['top1']:.4f}" for s in splits) + " |")
    from equal_time_report import plot_curves

    plot_curves([r for r in rows if "curve" in r], floor["curve_top1"],
                f"{args.method}: ResNet-18, {SIZE} px, batch {args.batch}, one core each, seed {seed}",
                f"kNN top-1 ({args.curve_test} of the {args.eval} images)", group / f"curves-s{seed}.png")


if __name__ == "__main__":
    main()
