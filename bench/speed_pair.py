"""sslforge against lightly 1.6.0 at fixed settings, alternately, three runs each: images/s, whole-process time, RSS.

    python bench/speed_pair.py step                  # steady images/s: simclr, byol, vicreg x small/standard stem
    python bench/speed_pair.py run --preset 1280     # whole process: 1,280 images, 1 epoch (the issue's run)
    python bench/speed_pair.py run --preset budget   # whole process: the 10-minute-budget run (5,000 images, 2 epochs)
    python bench/speed_docs.py pair bench/results/speed/*.json > docs/benchmarks/speed-pair.md

Both sides get the same images (a folder of links to one seeded subset of --data, the bundled CIFAR-10 sample by
default), ResNet-18, 32 px, batch 128, the same workers and intra-op threads, the same method with lightly's
example head sizes, and the views of lightly's benchmark (bench/lightly_recipes.py; sslforge's own pipeline set
to the same recipe: no blur, lightly's colour strength). sslforge runs with its defaults otherwise (compile auto,
channels-last, fused optimizer steps). Every run is its own process; the two toolkits alternate (sslforge first in
odd rounds, lightly first in even ones). `step` times steps after a warm-up inside the process (sslforge's real
Trainer, lightly's documented loop); `run` times the whole process from the parent: imports, start-up, training,
and writing the trained backbone (sslforge's model dir, lightly's state_dict). Peak RSS: the main process, and
the largest loader worker.

Needs lightly (`pip install -c constraints.txt -e '.[bench]'`). Writes bench/results/speed/MODE-DATE.json.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runinfo  # noqa: E402
from pretrain_speed import SSLFORGE_HEADS  # noqa: E402

# the 1,280-image run; the 10-minute budget: about 80 steps of batch 128 on a 2-core CPU at 32 px
PRESETS = {"1280": {"images": 1280, "epochs": 1}, "budget": {"images": 5000, "epochs": 2}}
# lightly's benchmark views in sslforge's terms: SimCLR views without blur; VICReg's colour strength 0.5
VIEW_ARGS = {"simclr": {"blur_p": 0.0}, "byol": {"blur_p": 0.0}, "vicreg": {"blur_p": 0.0, "strength": 0.5}}


def sslforge_view_args(method: str) -> dict:
    import lightly_recipes

    own = getattr(lightly_recipes, "sslforge_view_args", None)  # the recipes module's own, where it has one
    return own(method) if own else VIEW_ARGS.get(method, {})


def linked_subset(data: str, count: int, folder: Path, seed: int = 0) -> Path:
    """A folder of links to `count` images of `data` picked by `seed` (class folders kept): both toolkits read it."""
    from pretrain.data.images import scan_images

    images = scan_images(data).random_subset(count, seed)
    root = Path(images.root)
    for path in images.paths:
        link = folder / Path(path).relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())
    return folder


def worker_rss_mb() -> float:
    """The largest finished child (loader worker) of this process."""
    gc.collect()
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def sslforge_argv(s: dict, out: Path) -> list[str]:
    argv = ["pretrain", "--method", s["method"], "--data", s["data"], "--out", str(out), "--backbone", "resnet18",
            "--image-size", str(s["size"]), "--batch-size", str(s["batch"]), "--epochs", str(s["epochs"]),
            "--workers", str(s["workers"]), "--threads", str(s["threads"]), "--device", s["device"],
            "--small-stem" if s["stem"] == "small" else "--no-small-stem", "--quiet"]
    for k, v in {**SSLFORGE_HEADS.get(s["method"], {})}.items():
        argv += ["--method-arg", f"{k}={v}"]
    for k, v in sslforge_view_args(s["method"]).items():
        argv += ["--transform-arg", f"{k}={v}"]
    return argv


def sslforge_steps(s: dict, out: Path) -> float:
    """Steady images/s of sslforge's Trainer (the CLI's own config) after `warmup` steps."""
    from pretrain.cli import build_parser
    from pretrain.train.options import config_from_args
    from pretrain.train.trainer import Trainer

    cfg, _ = config_from_args(build_parser().parse_args(sslforge_argv(s, out)))
    ticks: list[float] = []

    class Done(Exception):
        pass

    def on_step(step: int) -> None:
        ticks.append(time.perf_counter())
        if step == s["warmup"] + s["steps"]:
            raise Done

    trainer = Trainer(cfg, on_step=on_step, progress=False)
    with contextlib.suppress(Done):
        trainer.fit()
    s["compiled"] = trainer.compiled  # compile auto: on when the planned run (epochs x steps) repays it
    return s["steps"] * s["batch"] / (ticks[-1] - ticks[s["warmup"] - 1])


def lightly_loop(s: dict, out: Path, steps: int | None) -> float:
    """lightly's documented loop for the method; `steps` timed after `warmup` (None: every epoch, then save)."""
    import lightly_recipes

    backbone, loader, step, *_ = lightly_recipes.build(s["method"], s["size"], s["data"], s["batch"], s["workers"],
                                                   cifar_stem=s["stem"] == "small", device=s["device"],
                                                   total_steps=s["epochs"] * (s["images"] // s["batch"]))
    ticks, index = [], 0
    for _ in range(s["epochs"] if steps is None else 10**9):
        for batch in loader:
            step(batch, index)
            index += 1
            ticks.append(time.perf_counter())
            if steps is not None and index == s["warmup"] + steps:
                return steps * s["batch"] / (ticks[-1] - ticks[s["warmup"] - 1])
    torch.save(backbone.state_dict(), out / "backbone.pt")
    return index * s["batch"] / (ticks[-1] - ticks[0]) if len(ticks) > 1 else 0.0


def child(s: dict) -> dict:
    torch.set_num_threads(s["threads"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        out.mkdir()
        if s["toolkit"] == "sslforge" and s["mode"] == "run":
            from pretrain.cli import main as cli

            code = cli(sslforge_argv(s, out / "model"))
            if code:
                raise SystemExit(code)
            training = json.loads((out / "model" / "model.json").read_text())["training"]
            speed, s["compiled"] = training["images_per_s"], training["compiled"]
        elif s["toolkit"] == "sslforge":
            speed = sslforge_steps(s, out / "model")
        else:
            speed = lightly_loop(s, out, None if s["mode"] == "run" else s["steps"])
    return {"images_per_s": speed, "peak_rss_mb": runinfo.peak_rss_mb(), "worker_peak_rss_mb": worker_rss_mb(),
            "compiled": s.get("compiled")}


def run_timed(script: str, payload: dict) -> dict:
    """One child process, timed from outside: its result plus the whole-process seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, script, "--child", json.dumps(payload)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{payload['toolkit']} {payload['method']} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=("step", "run"), default="step",
                   help="step = steady images/s inside the process; run = a whole training process")
    p.add_argument("--data", default=None, help="image folder (default: the bundled CIFAR-10 sample's train split)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods (default: simclr byol vicreg for step, simclr for run)")
    p.add_argument("--stems", nargs="+", choices=("small", "standard"), default=None,
                   help="ResNet stems (default: both for step, small for run)")
    p.add_argument("--preset", choices=list(PRESETS), default="1280", help="run: images and epochs")
    p.add_argument("--images", type=int, default=None, help="run: images (overrides the preset)")
    p.add_argument("--epochs", type=int, default=None, help="run: epochs (overrides the preset)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each training process")
    p.add_argument("--steps", type=int, default=10, help="step: timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="step: untimed steps before them (at least 1)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each toolkit, alternating")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="result file (default: bench/results/speed/MODE-DATE.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1")
    args.methods = args.methods or (["simclr", "byol", "vicreg"] if args.mode == "step" else ["simclr"])
    args.stems = args.stems or (["small", "standard"] if args.mode == "step" else ["small"])
    preset = PRESETS[args.preset]
    args.images = args.images or (preset["images"] if args.mode == "run"
                                  else args.batch_size * (args.warmup + args.steps + 2))
    args.epochs = args.epochs or (preset["epochs"] if args.mode == "run" else 100)
    if args.data is None and not args.child:
        args.data = runinfo.sample_train()
    return args


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    if runinfo.answer_child(args, child):
        return None
    script = str(Path(__file__).resolve())
    result = runinfo.header({k: v for k, v in vars(args).items() if k != "child"})
    result["mode"], result["cells"], result["complete"] = args.mode, [], False
    out = args.out or Path(__file__).resolve().parent / "results" / "speed" / \
        f"{args.mode}{'-' + args.preset if args.mode == 'run' else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with tempfile.TemporaryDirectory() as tmp:
        data = str(linked_subset(args.data, args.images, Path(tmp) / "images"))
        for method in args.methods:
            for stem in args.stems:
                base = {"mode": args.mode, "method": method, "stem": stem, "data": data, "size": args.image_size,
                        "batch": args.batch_size, "workers": args.workers, "threads": args.threads,
                        "steps": args.steps, "warmup": args.warmup, "epochs": args.epochs, "images": args.images,
                        "device": args.device}
                runs: dict[str, list[dict]] = {"sslforge": [], "lightly": []}
                for r in range(args.rounds):
                    for toolkit in (("sslforge", "lightly") if r % 2 == 0 else ("lightly", "sslforge")):
                        res = run_timed(script, {**base, "toolkit": toolkit})
                        runs[toolkit].append(res)
                        print(f"round {r + 1} {method:7s} {stem:8s} {toolkit:8s} {res['images_per_s']:7.1f} images/s"
                              f" {res['process_s']:6.1f} s  {res['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
                cell = {"method": method, "stem": stem, "runs": runs}
                for toolkit, rs in runs.items():
                    cell[toolkit] = {k: statistics.median(x[k] for x in rs)
                                     for k in ("images_per_s", "process_s", "peak_rss_mb", "worker_peak_rss_mb")}
                result["cells"].append(cell)
                runinfo.write_result(result, out)  # each finished cell is kept if the run is cut short
    result["complete"] = True
    path = runinfo.write_result(result, out)
    print(path)
    return path


if __name__ == "__main__":
    main()
