"""The probes of bench/gpu_check.py: each runs one CUDA path of the toolkit and returns a dict of figures.

Every probe runs the toolkit's own code (the trainer, the Embedder, the ONNX exporter, exact search); on
`--device cpu` the same code runs on the CPU, which is what the test of the check does.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


class Unavailable(Exception):
    """The probe's package or hardware is not on this machine: the report lists it as skipped, with why."""


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    if _cuda(device):
        torch.cuda.synchronize()


def steps_config(method: str, data: str, out: Path, *, size: int, batch: int, steps: int, device: str,
                 gpu_augment: bool, compile: bool, workers: int, small_stem: bool | None = None, **extra):
    """A PretrainConfig that runs exactly `steps` optimizer steps (one epoch over steps x batch images)."""
    from pretrain.train.config import PretrainConfig

    return PretrainConfig(method=method, data=data, out=str(out), backbone="resnet18", image_size=size,
                          small_stem=size <= 64 if small_stem is None else small_stem, epochs=1, batch_size=batch,
                          max_images=batch * steps,
                          gpu_augment=gpu_augment, compile=compile, device=device, workers=workers,
                          precision="auto", **extra)


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_probe(method: str, data: str, out: Path, *, size: int, batch: int, steps: int, device: str,
                gpu_augment: bool = False, compile: bool = False, workers: int = 8, warmup: int = 5,
                small_stem: bool | None = None) -> dict:
    """A short run of the real trainer: images/s after warm-up, peak GPU memory, the loss finite and falling."""
    from pretrain.train.trainer import pretrain

    torch.cuda.reset_peak_memory_stats() if _cuda(device) else None
    start = time.perf_counter()
    run = pretrain(steps_config(method, data, out, size=size, batch=batch, steps=steps, device=device,
                                gpu_augment=gpu_augment, compile=compile, workers=workers, small_stem=small_stem),
                     progress=False)
    wall = time.perf_counter() - start
    rows = read_metrics(run)
    losses = [float(r["loss"]) for r in rows]
    timed = [float(r["images_per_s"]) for r in rows[min(warmup, len(rows) - 1):]]
    head, tail = losses[:max(1, len(losses) // 4)], losses[-max(1, len(losses) // 4):]
    training = json.loads((run / "model.json").read_text())["training"]
    return {"method": method, "size": size, "batch": batch, "gpu_augment": gpu_augment, "compile": compile,
            "steps": len(rows), "images_per_s": round(statistics.median(timed), 1), "wall_s": round(wall, 1),
            "precision": training["precision"], "peak_gpu_memory_mb": training["peak_gpu_memory_mb"],
            "loss_first": round(statistics.mean(head), 4), "loss_last": round(statistics.mean(tail), 4),
            "finite": all(np.isfinite(losses)), "falling": statistics.mean(tail) < statistics.mean(head),
            "run": str(run)}


def lightly_probe(method: str, data: str, *, size: int, batch: int, steps: int, device: str, workers: int = 8,
                  warmup: int = 5, small_stem: bool | None = None) -> dict:
    """lightly 1.6.0's recipe for `method` (bench/lightly_recipes.py), bf16 autocast on CUDA: images/s."""
    try:
        import lightly  # noqa: F401
    except ImportError:
        raise Unavailable("lightly is not installed here (pip install -c constraints.txt -e '.[bench]'; on the "
                          "GPU machine it travels as bench/wheels)") from None
    sys.path.insert(0, str(ROOT / "bench"))
    import lightly_recipes

    _, loader, step, *_ = lightly_recipes.build(method, size, data, batch, workers=workers,
                                                cifar_stem=size <= 64 if small_stem is None else small_stem,
                                                total_steps=steps, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if _cuda(device) else torch.autocast("cpu",
                                                                                                  enabled=False)
    ticks, losses = [], []
    while len(ticks) < steps:
        for batch_ in loader:
            views = [v.to(device, non_blocking=True) for v in batch_[0]]
            with autocast:
                losses.append(step([views, *batch_[1:]], len(ticks)))
            _sync(device)
            ticks.append(time.perf_counter())
            if len(ticks) == steps:
                break
    w = min(warmup, steps - 2)
    rate = (len(ticks) - 1 - w) * batch / (ticks[-1] - ticks[w])
    return {"method": method, "size": size, "batch": batch, "images_per_s": round(rate, 1), "steps": len(ticks),
            "finite": all(np.isfinite(losses)), "loss_first": round(float(losses[0]), 4),
            "loss_last": round(float(losses[-1]), 4)}


@contextmanager
def gpu_utilisation(device: str, every_s: float = 0.1):
    """Sample the GPU's utilisation (percent) while the block runs, through NVML or nvidia-smi; yields the list."""
    samples: list[float] = []
    if not _cuda(device):
        yield samples
        return
    stop = threading.Event()

    def nvml_reader():
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def smi_reader():
        def read():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        return read

    try:
        read = nvml_reader()
    except Exception:
        read = smi_reader()

    def loop():
        while not stop.is_set():
            try:
                samples.append(read())
            except Exception:
                return
            stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=5)


def sync_probe(method: str, data: str, out: Path, *, size: int, batch: int, steps: int, device: str,
               workers: int = 8, small_stem: bool | None = None) -> dict:
    """Host synchronisations per training step (torch's CUDA sync debug mode counts them) and GPU utilisation."""
    if not _cuda(device):
        raise Unavailable("CUDA only: torch's sync debug mode and NVML")
    with gpu_utilisation(device) as util, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run = train_probe(method, data, out, size=size, batch=batch, steps=steps, device=device,
                              gpu_augment=True, workers=workers, small_stem=small_stem)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where: dict[str, int] = {}
    for w in syncs:
        key = f"{Path(w.filename).name}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    busy = util[len(util) // 5:] or util  # past the start-up
    return {"method": method, "size": size, "steps": run["steps"], "images_per_s": run["images_per_s"],
            "syncs_per_step": round(len(syncs) / max(1, run["steps"]), 2),
            "sync_sites": dict(sorted(where.items(), key=lambda kv: -kv[1])[:8]),
            "gpu_util_mean": round(statistics.mean(busy), 1) if busy else None,
            "gpu_util_samples": len(util)}


def _images(folder: str, count: int) -> list[Path]:
    """The first `count` image files of `folder`, as `sslforge embed` finds them."""
    from export.images import find_images

    return find_images(folder).paths[:count]


def embed_probe(run: Path, images: str, out: Path, *, device: str, batch: int = 256) -> dict:
    """`sslforge embed` with the torch backend on `device`, and its embeddings against the CPU's."""
    from export.embed import embed_images
    from export.embedder import Embedder
    from export.parity import compare
    from retrieval.embeddings import read_embeddings

    embedder = Embedder.load(run, "torch", device=device)
    manifest = embed_images(embedder, images, out, batch_size=batch, workers=min(8, os.cpu_count() or 1),
                            progress=False)
    vectors = read_embeddings(out).vectors
    cpu = Embedder.load(run, "torch", device="cpu")
    files = _images(images, 64)
    parity = compare(cpu.embed(files), embedder.embed(files))
    return {"images": manifest["count"], "images_per_s": round(manifest["throughput"]["images_per_s"], 1),
            "dim": int(vectors.shape[1]), "cpu_parity_min_cosine": round(parity.min_cosine, 6),
            "cpu_parity_max_abs": float(f"{parity.max_abs:.2e}")}


def onnx_probe(run: Path, images: str, *, device: str) -> dict:
    """Export the run to ONNX here (the exporter's own parity check included), then ONNX against torch on `device`."""
    from export.embedder import Embedder
    from export.onnx_export import export_onnx
    from export.parity import compare
    from pretrain.ground.modeldir import load_model_dir

    files = _images(images, 64)
    start = time.perf_counter()
    export_onnx(load_model_dir(run), parity_images=files[:8])
    export_s = time.perf_counter() - start
    onnx = Embedder.load(run, "onnx")
    torch_run = Embedder.load(run, "torch", device=device)
    parity = compare(torch_run.embed(files), onnx.embed(files))
    return {"export_s": round(export_s, 1), "providers": onnx.runner.providers, "rows": parity.rows,
            "min_cosine": round(parity.min_cosine, 6), "max_abs": float(f"{parity.max_abs:.2e}"),
            "ok": parity.ok}


def search_probe(n: int, dim: int, queries: int, k: int, *, device: str) -> dict:
    """Exact inner-product search over n random unit vectors: each backend here, timed, against torch on the CPU."""
    from retrieval.exact import exact_search, faiss_gpus, faiss_or_none

    rng = np.random.default_rng(0)
    db = rng.standard_normal((n, dim), dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.choice(n, queries, replace=False)] + 0.1 * rng.standard_normal((queries, dim), dtype=np.float32)
    backends = ["torch-cpu"] + (["torch-cuda"] if _cuda(device) else [])
    backends += (["faiss-cpu"] if faiss_or_none() is not None else []) + (["faiss-gpu"] if faiss_gpus() else [])
    results, reference = {}, None
    for backend in backends:
        exact_search(db[:1000], q[:8], k, backend=backend)  # warm-up: CUDA context, kernels, Faiss resources
        start = time.perf_counter()
        _, ids = exact_search(db, q, k, backend=backend)
        seconds = time.perf_counter() - start
        reference = ids if reference is None else reference
        agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, reference)]))
        results[backend] = {"seconds": round(seconds, 3), "queries_per_s": round(queries / seconds, 1),
                            "agreement_with_torch_cpu": round(agree, 4)}
    return {"n": n, "dim": dim, "queries": queries, "k": k, "backends": results}


def ddp_probe(data: str, out: Path, *, size: int, batch: int, steps: int, device: str,
              small_stem: bool | None = None) -> dict:
    """One torchrun process with --sync-bn (NCCL on CUDA, gloo on the CPU): the distributed path runs end to end."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "pretrain",
           "pretrain", "--method", "simclr", "--data", data, "--out", str(out), "--image-size", str(size),
           "--small-stem" if (size <= 64 if small_stem is None else small_stem) else "--no-small-stem",
           "--epochs", "1", "--batch-size", str(batch), "--max-images", str(batch * steps),
           "--device", "cuda" if _cuda(device) else "cpu", "--sync-bn", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    training = json.loads((out / "model.json").read_text())["training"]
    return {"backend": "nccl" if _cuda(device) else "gloo", "processes": training["processes"],
            "sync_bn": training["sync_bn"], "steps": training["steps"], "wall_s": round(time.perf_counter() - start, 1)}


def tensorrt_probe(run: Path, images: str, *, device: str) -> dict:
    """Build a TensorRT engine of the run (fp16) and check it against torch on CUDA."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise Unavailable("tensorrt is not installed here (pip install 'sslforge[tensorrt]')") from None
    if not _cuda(device):
        raise Unavailable("TensorRT needs CUDA")
    from export.parity import check_parity, parity_batches
    from export.runtimes import TorchRunner
    from export.tensorrt import TensorRTRunner, build_engine
    from pretrain.ground.modeldir import load_model_dir

    model = load_model_dir(run)
    start = time.perf_counter()
    path, info = build_engine(model, fp16=True, max_batch=64)
    build_s = time.perf_counter() - start
    files = _images(images, 16)
    report = check_parity(TorchRunner(model.load_backbone("cuda"), "cuda", channels_last=False),
                          TensorRTRunner(model, path), parity_batches(model.preprocessing, files),
                          precision=info.precision, name="TensorRT")
    return {"tensorrt": info.tensorrt_version, "build_s": round(build_s, 1), "min_cosine": round(report.min_cosine, 6),
            "ok": report.ok}


def faiss_gpu_probe(n: int, dim: int, *, device: str) -> dict:
    """An IVF-Flat index built and searched on the GPU by the toolkit's index builder, against its CPU build."""
    from retrieval.exact import faiss_gpus, faiss_or_none

    if faiss_or_none() is None:
        raise Unavailable("faiss is not installed here (faiss-gpu-cu12 is ~100 MB with its CUDA libraries, over "
                          "what a check carries)")
    if not faiss_gpus():
        raise Unavailable("Faiss sees no GPU (faiss-cpu wheel)")
    from retrieval.index import Index

    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    paths = [f"v{i}" for i in range(n)]
    queries = x[:256] + 0.05 * rng.standard_normal((256, dim), dtype=np.float32)
    out = {}
    for where in ("gpu", "cpu"):
        start = time.perf_counter()
        index = Index.build(x, paths, kind="ivf", device=where, progress=False)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = index.search_ids(queries, 10)
        out[where] = {"build_s": round(build_s, 2), "built_on": index.info.get("built_on", where),
                      "search_s": round(time.perf_counter() - start, 3), "top1_is_self": float(np.mean(
                          ids[:, 0] == np.arange(256)))}
    return out
