"""The prepared GPU check: every CUDA path of the toolkit in one command, a JSON and a Markdown report.

On a lent GPU machine (its own torch; the project on PYTHONPATH; lightly carried as wheels):

    python bench/gpu_check.py --fetch-wheels                 # here, once: lightly and its missing deps
    # on the GPU machine (the device tool's run, carry bench/wheels):
    pip install -q --no-index --no-deps --target /tmp/site bench/wheels/*.whl
    PYTHONPATH=.:/tmp/site python3 bench/gpu_check.py --out $OUT

What it runs, most important first, each probe timed and fenced (a failure is a row, not the end):
the environment (`sslforge doctor`'s lines); one SimCLR model dir (bf16); `sslforge embed` with the torch
backend on CUDA and its parity with the CPU; ONNX export on the GPU machine and its parity with the CUDA torch
run; exact search over 1M vectors with every backend present (torch CUDA vs CPU); the trainer's host
synchronisations per step and the GPU utilisation; sslforge (--gpu-augment, bf16) against lightly 1.6.0's
recipes (bf16 autocast) at 32 and 224 px; every method at 32 and 224 px with and without --gpu-augment;
--compile; one torchrun process with NCCL and --sync-bn; TensorRT and the Faiss GPU index where installed.
Probes past --budget-s are skipped and listed, so the report always comes back inside the lease.

`--device cpu --tiny` runs the same code on the CPU in about a minute: that run is a test (tests/bench).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import gpu_probes as probes  # noqa: E402
from gpu_report import render_markdown  # noqa: E402

LIGHTLY_METHODS = ("simclr", "byol", "vicreg", "barlowtwins")
WHEELS = ROOT / "bench" / "wheels"
# lightly 1.6.0 alone: the parts bench/lightly_recipes.py imports need none of its hydra/omegaconf requirements
# (checked by importing them with those blocked), and the lent machine has torch, torchvision, pytorch_lightning
WHEEL_PINS = ("lightly==1.6.0",)


def sizes(tiny: bool) -> dict:
    """Steps, batches and sizes: the full check fits about 8 minutes of an H200; tiny is seconds on a CPU."""
    if tiny:
        return {"small": 32, "large": 40, "small_stem": False, "batch_small": 8, "batch_large": 8, "steps": 3,
                "warmup": 1, "search_n": 20_000, "search_dim": 64, "queries": 64, "embed_images": 32, "workers": 1,
                "faiss_n": 20_000, "method_sizes": ("small",), "lightly_sizes": ("small",), "compile": False,
                "lightly_methods": ("simclr",), "methods": ("simclr", "byol", "vicregl")}
    return {"small": 32, "large": 224, "small_stem": None, "batch_small": 256, "batch_large": 128, "steps": 30,
            "warmup": 8, "search_n": 1_000_000, "search_dim": 256, "queries": 2000, "embed_images": 1000,
            "workers": 8, "faiss_n": 200_000, "method_sizes": ("small", "large"),
            "lightly_sizes": ("large", "small"), "compile": True, "lightly_methods": LIGHTLY_METHODS, "methods": None}


def fetch_wheels() -> None:
    """Download lightly and its missing dependencies as wheels for the GPU machine (Python 3.12, x86-64)."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", str(WHEELS), *WHEEL_PINS]
    subprocess.run(cmd, check=True)
    total = sum(f.stat().st_size for f in WHEELS.glob("*.whl"))
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {WHEELS} (carry bench/wheels)")


def environment() -> dict:
    from pretrain.ground.doctor import torch_lines

    parts = {"python": platform.python_version(), **dict(torch_lines())}
    for stage in ("export", "retrieval", "serve"):
        try:
            module = __import__(f"{stage}.doctor", fromlist=["lines"])
            parts.update({f"{stage}: {k}": v for k, v in module.lines()})
        except Exception as e:
            parts[f"{stage}"] = f"{type(e).__name__}: {e}"
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        parts["nvidia-smi"] = smi.stdout.strip()
    return parts


class Check:
    """Runs probes in order inside a time budget; each result (ok, failed, skipped) is kept for the report."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.results: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, section: str, name: str, fn, *args, **kwargs):
        row = {"section": section, "name": name}
        if self.elapsed() > self.budget_s:
            row.update(status="skipped", reason=f"past the {self.budget_s:.0f} s budget")
        else:
            tick = time.perf_counter()
            try:
                row.update(status="ok", result=fn(*args, **kwargs))
            except probes.Unavailable as e:
                row.update(status="skipped", reason=str(e))
            except Exception as e:
                row.update(status="failed", error=f"{type(e).__name__}: {e}"[:800],
                           traceback=traceback.format_exc()[-3000:])
            row["seconds"] = round(time.perf_counter() - tick, 1)
        self.results.append(row)
        mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[row["status"]]
        print(f"[{self.elapsed():6.0f}s] {section}/{name}: {mark} {row.get('error') or row.get('reason') or ''}",
              flush=True)
        return row.get("result")


def sample_folders(out: Path, count: int) -> tuple[str, str]:
    """The bundled CIFAR-10 sample's train folder, and a test folder of `count` of its test images."""
    from pretrain.data.images import sample_dir

    root = sample_dir()
    images = out / "work" / "embed-images"
    if not images.exists():
        files = sorted(p for p in (root / "test").rglob("*") if p.is_file())[:count]
        for f in files:
            (images / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, images / f.parent.name / f.name)
    return str(root / "train"), str(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/gpu-check", help="folder for report.json, report.md and the work files")
    p.add_argument("--device", default="cuda", help="cuda (the lent GPU) or cpu (with --tiny: the test)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and steps: the same code in seconds on a CPU")
    p.add_argument("--budget-s", type=float, default=480, help="skip probes that would start after this many "
                                                               "seconds (default: 480, inside a 10-minute call)")
    p.add_argument("--methods", nargs="+", default=None, help="methods of the per-method table (default: all "
                                                              "but distill, which needs a teacher)")
    p.add_argument("--fetch-wheels", action="store_true", help="download lightly's wheels into bench/wheels "
                                                               "for the GPU machine, then exit")
    args = p.parse_args(argv)
    if args.fetch_wheels:
        fetch_wheels()
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: run it on the GPU machine, or use --device cpu --tiny", file=sys.stderr)
        return 2
    from pretrain.methods import method_names

    out, s, dev = Path(args.out), sizes(args.tiny), args.device
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    methods = args.methods or s["methods"] or [m for m in method_names() if m != "distill"]
    check = Check(out, args.budget_s)
    env = check.run("environment", "doctor", environment)
    train, images = sample_folders(out, s["embed_images"])
    common = {"device": dev, "workers": s["workers"], "small_stem": s["small_stem"]}
    shapes = {"small": {"size": s["small"], "batch": s["batch_small"], "steps": s["steps"]},
              "large": {"size": s["large"], "batch": s["batch_large"], "steps": s["steps"]}}
    small, large = shapes["small"], shapes["large"]
    base = check.run("training", "model dir: simclr, 32 px, cpu augment", probes.train_probe, "simclr", train,
                     work / "simclr", warmup=s["warmup"], **small, **common)
    if base:
        run = Path(base["run"])
        check.run("embed", "torch backend", probes.embed_probe, run, images, work / "emb", device=dev)
        check.run("export", "onnx", probes.onnx_probe, run, images, device=dev)
        check.run("export", "tensorrt", probes.tensorrt_probe, run, images, device=dev)
    check.run("retrieval", "exact search", probes.search_probe, s["search_n"], s["search_dim"], s["queries"], 10,
              device=dev)
    check.run("retrieval", "faiss gpu index", probes.faiss_gpu_probe, s["faiss_n"], 64, device=dev)
    check.run("syncs", "simclr, large, gpu-augment", probes.sync_probe, "simclr", train, work / "sync",
              **large, **common)
    for size in (shapes[k] for k in s["lightly_sizes"]):
        for m in s["lightly_methods"]:
            label = f"{m}, {size['size']} px"
            check.run("versus lightly", f"sslforge {label}", probes.train_probe, m, train,
                      work / f"vs-{m}-{size['size']}",
                      warmup=s["warmup"], gpu_augment=True, **size, **common)
            check.run("versus lightly", f"lightly {label}", probes.lightly_probe, m, train, warmup=s["warmup"],
                      **size, **common)
    for size in (shapes[k] for k in s["method_sizes"]):
        for m in methods:
            for aug in (True,) if args.tiny else (True, False):
                name = f"{m}, {size['size']} px, {'gpu' if aug else 'cpu'} augment"
                check.run("methods", name, probes.train_probe, m, train, work / f"m-{m}-{size['size']}-{aug}",
                          warmup=s["warmup"], gpu_augment=aug, **size, **common)
    for m in ("simclr", "byol") if s["compile"] else ():
        check.run("compile", f"{m}, {large['size']} px, gpu augment, compiled", probes.train_probe, m, train,
                  work / f"c-{m}", warmup=s["warmup"], gpu_augment=True, compile=True, **large, **common)
    check.run("distributed", "torchrun, 1 process, --sync-bn", probes.ddp_probe, train, work / "ddp",
              size=s["small"], batch=s["batch_small"], steps=s["steps"], device=dev, small_stem=s["small_stem"])
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": dev, "tiny": args.tiny,
              "sizes": s, "environment": env, "elapsed_s": round(check.elapsed(), 1), "results": check.results}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    markdown = render_markdown(report)
    (out / "report.md").write_text(markdown)
    shutil.rmtree(work, ignore_errors=True)  # model dirs and embeddings: only the reports come back
    print(markdown[-6000:])
    failed = [r for r in check.results if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
