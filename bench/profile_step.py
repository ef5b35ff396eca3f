"""Where one training step's time goes: data, forward, backward, optimizer and the method's extras.

    python bench/profile_step.py                                   # CPU: 4 methods x 32/64 px x 2 stems x 1/2 threads
    python bench/profile_step.py --methods simclr --sizes 32 --stems small --threads 2 --steps 3   # one setting
    python bench/profile_step.py --views loader batched            # also the views made batched in the process
    python bench/profile_step.py --break-even --methods simclr --sizes 32 --stems small --threads 2
    python bench/profile_step.py --device cuda --lightly-pair       # GPU: bf16, channels-last, --gpu-augment, and
                                                                    # lightly 1.6.0 on the same GPU (< 5 minutes)
    python bench/speed_docs.py profile bench/results/profile/*.json > docs/benchmarks/profile.md

Each setting runs in its own process with sslforge's real Trainer setup (model, optimizer, loader, views,
collapse monitor; ResNet-18 with lightly's example head sizes, batch 128) and times `--steps` steps after
`--warmup`, phase by phase with wall clocks (synchronising the GPU at each boundary in CUDA mode):
`data_wait` (the main process waiting for the loader), `to_device` (copy, layout, and the batched views
when they are made in the process), `forward`, `backward`, `optimizer` (step + zero_grad), `extras`
(`after_step`: EMA targets, queues, centres) and `monitor` (the collapse statistics). The loader's own work
is timed apart, one thread as in a worker, per batch: `decode`, `augment`, `collate`. One more step runs under
torch.profiler (its top operators are kept), and one under FlopCounterMode: forward and backward FLOPs over
their times give the fraction of this machine's fp32 GEMM peak (a 2048^3 matmul at the same thread count;
bf16 too on a GPU) that each reaches. `--break-even` times the first step and the steady step eager and
compiled (cold cache, then warm) and gives the steps from which compiling pays: the constant of
pretrain/train/speed.py.

Writes bench/results/profile/<cpu|cuda>-<date>.json (commit, settings, machine, load average before and after).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runinfo  # noqa: E402
from pretrain_speed import SSLFORGE_HEADS  # noqa: E402

PHASES = ("data_wait", "to_device", "forward", "backward", "optimizer", "extras", "monitor")
DATA_WORK = ("decode", "augment", "collate")


def gemm_peak(threads: int, device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
              reps: int = 5) -> float:
    """GFLOP/s of an n^3 matmul at this thread count (the machine's practical fp32 peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def trainer_for(s: dict, out: Path):
    from pretrain.train.config import PretrainConfig
    from pretrain.train.trainer import Trainer

    cfg = PretrainConfig(method=s["method"], data=s["data"], out=str(out), backbone="resnet18",
                         image_size=s["size"], small_stem=s["stem"] == "small", epochs=100, batch_size=s["batch"],
                         max_images=s["batch"] * (s["warmup"] + s["steps"] + 3), workers=s["workers"],
                         threads=s["threads"], method_args=SSLFORGE_HEADS.get(s["method"], {}), device=s["device"],
                         compile=s.get("compile", "false"), gpu_augment=s["views"] == "batched",
                         channels_last=s.get("channels_last", True))
    return Trainer(cfg, progress=False)


def data_work(trainer, batch: int) -> dict:
    """ms per batch of the loader's work, in this process on one thread (as in a worker)."""
    from torch.utils.data import default_collate

    from pretrain.data import load_rgb

    dataset, threads = trainer.loader.dataset, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = [dataset.images.paths[i % len(dataset.images)] for i in range(batch)]
        start = time.perf_counter()
        images = [load_rgb(p) for p in paths]
        decoded = time.perf_counter()
        for image in images:
            dataset.transform(image)
        augmented = time.perf_counter()
        samples = [dataset[(i % len(dataset), i)] for i in range(batch)]
        items = time.perf_counter()
        default_collate(samples)
        collated = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    return {"decode": (decoded - start) * 1e3, "augment": (augmented - decoded) * 1e3,
            "collate": (collated - items) * 1e3}


class Step:
    """One training step of a built Trainer, phase by phase."""

    def __init__(self, trainer):
        from pretrain.methods.base import Progress

        self.t, self.cuda = trainer, trainer.device.type == "cuda"
        self.model, self.opt = trainer.model.train(), trainer.optimizer
        self.model.progress = Progress(0, trainer.steps_per_epoch, trainer.total_steps)
        self.autocast = (torch.autocast(trainer.device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype
                         else contextlib.nullcontext())
        trainer.sampler.set_epoch(0, 0)
        self.batches = iter(trainer.loader)
        self.index = 0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, label=contextlib.nullcontext) -> dict[str, float]:
        t, clock = self.t, [time.perf_counter()]

        def mark() -> None:
            self.sync()
            clock.append(time.perf_counter())

        with label("data_wait"):
            views, _, _ = next(self.batches)
        mark()
        with label("to_device"):
            views, extras = t._to_device(views, 0, self.index)
        mark()
        with label("forward"), self.autocast:
            loss, _ = self.model(views, **extras)
        mark()
        with label("backward"):
            t.scaler.scale(loss).backward()
        mark()
        with label("optimizer"):
            t.scaler.step(self.opt)
            t.scaler.update()
            self.opt.zero_grad(set_to_none=True)
        mark()
        with label("extras"):
            self.model.after_step(self.index, t.total_steps)
        mark()
        with label("monitor"):
            stats = t.monitor.capture(self.index + 1)
            _ = [float(loss), *(float(v) for v in stats.values())]  # the trainer's read of this step
        mark()
        self.index += 1
        return {p: (clock[i + 1] - clock[i]) * 1e3 for i, p in enumerate(PHASES)}


def step_flops(step: Step) -> dict[str, float]:
    """FLOPs of the forward and the backward of one step (FlopCounterMode), without updating the weights."""
    from torch.utils.flop_counter import FlopCounterMode

    views, _, _ = next(step.batches)
    views, extras = step.t._to_device(views, 0, step.index)
    with FlopCounterMode(display=False) as fwd, step.autocast:
        loss, _ = step.model(views, **extras)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    step.opt.zero_grad(set_to_none=True)
    return {"forward": fwd.get_total_flops(), "backward": bwd.get_total_flops()}


def top_ops(step: Step, rows: int = 10) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if step.cuda else [])
    with profile(activities=activities) as prof:
        step(record_function)
    key = "self_device_time_total" if step.cuda else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    return [{"op": e.key, "self_ms": round(getattr(e, key) / 1e3, 2), "calls": e.count} for e in ops[:rows]]


def profile_setting(s: dict) -> dict:
    torch.set_num_threads(s["threads"])
    torch.manual_seed(0)
    peak = {"fp32": gemm_peak(s["threads"], s["device"])}
    if s["device"] == "cuda":
        peak["bf16"] = gemm_peak(s["threads"], "cuda", torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(s, Path(tmp) / "run")
        trainer._build()
        torch.set_num_threads(s["threads"])
        step = Step(trainer)
        first_start = time.perf_counter()
        step()
        first_ms = (time.perf_counter() - first_start) * 1e3
        for _ in range(s["warmup"] - 1):
            step()
        timed = [step() for _ in range(s["steps"])]
        work = data_work(trainer, s["batch"])
        flops = step_flops(step)
        ops = top_ops(step)
    phases = {p: statistics.median(t[p] for t in timed) for p in PHASES}
    step_ms = statistics.median(sum(t.values()) for t in timed)
    precision = "bf16" if trainer.amp_dtype == torch.bfloat16 else "fp32"
    achieved = {k: flops[k] / (phases[k] / 1e3) / 1e9 for k in ("forward", "backward")}
    return {"setting": s, "first_step_ms": first_ms, "step_ms": step_ms, "images_per_s": s["batch"] / step_ms * 1e3,
            "phases_ms": phases, "data_work_ms": work, "flops": flops, "gemm_peak_gflops": peak,
            "achieved_gflops": achieved, "peak_fraction": {k: v / peak[precision] for k, v in achieved.items()},
            "precision": precision, "top_ops": ops, "peak_rss_mb": runinfo.peak_rss_mb()}


def lightly_setting(s: dict) -> dict:
    """lightly 1.6.0's recipe for the method (bench/lightly_recipes.py) on the same device: steady images/s."""
    import lightly_recipes

    torch.set_num_threads(s["threads"])
    device = s["device"]
    _, loader, step, *_ = lightly_recipes.build(s["method"], s["size"], s["data"], s["batch"], s["workers"],
                                            cifar_stem=s["stem"] == "small", device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ticks = []
    for i, batch in enumerate(loader):
        views = [v.to(device, non_blocking=True) for v in batch[0]]
        step([views, *batch[1:]], i)
        sync()
        ticks.append(time.perf_counter())
        if i + 1 == s["warmup"] + s["steps"]:
            break
    seconds = (ticks[-1] - ticks[s["warmup"] - 1]) / s["steps"]
    return {"setting": s, "images_per_s": s["batch"] / seconds, "peak_rss_mb": runinfo.peak_rss_mb()}


def child(payload: dict) -> dict:
    if payload.get("toolkit") == "lightly":
        return lightly_setting(payload)
    return profile_setting(payload)


def settings(args) -> list[dict]:
    base = {"data": args.data, "batch": args.batch_size, "workers": args.workers, "device": args.device,
            "steps": args.steps, "warmup": args.warmup}
    return [{**base, "method": m, "size": size, "stem": stem, "threads": threads, "views": views}
            for m in args.methods for size in args.sizes for stem in args.stems for threads in args.threads
            for views in args.views]


def break_even(s: dict, script: str) -> dict:
    """First-step and steady-step times eager, compiled with a cold cache, compiled again (warm cache); the
    planned steps from which compiling repays its first steps, cold and warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        runs = {name: runinfo.run_child(script, {**s, "compile": c}, env=env)
                for name, c in (("eager", "false"), ("cold", "true"), ("warm", "true"))}
    out = {"setting": s, **{f"{k}_first_step_ms": r["first_step_ms"] for k, r in runs.items()},
           **{f"{k}_step_ms": r["step_ms"] for k, r in runs.items()}}
    for k in ("cold", "warm"):
        gain = runs["eager"]["step_ms"] - runs[k]["step_ms"]
        cost = runs[k]["first_step_ms"] - runs["eager"]["first_step_ms"]
        out[f"{k}_break_even_steps"] = round(cost / gain) if gain > 0 else None  # None: compiling never pays
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="training images (default: the bundled CIFAR-10 sample's train split)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: simclr byol vicreg dino on a CPU; simclr byol vicreg on a GPU (the 5-minute check)")
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="view sizes in pixels (default: 32 64 on a "
                                                                      "CPU, 32 on a GPU)")
    p.add_argument("--stems", nargs="+", choices=("small", "standard"), default=None,
                   help="ResNet stem: small = 3x3 stride 1 without max-pool, standard = 7x7 stride 2 + max-pool "
                        "(default: both on a CPU, small on a GPU)")
    p.add_argument("--threads", nargs="+", type=int, default=None,
                   help="intra-op threads of the training process (default: 1 2 on a CPU, 4 on a GPU)")
    p.add_argument("--views", nargs="+", choices=("loader", "batched"), default=None,
                   help="loader = per-image views in the workers; batched = uint8 images, views made in the "
                        "process (--gpu-augment) (default: loader on a CPU, batched on a GPU)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 2 on a CPU, 8 on a GPU)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (at least 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: bf16 autocast and channels-last (sslforge's GPU defaults)")
    p.add_argument("--lightly-pair", action="store_true",
                   help="also lightly 1.6.0's recipe of each method on the same device, alternating with sslforge")
    p.add_argument("--break-even", action="store_true", help="the compile break-even of each setting instead")
    p.add_argument("--out", default=None, help="result file (default: bench/results/profile/DEVICE-DATE.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1: the first step (start-up, compile) is never timed")
    cuda = args.device == "cuda"
    args.methods = args.methods or (["simclr", "byol", "vicreg"] if cuda else ["simclr", "byol", "vicreg", "dino"])
    args.sizes = args.sizes or ([32] if cuda else [32, 64])
    args.stems = args.stems or (["small"] if cuda else ["small", "standard"])
    args.threads = args.threads or ([4] if cuda else [1, 2])
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    args.views = args.views or (["batched"] if cuda else ["loader"])
    if args.data is None and not args.child:
        args.data = runinfo.sample_train()
    return args


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    if runinfo.answer_child(args, child):
        return None
    script = str(Path(__file__).resolve())
    result = runinfo.header({k: v for k, v in vars(args).items() if k != "child"})
    result["kind"] = "break-even" if args.break_even else "profile"
    result["rows"], result["lightly"] = [], []
    for s in settings(args):
        if args.break_even:
            row = break_even(s, script)
            print(f"{s['method']} {s['size']}px {s['stem']} {s['threads']}t: break-even "
                  f"{row['cold_break_even_steps']} steps cold, {row['warm_break_even_steps']} warm", file=sys.stderr)
            result["rows"].append(row)
            continue
        pair = [{**s, "toolkit": "sslforge"}] + ([{**s, "toolkit": "lightly"}] if args.lightly_pair else [])
        for payload in pair if len(result["rows"]) % 2 == 0 else pair[::-1]:  # alternate the order
            row = runinfo.run_child(script, payload)
            (result["lightly"] if payload["toolkit"] == "lightly" else result["rows"]).append(row)
            print(f"{payload['toolkit']:8s} {s['method']:7s} {s['size']}px {s['stem']:8s} {s['threads']}t "
                  f"{s['views']:7s} {row['images_per_s']:8.1f} images/s", file=sys.stderr, flush=True)
    out = args.out or Path(__file__).resolve().parent / "results" / "profile" / \
        f"{'break-even-' if args.break_even else ''}{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path = runinfo.write_result(result, out)
    print(path)
    return path


if __name__ == "__main__":
    main()
