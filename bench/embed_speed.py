"""Embedding throughput of the torch and onnxruntime backends, model call only and `sslforge embed` end to end.

    mkdir -p /tmp/cifar-export && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar-export
    python bench/embed_speed.py --cifar /tmp/cifar-export --model runs/NAME --out /tmp/embed-speed

Two ResNet-18s: `--model` (a trained model dir with the small-image stem at 32 px; a random-weight one
is made when omitted) and a random-weight torchvision ResNet-18 at 224 px (weights do not change speed).
Both are exported to ONNX (the parity line is printed). Then, alternating the backends within each
round so that machine noise hits them alike:
- model call only, on preprocessed random batches of 32 and 1: torch eager (no_grad, NCHW),
  torch inference_mode + channels_last (the torch backend), onnxruntime CPU (the onnx backend);
- end to end: `embed_images` (what `sslforge embed` runs) over the CIFAR-10 test JPEGs, `--e2e-32` (all 10,000)
  at 32 px and `--e2e-224` at 224 px, batch 32, for the torch and onnx backends, each followed at once by
  a model-call timing of the same runner (the end-to-end / model-call ratio compares like with like).
Prints Markdown tables (median of the rounds) and writes results.json to --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from export.embed import embed_images
from export.embedder import Embedder
from export.images import find_images
from export.onnx_export import export_onnx
from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.modeldir import load_model_dir, write_model_dir
from pretrain.ground.preprocess import Preprocessing


def random_model_dir(path: Path, size: int):
    torch.manual_seed(0)
    spec = resolve_spec("resnet18", small_stem=None, image_size=size)
    model, dim = build_backbone(spec, size)
    write_model_dir(path, model, spec=spec, embedding_dim=dim, preprocessing=Preprocessing.for_size(size),
                    method={"name": "random"}, training={})
    return load_model_dir(path)


def timed(fn, batch: np.ndarray, min_seconds: float) -> float:
    """images/s of `fn(batch)` over at least `min_seconds` and 2 calls, after one warm-up call."""
    fn(batch)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        fn(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def model_call_runners(model) -> dict:
    eager = model.load_backbone()

    def eager_call(x):
        with torch.no_grad():
            return eager(torch.as_tensor(x)).numpy()

    return {"torch eager": eager_call, "torch inference_mode + channels_last": Embedder.load(model, "torch").runner,
            "onnxruntime CPU": Embedder.load(model, "onnx").runner}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, required=True, help="folder with test/<class>/*.jpg")
    p.add_argument("--model", type=Path, help="trained 32 px model dir (copied into --out; default: random weights)")
    p.add_argument("--out", type=Path, default=Path("/tmp/embed-speed"), help="work folder (model dirs, embeddings)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the model-call timings")
    p.add_argument("--e2e-rounds", type=int, default=1, help="alternating rounds of the end-to-end runs")
    p.add_argument("--e2e-32", type=int, default=10000, help="test images embedded end to end at 32 px")
    p.add_argument("--e2e-224", type=int, default=1000, help="test images embedded end to end at 224 px")
    p.add_argument("--workers", type=int, default=1, help="decoding processes of the end-to-end runs")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per model-call measurement")
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    models = {}
    if args.model:
        dst = args.out / "trained-32"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        for name in ("model.json", "backbone.safetensors"):
            shutil.copy(args.model / name, dst / name)
        models[32] = load_model_dir(dst)
    else:
        models[32] = random_model_dir(args.out / "random-32", 32)
    models[224] = random_model_dir(args.out / "random-224", 224)
    test = find_images(args.cifar / "test")
    for size, model in models.items():
        result = export_onnx(model, parity_images=test.paths[:: len(test.paths) // 8][:8])
        print(f"{size} px: " + result.reports["embedding"].line("ONNX"))

    results = {"model_call": {}, "end_to_end": {}, "threads": torch.get_num_threads(), "workers": args.workers}
    rng = np.random.default_rng(0)
    for size, model in models.items():
        runners = model_call_runners(model)
        for batch in (32, 1):
            x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
            for _ in range(args.rounds):
                for name, fn in runners.items():
                    key = f"{size}|{batch}|{name}"
                    results["model_call"].setdefault(key, []).append(timed(fn, x, args.seconds))
                    print(f"model call {size} px batch {batch} {name}: {results['model_call'][key][-1]:.1f} images/s")

    lists = {}
    for size, count in ((32, args.e2e_32), (224, args.e2e_224)):
        lists[size] = args.out / f"test-{size}.txt"  # evenly spaced over the classes
        lists[size].write_text("".join(f"{q}\n" for q in test.paths[:: max(1, len(test.paths) // count)][:count]))
    for size, model in models.items():
        x = rng.normal(size=(32, 3, size, size)).astype(np.float32)
        for _ in range(args.e2e_rounds):
            for backend in ("torch", "onnx"):
                out = args.out / f"emb-{size}-{backend}"
                shutil.rmtree(out, ignore_errors=True)
                embedder = Embedder.load(model, backend)
                manifest = embed_images(embedder, lists[size], out, batch_size=32, workers=args.workers,
                                        progress=False)
                speed = manifest["throughput"]["images_per_s"]
                call = timed(embedder.runner, x, args.seconds)  # right after, so both see the same machine load
                results["end_to_end"].setdefault(f"{size}|{backend}", []).append([speed, call])
                print(f"sslforge embed {size} px {backend}: {manifest['count']} images, {speed:.1f} images/s; "
                      f"model call right after: {call:.1f} images/s")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    med = {k: statistics.median(v) for k, v in results["model_call"].items()}
    print("\n| size | backend | batch 32 images/s | vs eager | batch 1 images/s | batch 1 latency ms |")
    print("|---|---|---|---|---|---|")
    for size in models:
        for name in ("torch eager", "torch inference_mode + channels_last", "onnxruntime CPU"):
            b32, b1 = med[f"{size}|32|{name}"], med[f"{size}|1|{name}"]
            print(f"| {size} px | {name} | {b32:.1f} | {b32 / med[f'{size}|32|torch eager']:.2f}x | {b1:.1f} "
                  f"| {1000 / b1:.1f} |")
    print("\n| size | backend | `sslforge embed` images/s | model call right after (batch 32) images/s "
          "| end to end / model call |")
    print("|---|---|---|---|---|")
    for size in models:
        for backend in ("torch", "onnx"):
            pairs = results["end_to_end"][f"{size}|{backend}"]
            e2e, call = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
            ratios = ", ".join(f"{p[0] / p[1]:.2f}" for p in pairs)
            print(f"| {size} px | {backend} | {e2e:.1f} | {call:.1f} | {ratios} |")

if __name__ == "__main__":
    main()
